"""fold_batchnorm: exact on random graphs and real models; folds exactly where its contract says."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuc
from npuc.ir import Graph, Node
from tests.models import ZOO
from tests.passes.contract import check_exact
from tests.passes.motifs import chains
from tests.strategies import graph_and_inputs

FAMILIES = ["conv", "conv_transpose", "linear", "batch_norm", "unary", "binary", "pool"]
# layer -> BN, BN -> layer and BN -> activation -> layer chains, in NCHW, NCL and NC layouts
MOTIFS = [["batch_norm", "skip"], ["conv", "conv_transpose", "linear"],
          ["batch_norm", "batch_norm", "skip"], ["unary", "skip", "skip"]]


def foldable_after(graph: Graph, bn: Node) -> bool:
    """A BN the pass must have folded: its producer is a constant-weight layer read only by it,
    with channels on axis 1."""
    layer = bn.inputs[0]
    return (layer.op in ("conv", "conv_transpose") or (layer.op == "linear"
                                                        and len(layer.shape) == 2)) \
        and graph.users[layer] == [bn] and layer not in graph.outputs


@given(st.one_of(graph_and_inputs(families=FAMILIES),
                 *(chains(MOTIFS, layout=layout) for layout in ("nchw", "ncl", "nc"))))
def test_exact_and_complete_on_random_graphs(case: tuple) -> None:
    graph, inputs = case
    result = check_exact("fold_batchnorm", graph, inputs)
    for bn in (n for n in result.nodes if n.op == "batch_norm"):
        assert not foldable_after(result, bn), "a foldable batch_norm was left"


def _graph(text: str) -> Graph:
    return npuc.ir.parse(text).verify()


def _bn_params(c: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(c)
    return {"g": rng.uniform(0.5, 2, c), "b": rng.normal(size=c), "m": rng.normal(size=c),
            "v": rng.uniform(0.5, 2, c)}


def _conv_bn_graph(padding: int, bn_first: bool, shared: bool) -> tuple[Graph, tuple]:
    """x -> [bn] -> conv -> [bn]; `shared` gives the conv's output a second reader."""
    from npuc.ir import DType, TensorType, const, graph_input
    from npuc.ops import make

    rng = np.random.default_rng(0)
    x = graph_input("x", TensorType((1, 4, 6, 6), DType.F32))
    bn_args = [const(a.astype(np.float32)) for a in _bn_params(4).values()]
    y = make("batch_norm", [x, *bn_args]) if bn_first else x
    w = const(rng.normal(size=(4, 4, 3, 3)).astype(np.float32))
    conv = make("conv", [y, w], dict(stride=(1, 1), padding=(padding,) * 4, dilation=(1, 1),
                                     groups=1))
    out = conv if bn_first else make("batch_norm", [conv, *bn_args])
    outputs = (out, make("relu", [conv])) if shared else (out,)
    return Graph((x,), outputs), (rng.normal(size=(1, 4, 6, 6)).astype(np.float32),)


@pytest.mark.parametrize("padding, bn_first, shared, folds", [
    (1, False, False, True),   # conv -> BN: always
    (1, False, True, False),   # conv output also read elsewhere: the BN must stay
    (0, True, False, True),    # BN -> conv without padding: exact, folds into the input side
    (1, True, False, False),   # BN -> padded conv: padding would not be shifted, stays
])
def test_guards(padding: int, bn_first: bool, shared: bool, folds: bool) -> None:
    graph, inputs = _conv_bn_graph(padding, bn_first, shared)
    result = check_exact("fold_batchnorm", graph, inputs)
    assert any(n.op == "batch_norm" for n in result.nodes) != folds


@pytest.mark.parametrize("name", ["cnn_bn", "resnet_basic", "resnet_bottleneck",
                                  "mobilenetv2_block", "kws_cnn", "conformer_conv",
                                  pytest.param("resnet18", marks=pytest.mark.slow)])
def test_real_models_lose_every_batch_norm(name: str) -> None:
    model, inputs = ZOO[name]()
    graph = npuc.capture(model, inputs)
    arrays = tuple(x.numpy() for x in inputs)
    result = check_exact("fold_batchnorm", graph, arrays)
    assert not any(n.op == "batch_norm" for n in result.nodes)
    convs = sum(n.op in ("conv", "linear") for n in graph.nodes)
    assert sum(n.op in ("conv", "linear") for n in result.nodes) == convs
