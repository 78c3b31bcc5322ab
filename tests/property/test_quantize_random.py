"""The quantize pass's contract on random graphs (tests/strategies.py).

Approximate, so not the exact-pass contract: on any random float graph the pass either returns a
graph that verifies, has no float op inside and runs to finite outputs of the original shapes and
dtypes, or raises UnsupportedError naming the op, its module path and the stage. On graphs of
layers, arithmetic and data movement, the outputs also stay close to the float graph's.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings

import npuc
from npuc.errors import UnsupportedError
from npuc.pipeline import PassContext
from tests.conftest import rel_error
from tests.strategies import graph_and_inputs

WIDE = ["softmax", "log_softmax", "layer_norm", "group_norm", "output"]
BOUNDARY = {"input", "const", "quantize", "dequantize"}
# families whose error stays within a few output steps through a whole random graph
LINEAR = ["conv", "linear", "matmul", "batch_norm", "pool", "adaptive_pool", "reshape",
          "permute", "flip", "slice", "concat", "pad", "expand", "pixel_shuffle", "resize"]


def quantize(graph: npuc.ir.Graph, inputs: tuple) -> npuc.ir.Graph:
    folded = npuc.passes.apply(graph, "fold_batchnorm")
    return npuc.passes.apply(folded, "quantize", ctx=PassContext(calibration=[inputs]),
                             int16=WIDE)


@settings(max_examples=40)  # each example calibrates and lowers a whole graph
@given(graph_and_inputs())
def test_quantize_lowers_or_names_the_op(case: tuple) -> None:
    graph, inputs = case
    try:
        lowered = quantize(graph, inputs)
    except UnsupportedError as e:
        assert e.op and e.stage == "quantize" and e.hint
        return
    lowered.verify()
    assert not [n.op for n in lowered.nodes if n.dtype.is_float and n.op not in BOUNDARY]
    outputs = npuc.interpret(lowered, *inputs)
    for got, want in zip(outputs, graph.outputs, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype.numpy
        assert np.all(np.isfinite(got)) if got.dtype.kind == "f" else True


@settings(max_examples=40)
@given(graph_and_inputs(families=LINEAR))
def test_linear_graphs_stay_close(case: tuple) -> None:
    graph, inputs = case
    lowered = quantize(graph, inputs)
    for got, want in zip(npuc.interpret(lowered, *inputs), npuc.interpret(graph, *inputs),
                         strict=True):
        if np.abs(want).max() > 1e-3:  # a near-zero output has no meaningful relative error
            assert rel_error(got, want) < 0.1
