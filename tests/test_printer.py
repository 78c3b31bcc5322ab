"""The text dump: its exact form, round trips with quantization parameters, and parse errors."""

from __future__ import annotations

import numpy as np
import pytest

import npuc
from npuc.ir import DType, Graph, QuantParams, TensorType, const, graph_input
from npuc.ops import make
from npuc.parser import ParseError
from npuc.printer import print_graph

TEXT = """\
graph @tiny(%x: tensor<1x2x4x4xf32>) -> (tensor<1x2x4x4xf32>, tensor<1x2xf32>) {
  %0 = const {data = [0.5, -1.0, 2.0, 0.25], digest = "DIGEST", encoding = "dense"} : tensor<2x2x1x1xf32>  loc("conv.weight")
  %1 = conv(%x, %0) {dilation = [1, 1], groups = 1, padding = [0, 0, 0, 0], stride = [1, 1]} : tensor<1x2x4x4xf32>  loc("conv")
  %2 = relu(%1) : tensor<1x2x4x4xf32>  loc("act")
  %3 = mean(%x) {axes = [2, 3], keepdim = false} : tensor<1x2xf32>
  return %2, %3
}
"""


def _tiny_text() -> str:
    weight = np.array([0.5, -1.0, 2.0, 0.25], np.float32).reshape(2, 2, 1, 1)
    return TEXT.replace("DIGEST", npuc.ir.digest(weight))


def test_parse_then_print_is_identity_and_runs() -> None:
    text = _tiny_text()
    graph = npuc.ir.parse(text).verify()
    assert str(graph) == text
    x = np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)
    relu, mean = npuc.interpret(graph, x)
    w = graph.nodes[1].data[:, :, 0, 0]
    np.testing.assert_allclose(relu, np.maximum(np.einsum("oc,nchw->nohw", w, x), 0), rtol=1e-6)
    np.testing.assert_allclose(mean, x.mean(axis=(2, 3)), rtol=1e-6)


def test_quant_params_round_trip() -> None:
    x = graph_input("x", TensorType((2, 4), DType.I8, QuantParams((0.05,), (-3,))))
    w = const(np.arange(12, dtype=np.int8).reshape(3, 4), DType.I8,
              quant=QuantParams((0.1, 0.2, 0.30000000000000004), (0, 0, 0), axis=0))
    y = make("reshape", [x], {"shape": [4, 2]})
    graph = Graph((x,), (y, make("permute", [w], {"perm": [1, 0]})), "q")
    text = print_graph(graph, constants=True)
    assert "q<0.05:-3>" in text and "q<axis=0, [0.1, 0.2, 0.3], [0, 0, 0]>" in text
    again = npuc.ir.parse(text)
    assert print_graph(again, constants=True) == text
    assert again.inputs[0].type.quant == QuantParams((0.05,), (-3,))


def test_summarised_constants_take_weights_by_digest() -> None:
    w = np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)
    x = graph_input("x", TensorType((2, 8), DType.F32))
    graph = Graph((x,), (make("linear", [x, const(w)]),))
    text = str(graph)
    assert "data" not in text  # 128 elements: summarised
    bare = npuc.ir.parse(text)
    with pytest.raises(ValueError, match="has no data"):
        npuc.interpret(bare, np.ones((2, 8), np.float32))
    full = npuc.ir.parse(text, weights={npuc.ir.digest(w): w})
    np.testing.assert_allclose(npuc.interpret(full, np.ones((2, 8), np.float32))[0],
                               np.ones((2, 8)) @ w.T, rtol=1e-6)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("tensor<1x2x4x4xf32>  loc(\"act\")", "tensor<1x2x4x5xf32>  loc(\"act\")"),
     "line 4: declared type"),
    (lambda t: t.replace("relu(%1)", "relu(%9)"), "line 4: use of undefined value %9"),
    (lambda t: t.replace("relu(%1)", "frobnicate(%1)"), "line 4: .*unknown op 'frobnicate'"),
    (lambda t: t.replace("keepdim = false", "keepdim = maybe"), "line 5: .*maybe"),
    (lambda t: t.replace("  return %2, %3\n", ""), "no 'return'"),
    (lambda t: t.replace("groups = 1", "groups = 2"), "line 3: .*groups"),
    (lambda t: t.replace("0.25", "0.5"), "line 2: inlined constant does not match its digest"),
])
def test_parse_errors_name_the_line(edit, message) -> None:
    with pytest.raises(ParseError, match=message):
        npuc.ir.parse(edit(_tiny_text()))


def test_locs_can_be_left_out() -> None:
    graph = npuc.ir.parse(_tiny_text())
    text = print_graph(graph, locs=False)
    assert "loc(" not in text
    assert print_graph(npuc.ir.parse(text), locs=False) == text
