"""The quantize pass end to end: every zoo model lowers to an integer-only graph that verifies,
reads back from its dump and approximates PyTorch; weight formats, observers, int16 and compare."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuc
from npuc.errors import UnsupportedError
from npuc.ir import DType
from npuc.pipeline import PassContext, PassError
from npuc.printer import print_graph
from npuc.quant import arith
from tests.conftest import rel_error
from tests.models import ZOO

SLOW = {"minilm", "resnet18"}
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ZOO]
BOUNDARY = {"quantize", "dequantize"}


def float_ops(graph: npuc.ir.Graph) -> list[str]:
    """Ops computing a float value inside the graph (the boundary's quantize/dequantize aside)."""
    return [f"{n.op} @{n.loc}" for n in graph.nodes
            if n.dtype.is_float and n.op not in BOUNDARY | {"input"}
            and not (n.is_const and not any(u.op not in BOUNDARY for u in graph.users[n]))]


def reference(model: torch.nn.Module, inputs: tuple) -> np.ndarray:
    with torch.no_grad():
        return model(*inputs).numpy()


@pytest.mark.parametrize("name", PARAMS)
def test_zoo_lowers_to_integer_only(name: str) -> None:
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs, target="npu-int8")
    graph = cm.ir.verify()
    assert float_ops(graph) == []
    assert all(n.type.quant is not None for n in graph.nodes
               if n.dtype in (DType.I8, DType.I16) and n.op not in ("input", "const"))
    out = cm.run(*inputs)
    # calibrated on these very inputs: every model stays within a few percent of PyTorch, but
    # MiniLM, whose outlier channels need smoothquant (test_minilm_w8a8_accuracy)
    assert rel_error(out, reference(model, inputs)) < (0.3 if name == "minilm" else 0.06)
    raw = cm.run(*inputs, raw=True)
    assert raw.dtype.kind == "i"
    (dq,) = [o for o in graph.outputs]
    assert np.array_equal(arith.dequantize(raw, dq.inputs[0].type.quant.scale[0],
                                           dq.inputs[0].type.quant.zero_point[0]), out)


@pytest.mark.parametrize("name", ["cnn_bn", "attention_block", "lstm_classifier", "unet_small"])
def test_lowered_dump_reads_back_and_runs_identically(name: str) -> None:
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs, target="npu-int8")
    text = print_graph(cm.ir, constants=True)
    reread = npuc.ir.parse(text).verify()
    assert print_graph(reread, constants=True) == text
    np.testing.assert_array_equal(npuc.interpret(reread, *inputs)[0], cm.run(*inputs))


@pytest.mark.parametrize("fmt, bound", [("int8", 0.03), ("int4", 0.12), ("int3", 0.3),
                                        ("ternary", 0.5), ("palette4", 0.12),
                                        ("palette3:g2", 0.25)])
def test_weight_formats_encode_and_run(fmt: str, bound: float) -> None:
    model, inputs = ZOO["cnn_bn"]()
    passes = {"quantize": {"weights": fmt}}
    cm = npuc.compile(model, inputs, target="npu-int8", passes=passes)
    weights = [n for n in cm.ir.nodes if n.is_const and n.dtype == DType.I8 and n.type.quant
               and n.type.quant.axis is not None]
    assert weights
    encodings = {n.attrs["encoding"].split(":")[0] for n in weights}
    assert encodings == ({"dense"} if fmt == "int8" else {fmt.split(":")[0]})
    assert f'encoding = "{weights[0].attrs["encoding"]}"' in cm.dump()
    stored = sum(n.attrs["data"].nbytes for n in weights)
    logical = sum(n.type.size for n in weights)
    assert stored <= logical  # sub-byte formats store less than a byte per weight
    assert rel_error(cm.run(*inputs), reference(model, inputs)) < bound


def test_per_layer_formats() -> None:
    model, inputs = ZOO["mlp"]()
    cm = npuc.compile(model, inputs, passes={"quantize": {"layers": {"0": "int4"}}})
    encodings = {n.loc: n.attrs["encoding"] for n in cm.ir.nodes
                 if n.is_const and n.type.quant is not None and n.type.quant.axis is not None
                 and n.dtype == DType.I8}
    assert "int4" in encodings.values() and "dense" in encodings.values()


@pytest.mark.parametrize("observer", ["minmax", "moving_average", "percentile", "mse"])
def test_observers_all_calibrate(observer: str) -> None:
    model, inputs = ZOO["cnn_bn"]()
    calibration = [tuple(torch.randn_like(x) for x in inputs) for _ in range(3)] + [inputs]
    cm = npuc.compile(model, inputs, calibration=calibration,
                      passes={"quantize": {"observer": observer}})
    assert rel_error(cm.run(*inputs), reference(model, inputs)) < 0.1


def test_int16_values_follow_the_target() -> None:
    model, inputs = ZOO["attention_block"]()
    wide = npuc.compile(model, inputs).ir
    narrow = npuc.compile(model, inputs, passes={"quantize": {"int16": []}}).ir
    softmax_in = [n.inputs[0] for n in wide.nodes if n.op == "qsoftmax"]
    assert softmax_in and all(n.dtype == DType.I16 for n in softmax_in)
    assert all(n.type.quant.zero_point == (0,) for n in softmax_in)  # int16 is symmetric
    assert not any(n.dtype == DType.I16 for n in narrow.nodes)


def test_bad_options_are_named() -> None:
    model, inputs = ZOO["mlp"]()
    with pytest.raises(PassError, match="int9"):
        npuc.compile(model, inputs, passes={"quantize": {"weights": "int9"}})
    with pytest.raises(PassError, match="minmax"):
        npuc.compile(model, inputs, passes={"quantize": {"observer": "median"}})


class Power(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.pow(x.abs() + 1, y)


def test_missing_kernel_names_op_and_module() -> None:
    inputs = (torch.randn(2, 3), torch.randn(2, 3))
    graph = npuc.capture(Power(), inputs)
    with pytest.raises(UnsupportedError, match="pow") as err:
        npuc.passes.apply(graph, "quantize", ctx=PassContext(calibration=[inputs]))
    assert err.value.stage == "quantize" and err.value.hint


def test_adaptive_pooling_with_uneven_windows() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.AdaptiveAvgPool2d((3, 2)))
    x = torch.randn(1, 2, 5, 7)
    cm = npuc.compile(model, (x,))
    assert "qadaptive_avg_pool" in cm.summary().ops
    assert rel_error(cm.run(x), reference(model, (x,))) < 0.03


def test_format_errors_name_the_layer() -> None:
    model, inputs = ZOO["cnn_bn"]()
    with pytest.raises(PassError, match="(?s)palette4:g3.*module"):
        npuc.compile(model, inputs, passes={"quantize": {"weights": "palette4:g3"}})


def test_compare_points_at_the_damaged_layer() -> None:
    """Give one layer 2-bit weights: compare's 'lost at the op itself' ranks it first."""
    model, inputs = ZOO["mlp"]()
    damaged = "2"
    cm = npuc.compile(model, inputs, passes={"quantize": {"layers": {damaged: "int2"}}})
    report = cm.compare(*inputs)
    assert report.born(1)[0].loc == damaged
    assert report.worst(1)[0].sqnr_db <= report.rows[0].sqnr_db
    text = str(report)
    assert damaged in text and "SQNR" in text


def test_compare_needs_a_quantized_graph() -> None:
    model, inputs = ZOO["mlp"]()
    cm = npuc.compile(model, inputs, target="cpu-fp32")
    with pytest.raises(ValueError, match="not quantized"):
        cm.compare(*inputs)


@pytest.mark.parametrize("name", ["mlp", "mobilenetv2_block", "transformer_encoder",
                                  "lstm_classifier", "unet_small"])
def test_int16_activations_everywhere(name: str) -> None:
    """dsp-int16: every activation int16, GEMMs 16x8 (int16 data, int8 weights) except the
    narrowed second operand of an activation matmul, and closer to PyTorch than int8."""
    model, inputs = ZOO[name]()
    wide = npuc.compile(model, inputs, target="dsp-int16")
    graph = wide.ir.verify()
    assert float_ops(graph) == []
    gemms = [n for n in graph.nodes if n.op in ("qconv", "qlinear", "qmatmul")]
    assert gemms and all(n.inputs[0].dtype == DType.I16 for n in gemms)
    assert all(n.inputs[1].dtype == DType.I8 for n in gemms)
    assert all(n.dtype == DType.I16 for n in graph.nodes if n.op in ("qadd", "lut", "qmul"))
    expected = reference(model, inputs)
    narrow = npuc.compile(model, inputs, target="npu-int8").run(*inputs)
    assert rel_error(wide.run(*inputs), expected) < min(0.02, rel_error(narrow, expected))


def test_activations_option_is_checked() -> None:
    model, inputs = ZOO["mlp"]()
    with pytest.raises(PassError, match="activations"):
        npuc.compile(model, inputs, passes={"quantize": {"activations": "int4"}})


def test_a_large_bias_on_tiny_weights_fits_int32() -> None:
    """Regression (a random graph): bias 1.0 beside weights of 0.008 on an input of range 1e-3
    needs 4e9 accumulator steps; the weight scale is floored so the bias fits int32."""
    conv = torch.nn.Conv1d(1, 2, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[0.0078]], [[0.5]]]))
        conv.bias.copy_(torch.tensor([1.0, 0.0]))
    x = torch.rand(1, 1, 8) * 1e-3
    cm = npuc.compile(conv.eval(), (x,), target="npu-int8")
    qconv = next(n for n in cm.ir.nodes if n.op == "qconv")
    assert np.abs(qconv.inputs[2].data).max() < arith.INT32_MAX
    assert rel_error(cm.run(x.numpy()), reference(conv, (x,))) < 0.01


def test_int16_mac_keeps_gelu_outputs_wide_into_the_next_gemm() -> None:
    """int16_mac: the GELU output stays int16 where the next linear multiplies it (16x8), which
    the simulator charges at the NPU's int16_rate; without it, the output is int8. A name that is
    not an op is refused."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(),
                                torch.nn.Linear(64, 32)).eval()
    x = torch.randn(8, 32)
    rows = {}
    for macs16 in ([], ["gelu"]):
        cm = npuc.compile(model, (x,), passes={"quantize": {"int16_mac": macs16}})
        second = [n for n in cm.ir.nodes if n.op == "qlinear"][1]
        assert second.inputs[0].dtype == (DType.I16 if macs16 else DType.I8)
        rows[bool(macs16)] = [r for r in cm.simulate().rows if r.op == "qlinear"][1]
    assert rows[True].compute_cycles == 2 * rows[False].compute_cycles  # int16_rate 0.5
    with pytest.raises(PassError, match="int16_mac names unknown op.*did you mean 'gelu'"):
        npuc.compile(model, (x,), passes={"quantize": {"int16_mac": ["gelu_typo"]}})
