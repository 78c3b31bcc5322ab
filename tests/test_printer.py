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


def _one_op(arg_type: str, body: str = "%1 = relu(%x) : {t}", result: str | None = None) -> str:
    result = result or arg_type
    return (f"graph @g(%x: {arg_type}) -> ({result}) {{\n  {body.replace('{t}', result)}\n"
            "  return %1\n}\n")


@pytest.mark.parametrize("text, message", [
    # each of these used to escape as IndexError, RecursionError or OverflowError
    (_tiny_text().replace("stride = [1, 1]}", "stride = [1, 1}"), "line 3: text ends"),
    (_tiny_text().replace("keepdim = false", "keepdim ="), "line 5: text ends where a value"),
    (_tiny_text().replace("groups = 1,", "groups =,"), "line 3: bad value ','"),
    (_one_op("tensor<2xi8, q<axis=0>>"), "line 1: bad quantization parameters"),
    (_tiny_text().replace("stride = [1, 1]", "stride = " + "[" * 1000 + "]" * 1000),
     "line 3: values nested deeper than"),
    (_one_op("tensor<2xi8>", '%1 = const {data = [1000, 2], digest = "x", encoding = "dense"}'
             " : {t}"), "line 2: 1000 is out of the range -128..127 of i8"),
    (_one_op("tensor<2xi64>", '%1 = const {data = [100000000000000000000000, 2], digest = "x",'
             ' encoding = "dense"} : {t}'), "out of the range"),
    (_one_op("tensor<2xf16>", '%1 = const {data = [1e6, 2.0], digest = "x", encoding = "dense"}'
             " : {t}"), "1000000.0 is out of the range of f16"),
    # and these used to be accepted
    (_tiny_text().replace("%3 = mean", "%2 = mean").replace("return %2, %3", "return %2, %1"),
     r"line 5: %2 is defined twice \(first on line 4\)"),
    (_one_op("tensor<2x3xf32>", "%1 = relu(%x) : tensor<2x3xf32>", result="tensor<3x2xf32>"),
     "line 1: the header declares results"),
    (_one_op("tensor<2x3xf32>", "%1 = relu(%x) : tensor<2x3xf32, q<0.5:0>>"),
     "f32 value has quantization parameters"),
    (_one_op("tensor<2xi8, q<0.5:40000>>"), "zero point .40000,. outside the range -128..127"),
    (_one_op("tensor<-2xf32>"), "line 1: bad type 'tensor<-2xf32>'"),
    (_one_op("tensor<2x3xi8, q<axis=0, [0.5], [0]>>"), "1 per-channel scales on axis 0"),
    (_one_op("tensor<2xf32>").replace("(%x: tensor<2xf32>)", "(%x: tensor<2xf32>, junk)"),
     "line 1: bad argument 'junk'"),
    (_one_op("tensor<2xf32>").replace("}\n", ""), "closing '}' is missing"),
    (_one_op("tensor<2xf32>") + "%2 = relu(%x)\n", "text after the graph's closing"),
    (_one_op("tensor<2xf32>", '%1 = input {name = "y"} : {t}'), "declared in the graph's header"),
])
def test_malformed_text_is_a_parse_error(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        npuc.ir.parse(text)


def test_constructors_and_verifier_reject_unrepresentable_types() -> None:
    with pytest.raises(ValueError, match="zero point"):
        TensorType((2,), DType.I8, QuantParams((0.5,), (40000,)))
    with pytest.raises(ValueError, match="zero point"):
        TensorType((2,), DType.I4, QuantParams((0.5,), (8,)))
    with pytest.raises(ValueError, match="non-negative"):
        TensorType((2, -1), DType.F32)
    TensorType((2,), DType.U8, QuantParams((0.5,), (255,)))  # the edges are legal
    x = graph_input("x", TensorType((2, 3), DType.F32))
    y = make("relu", [x], quant=QuantParams((0.5,), (0,)))  # make cannot tell a float apart
    with pytest.raises(npuc.ir.GraphError, match="f32 value has quantization"):
        Graph((x,), (y,)).verify()
    w = const(np.zeros((2, 3), np.int8), DType.I8, quant=QuantParams((1.0,) * 3, (0,) * 3, 0))
    with pytest.raises(npuc.ir.GraphError, match="3 per-channel scales on axis 0"):
        Graph((), (w,)).verify()


def test_what_mobilequant_learned_survives_the_dump() -> None:
    from npuc import passes
    from tests.passes.test_smoothquant import _outlier_mlp

    graph, calibration = _outlier_mlp()
    ctx = passes.PassContext(calibration=calibration)
    learned = passes.apply(graph, "mobilequant", ctx=ctx, steps=3, progress=False)
    text = print_graph(learned, constants=True)
    assert "meta activation_ranges = {" in text and "meta mobilequant = {" in text
    again = npuc.ir.parse(text)
    assert print_graph(again, constants=True) == text
    assert again.meta["activation_ranges"] == learned.meta["activation_ranges"]
    assert again.meta["mobilequant"] == learned.meta["mobilequant"]
    # the later pass reads them back: quantize gives the same integer graph from either
    want = passes.apply(learned, "quantize", ctx=ctx)
    got = passes.apply(again, "quantize", ctx=ctx)
    assert print_graph(got, constants=True) == print_graph(want, constants=True)
    plain = passes.apply(graph, "quantize", ctx=ctx)  # the ranges do change the result
    assert print_graph(plain, constants=True) != print_graph(want, constants=True)
    # and a second mobilequant still sees its mark
    assert passes.apply(again, "mobilequant", ctx=ctx, steps=3, progress=False) is again


def test_transient_meta_is_left_out_and_unprintable_meta_is_refused() -> None:
    x = graph_input("x", TensorType((2,), DType.F32))
    graph = Graph((x,), (make("relu", [x]),), "g", {"origins": {x: x}, "float_graph": None})
    assert "meta" not in str(graph)
    bad = Graph((x,), (make("relu", [x]),), "g", {"schedule": {x: 1}})
    with pytest.raises(TypeError, match="graph meta 'schedule'.*TRANSIENT_META"):
        str(bad)
