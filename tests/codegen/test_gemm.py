"""Generated C of the GEMM kernels (qlinear, qmatmul, qconv, qconv_transpose) and the weight
decoders, built with gcc and compared bit for bit with the interpreter (`cm.run`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.codegen.kernels import gemm
from npuc.ir import DType
from npuc.quant.constants import encoding_of
from tests import models
from tests.codegen.harness import FAST, SANITIZE, assert_bit_exact

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


class Convs(nn.Module):
    """Grouped + strided, depthwise with a channel multiplier + dilated, asymmetric "same"
    padding (even kernel), pointwise, strided 1x1, and a transposed conv with output padding."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.depthwise = nn.Conv2d(6, 12, 3, padding=2, dilation=2, groups=6)
        self.same = nn.Conv2d(12, 5, (2, 4), padding="same")
        self.pointwise = nn.Conv2d(5, 9, 1)
        self.down = nn.Conv2d(9, 8, 1, stride=2, bias=False)
        self.up = nn.ConvTranspose2d(8, 3, 3, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.grouped(x))
        y = F.relu6(self.depthwise(y))
        y = self.pointwise(self.same(y))
        return self.up(F.relu(self.down(y)))


class Sequence(nn.Module):
    """1-d: a strided conv, a depthwise conv, a dilated transposed conv with output padding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 8, 5, stride=2, padding=2)
        self.depthwise = nn.Conv1d(8, 8, 3, padding=1, groups=8)
        self.up = nn.ConvTranspose1d(8, 4, 4, stride=3, padding=2, output_padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.depthwise(F.relu(self.conv(x)))))


class Volume(nn.Module):
    """3-d conv and transposed conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 1), padding=(1, 0, 1))
        self.up = nn.ConvTranspose3d(4, 2, (2, 2, 3), stride=(2, 1, 2), padding=(0, 1, 1),
                                     output_padding=(1, 0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.relu(self.conv(x)))


class BatchedMatmul(nn.Module):
    """Batched products of activations: x x^T (attention scores), then times a slice of x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.relu(torch.matmul(x, x.transpose(-1, -2))), x[..., 1:7])


class Linears(nn.Module):
    """Odd feature counts (remainder channel blocks, weights not a whole number of bytes) and
    one long sum (600 terms: int16 activations need int64 sums of 512-term int32 chunks)."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(600, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 21),
            nn.ReLU(), nn.Linear(21, 11), nn.ReLU(), nn.Linear(11, 16), nn.ReLU(),
            nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8),
            nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# one weight format per Linears layer (module paths layers.0, layers.2, ...)
FORMATS = {"layers.0": "int2", "layers.2": "int3", "layers.4": "int5", "layers.6": "int6",
           "layers.8": "int7", "layers.10": "ternary", "layers.12": "palette1",
           "layers.14": "palette3:g2", "layers.16": "palette8"}

CASES = {
    "convs": (Convs, lambda: (torch.randn(2, 4, 11, 9),)),
    "sequence": (Sequence, lambda: (torch.randn(2, 3, 37),)),
    "volume": (Volume, lambda: (torch.randn(1, 2, 5, 7, 6),)),
    "matmul": (BatchedMatmul, lambda: (torch.randn(2, 3, 5, 9),)),
    "linears": (Linears, lambda: (torch.randn(3, 600),)),
}


def compiled(name: str, target: str = "npu-int8", passes: dict | None = None
             ) -> tuple[npuc.CompiledModel, list[np.ndarray]]:
    """A case compiled, and fresh inputs 1.5x beyond the calibrated range (saturation)."""
    torch.manual_seed(0)
    if name in CASES:
        factory, make = CASES[name]
        model, calib = factory().eval(), make()
    else:
        model, calib = getattr(models, name)()
    cm = npuc.compile(model, calib, target=target, passes=passes)
    torch.manual_seed(1)
    fresh = [x.numpy() * 1.5 for x in (make() if name in CASES else calib)]
    return cm, fresh


def ops(cm: npuc.CompiledModel) -> set[str]:
    return {n.op for n in cm.ir.nodes}


def encodings(cm: npuc.CompiledModel) -> set[str]:
    return {encoding_of(n).name for n in cm.ir.nodes
            if n.is_const and n.attrs.get("encoding", "dense") != "dense"}


# 8-bit activations: both row layouts the C compiler may pick (NPUC_U8_ROWS), whatever this CPU
@pytest.mark.parametrize(("target", "rows"), [("npu-int8", "u8"), ("npu-int8", "i16"),
                                              ("dsp-int16", None)])
@pytest.mark.parametrize("name", ["convs", "sequence", "volume", "matmul", "linears"])
def test_geometries_bit_exact(name: str, target: str, rows: str | None, tmp_path: Path) -> None:
    cm, inputs = compiled(name, target)
    layout = f" -DNPUC_U8_ROWS={int(rows == 'u8')}" if rows else ""
    assert_bit_exact(cm, inputs, tmp_path, cflags=FAST + layout)
    if name == "linears":  # 600 terms: int32 for 8-bit activations, chunked for 16-bit ones
        chunked = "kc += 512" in (tmp_path / "model.c").read_text()
        assert chunked == (target == "dsp-int16")


def test_int16_attention(tmp_path: Path) -> None:
    """dsp-int16 attention: int16 x int8 GEMMs (the matmuls' second operands narrowed to int8
    with a zero point)."""
    cm, inputs = compiled("attention_block", "dsp-int16")
    gemms = [n for n in cm.ir.nodes if n.op in ("qlinear", "qmatmul")]
    assert {n.inputs[0].dtype for n in gemms} == {DType.I16}
    assert_bit_exact(cm, inputs, tmp_path)


def test_every_weight_format(tmp_path: Path) -> None:
    """int2..int7 (int4 below), ternary and palettes with 1, 3 and 8 bits and LUT groups."""
    cm, inputs = compiled("linears", passes={"quantize": {"layers": FORMATS}})
    assert encodings(cm) == {"int2", "int3", "int5", "int6", "int7", "ternary", "palette1",
                             "palette3", "palette8"}
    assert_bit_exact(cm, inputs, tmp_path)


@pytest.mark.parametrize(("name", "target", "fmt"), [
    ("convs", "npu-w4a8", None), ("resnet_basic", "npu-w4a8", None),
    ("convs", "npu-int8", "ternary"), ("sequence", "dsp-int16", "palette4:g2"),
    ("ops_mix", "npu-int8", "palette4:g8"), ("convs", "soc", "sparse"),
    ("sequence", "dsp-int16", "sparse")])
def test_compressed_conv_weights(name: str, target: str, fmt: str | None,
                                 tmp_path: Path) -> None:
    """Decoded weights in every conv form: grouped, depthwise (LUT channels along axis 0) and
    transposed (along axis 1, reordered into GEMM rows after decoding)."""
    passes = {"quantize": {"layers": {"*": fmt}}} if fmt else None
    cm, inputs = compiled(name, target, passes)
    assert encodings(cm) == {"int4" if fmt is None else fmt.split(":")[0]}
    assert_bit_exact(cm, inputs, tmp_path)


@pytest.mark.parametrize("target", ["npu-int8", "dsp-int16"])
def test_tiny_row_tiles(target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several row tiles and a partial last one, with unsigned and with centred int16 rows."""
    monkeypatch.setattr(gemm, "TILE_BYTES", 200)
    for name in ("convs", "linears"):
        cm, inputs = compiled(name, target)
        assert_bit_exact(cm, inputs, tmp_path / name)


@pytest.mark.parametrize(("limit", "name"), [(1 << 20, "linears"), (1 << 20, "convs"),
                                             (1 << 10, "convs")])
def test_wide_accumulators(limit: int, name: str, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A lower int32 bound forces the chunked (int32 chunks of 32 terms into int64: 2**20) and
    the int64 sums (2**10), in GEMMs and in depthwise convs."""
    monkeypatch.setattr(gemm, "INT32_MAX", limit)
    monkeypatch.setattr(gemm, "MIN_CHUNK", 16)
    cm, inputs = compiled(name)
    assert_bit_exact(cm, inputs, tmp_path)
    code = (tmp_path / "model.c").read_text()
    assert ("kc += 32" in code) == (limit == 1 << 20)  # 2**20 // (255 * 127) = 32 terms
    assert "npuc_i64 s0_0" in code  # the sums are int64 either way
    if name == "convs":  # a depthwise row sums 9 taps of at most 255 * 127: int64 below 2**20
        assert ("npuc_i64 *const acc" in code) == (limit == 1 << 10)


def test_sanitizers_are_clean(tmp_path: Path) -> None:
    cm, inputs = compiled("convs", "npu-w4a8", {"quantize": {"layers": {"up": "ternary"}}})
    assert_bit_exact(cm, inputs, tmp_path, cflags=SANITIZE)


def test_batch_offsets() -> None:
    """qmatmul's per-batch operand offsets broadcast like numpy.matmul."""
    a = np.arange(2 * 1 * 4 * 3).reshape(2, 1, 4, 3)
    b = np.arange(3 * 3 * 5).reshape(3, 3, 5)
    batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a_at, b_at = gemm._batch_offsets(a.shape, batch), gemm._batch_offsets(b.shape, batch)
    for n, index in enumerate(np.ndindex(*batch)):
        expected = a[index[0], 0] @ b[index[1]]
        got = a.ravel()[a_at[n]:a_at[n] + 12].reshape(4, 3) @ b.ravel()[b_at[n]:b_at[n] + 15
                                                                        ].reshape(3, 5)
        assert np.array_equal(got, expected)


def test_plan_dot() -> None:
    assert gemm.plan_dot(576, 255 * 127) == gemm.Dot("int32", 576)
    assert gemm.plan_dot(66000, 255 * 127).mode == "int32"
    assert gemm.plan_dot(66400, 255 * 127).mode == "chunked"
    chunked = gemm.plan_dot(1040, 32768 * 127)  # int16 x int8: 516 terms per int32 sum
    assert chunked == gemm.Dot("chunked", 1040, 512, 1024)
    assert gemm.plan_dot(96, 32768 * 32768).mode == "int64"
    assert gemm.plan_dot(10 ** 9, 0).mode == "int32"


# -- conv geometry ---------------------------------------------------------------------------------

@st.composite
def conv_geometry(draw: st.DrawFn) -> dict:
    nsp = draw(st.sampled_from([1, 2]))
    transpose = draw(st.booleans())
    groups = 1 if transpose else draw(st.sampled_from([1, 2, 3]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(nsp))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(nsp))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(nsp))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(nsp))
    size = tuple(draw(st.integers(1, 9)) for _ in range(nsp))
    extra = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation,
                                                                      strict=True))
    return {"nsp": nsp, "transpose": transpose, "groups": groups, "cin": cin, "cout": cout,
            "kernel": kernel, "stride": stride, "dilation": dilation, "padding": padding,
            "size": size, "output_padding": extra, "batch": 2}  # (no 1-element tensors)


def conv_module(g: dict) -> nn.Module | None:
    """The geometry as a torch module, None when its output would be empty."""
    out = []
    for n, k, s, d, p, e in zip(g["size"], g["kernel"], g["stride"], g["dilation"], g["padding"],
                                g["output_padding"], strict=True):
        if g["transpose"]:
            out.append((n - 1) * s - 2 * p + d * (k - 1) + e + 1)
        else:
            out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    if min(out) < 1:
        return None
    if g["transpose"]:
        cls = nn.ConvTranspose1d if g["nsp"] == 1 else nn.ConvTranspose2d
        return cls(g["cin"], g["cout"], g["kernel"], g["stride"], g["padding"],
                   g["output_padding"], dilation=g["dilation"])
    cls = nn.Conv1d if g["nsp"] == 1 else nn.Conv2d
    return cls(g["cin"], g["cout"], g["kernel"], g["stride"], g["padding"], g["dilation"],
               g["groups"])


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_geometry(), st.sampled_from(["npu-int8", "dsp-int16"]))
def test_conv_geometry(g: dict, target: str) -> None:
    conv = conv_module(g)
    assume(conv is not None)
    torch.manual_seed(0)
    model = nn.Sequential(conv, nn.ReLU()).eval()
    x = torch.randn((g["batch"], g["cin"]) + g["size"])
    cm = npuc.compile(model, (x,), target=target)
    with tempfile.TemporaryDirectory() as folder:
        assert_bit_exact(cm, [x.numpy() * 1.5], Path(folder))


def test_pruned_sparse_weights(tmp_path: Path) -> None:
    """Magnitude-pruned layers stored sparse: fewer weight bytes in the C, the same outputs."""
    torch.manual_seed(0)
    model = Linears().eval()
    with torch.no_grad():
        for layer in model.layers:
            if isinstance(layer, nn.Linear):
                w = layer.weight
                w[w.abs() < w.abs().quantile(0.75)] = 0
    x = torch.randn(3, 600)
    dense = npuc.compile(model, (x,), target="npu-int8")
    cm = npuc.compile(model, (x,), target="npu-int8", passes={"quantize": {"weights": "sparse"}})
    assert encodings(cm) == {"sparse"}
    assert cm.summary().weight_bytes < 0.5 * dense.summary().weight_bytes
    assert_bit_exact(cm, [x.numpy() * 1.5], tmp_path)
