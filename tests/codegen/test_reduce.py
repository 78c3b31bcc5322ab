"""Generated C of reductions, softmax, normalisation, pooling, resizing and gather, built with gcc
and compared bit for bit with the interpreter (`cm.run`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from tests.codegen.harness import SANITIZE, assert_bit_exact

TARGETS = ["npu-int8", "dsp-int16"]
INT8_SOFTMAX = {"quantize": {"int16": []}}  # 8-bit softmax inputs: the 256-entry exp table


class Softmaxes(nn.Module):
    """Softmax over the last and a middle axis, a runtime attention mask (fully masked rows
    included at test time), log-softmax over the last and a middle axis, and any/all/amax/amin
    reductions on bool and quantized tensors."""

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        keep = ids > 0
        row = keep.any(dim=-1, keepdim=True)  # amax of bool
        every = keep.all(dim=1, keepdim=True)  # amin of bool
        masked = torch.softmax(x + torch.where(keep, 0.0, float("-inf")), -1)
        middle = torch.softmax(x, 1)
        logs = torch.log_softmax(x, -1) + torch.log_softmax(x, 2)
        extremes = torch.where(every, x, x.amax(dim=(1, 3), keepdim=True)) + x.amin(2, True)
        # ids stays live to the end: see the note on entry layers in softmax_inputs
        return masked + middle + logs + extremes + torch.where(ids > 1, row.float(), x)


def softmax_inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration inputs (no fully masked row: PyTorch gives NaN there) and test inputs (1.5x
    beyond the calibrated range, one row fully masked). `ids` is read again by the last op: an
    integer input whose buffer the plan reused for the float input's quantize would be
    overwritten, since the C runs that quantize (an entry layer) before every body layer."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6) * 3
    ids = torch.randint(-1, 3, (2, 3, 5, 6))
    ids[..., 0] = 1
    fresh = torch.randint(-1, 3, (2, 3, 5, 6))
    fresh[0, 1, 2] = 0
    return [x.numpy(), ids.numpy()], [x.numpy() * 1.5, fresh.numpy()]


class Norms(nn.Module):
    """LayerNorm over one and two axes (gamma of both signs), GroupNorm with and without affine."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.ln2 = nn.LayerNorm(6), nn.LayerNorm([5, 6])
        self.gn, self.gn1 = nn.GroupNorm(2, 4), nn.GroupNorm(4, 4, affine=False)
        with torch.no_grad():
            for m in (self.ln, self.ln2, self.gn):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(x) + self.ln2(x * 2) + self.gn(x) + self.gn1(x)


class Reductions(nn.Module):
    """mean and sum over leading, middle, trailing and all axes, with and without keepdim."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.mean(dim=(1, 3), keepdim=True) + x.sum(dim=-1, keepdim=True)
        b = x.mean(dim=0) + x.sum(dim=(0, 2)).unsqueeze(1)
        return a.sum(dim=(2, 3)) * 0.5 + b.mean(dim=(1, 2)) + x.mean(dim=(0, 1, 2, 3), keepdim=True)


class Pools(nn.Module):
    """max/avg pools with padding, stride, dilation, ceil_mode and both count_include_pad modes;
    1-d pools; adaptive average pools to sizes that do not divide the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.max_pool2d(x, 3, 2, 1) + F.avg_pool2d(x, 3, 2, 1)
        b = F.max_pool2d(x, 2, 2, ceil_mode=True) + F.avg_pool2d(
            x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
        c = F.avg_pool2d(x, (2, 3), (2, 1), (1, 1), ceil_mode=True)
        d = F.max_pool2d(x, 3, (1, 2), 1, dilation=2)
        seq = x.flatten(2)
        e = F.max_pool1d(seq, 4, 3, 2) + F.avg_pool1d(seq, 4, 3, 2, ceil_mode=True)
        g = F.adaptive_avg_pool1d(seq, 7).mean(-1)
        f = F.adaptive_avg_pool2d(x, (4, 3)) + g[..., None, None]
        return (a.sum((2, 3)) + b.mean((2, 3)) + c.amax((2, 3)) + d.mean((2, 3)) + e.mean(-1)
                + f.flatten(2).mean(-1))


class Resizes(nn.Module):
    """Nearest up- and downsampling, bilinear with and without align_corners, 1-d nearest."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.interpolate(x, scale_factor=2, mode="nearest")
        b = F.interpolate(x, size=(13, 5), mode="bilinear", align_corners=False)
        c = F.interpolate(x, size=(9, 14), mode="bilinear", align_corners=True)
        d = F.interpolate(x, size=(4, 3), mode="nearest")
        e = F.interpolate(x.flatten(2), scale_factor=1.5, mode="nearest")
        f = F.interpolate(x, scale_factor=0.5, mode="bilinear")
        return (a.mean((2, 3)) + b.mean((2, 3)) + c.amax((2, 3)) + d.sum((2, 3)) + e.mean(-1)
                + f.amin((2, 3)))


class Embedding(nn.Module):
    """Embedding lookup (a constant table, int64 ids), gathers of an activation by runtime ids
    (axis 1) and by constant indices (axes 0 and 2)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 6)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids)  # (2, 5, 6)
        picked = torch.index_select(e, 1, ids[1])
        shuffled = e[:, :, torch.tensor([4, 0, 2, 5, 1, 3])] + e[torch.tensor([1, 0])]
        return e.mean(1) + picked.mean(1) + shuffled.amax(1)


def embedding_inputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Calibration sees ids 0..4 only; the test ids reach the last rows of the table, which no
    calibration id touched (ids outside the table are errors: tests/codegen/test_bad_inputs.py)."""
    torch.manual_seed(0)
    ids = torch.randint(0, 5, (2, 5))
    fresh = ids.clone()
    fresh[0, 1], fresh[0, 3] = 19, 12  # row 1 also picks along axis 1 (size 5): stays < 5
    return [ids.numpy()], [fresh.numpy()]


def _float_inputs(*shape: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    torch.manual_seed(0)
    x = torch.randn(*shape).numpy()
    return [x], [x * 1.5]  # beyond the calibrated range: saturation paths


CASES = {
    "softmax": (Softmaxes, softmax_inputs),
    "norms": (Norms, lambda: _float_inputs(2, 4, 5, 6)),
    "reductions": (Reductions, lambda: _float_inputs(2, 4, 5, 6)),
    "pools": (Pools, lambda: _float_inputs(2, 3, 9, 11)),
    "resize": (Resizes, lambda: _float_inputs(2, 3, 7, 6)),
    "embedding": (Embedding, embedding_inputs),
}


def compiled(name: str, target: str, passes: dict | None = None
             ) -> tuple[npuc.CompiledModel, list[np.ndarray]]:
    factory, inputs = CASES[name]
    torch.manual_seed(0)
    calib, fresh = inputs()
    cm = npuc.compile(factory().eval(), tuple(torch.from_numpy(a) for a in calib), target=target,
                      passes=passes)
    return cm, fresh


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", list(CASES))
def test_bit_exact(name: str, target: str, tmp_path: Path) -> None:
    cm, inputs = compiled(name, target)
    assert_bit_exact(cm, inputs, tmp_path)


def test_softmax_8bit_tables(tmp_path: Path) -> None:
    """int8 softmax and log-softmax inputs: the 256-entry exp table."""
    cm, inputs = compiled("softmax", "npu-int8", INT8_SOFTMAX)
    tables = {n.inputs[1].type.size for n in cm.ir.nodes if n.op in ("qsoftmax", "qlog_softmax")}
    assert tables == {256}
    assert_bit_exact(cm, inputs, tmp_path)


def test_softmax_16bit_tables_and_mask() -> None:
    """The default npu-int8 softmax reads int16 (513-entry tables) and the mask as -32768."""
    cm, _ = compiled("softmax", "npu-int8")
    softmaxes = [n for n in cm.ir.nodes if n.op in ("qsoftmax", "qlog_softmax")]
    assert {n.inputs[1].type.size for n in softmaxes} == {513}
    assert any(n.inputs[0].op == "where" for n in softmaxes)


class Everything(nn.Module):
    """One model over every kernel here, for the sanitizer build: causal-masked softmax,
    log-softmax, LayerNorm, GroupNorm, pools, adaptive pool, bilinear and nearest resize, mean,
    sum, amax, amin and a gather."""

    def __init__(self) -> None:
        super().__init__()
        self.ln, self.gn = nn.LayerNorm(8), nn.GroupNorm(2, 4)
        self.register_buffer("causal", torch.triu(torch.full((8, 8), float("-inf")), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.softmax(x + self.causal, -1) + torch.log_softmax(x, 2) + self.ln(x) + self.gn(x)
        p = F.avg_pool2d(y, 3, 2, 1, ceil_mode=True) + F.max_pool2d(y, 3, 2, 1, ceil_mode=True)
        z = F.interpolate(F.adaptive_avg_pool2d(p, (3, 3)), size=(8, 8), mode="bilinear")
        z = z + F.interpolate(p, size=(8, 8), mode="nearest")[:, torch.tensor([3, 1, 0, 2])]
        r = y.mean(dim=(2, 3), keepdim=True) + y.sum(1, True) + y.amax(-1, True) - y.amin(2, True)
        return y + z + r


def test_sanitizers_are_clean(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8)
    cm = npuc.compile(Everything().eval(), (x,), target="npu-int8")
    assert_bit_exact(cm, [x.numpy() * 1.5], tmp_path, cflags=SANITIZE)


# -- random reductions --------------------------------------------------------------------------

class Reduce(nn.Module):
    def __init__(self, op: str, axes: tuple[int, ...], keepdim: bool) -> None:
        super().__init__()
        self.op, self.axes, self.keepdim = op, axes, keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.op in ("softmax", "log_softmax"):
            return getattr(torch, self.op)(x, self.axes[0])
        return getattr(x, self.op)(dim=self.axes, keepdim=self.keepdim)


@st.composite
def reductions(draw: st.DrawFn) -> tuple[str, tuple[int, ...], tuple[int, ...], bool, str]:
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    op = draw(st.sampled_from(["mean", "sum", "amax", "amin", "softmax", "log_softmax"]))
    rank = len(shape)
    if op in ("softmax", "log_softmax"):
        axes = (draw(st.integers(0, rank - 1)),)
    else:
        axes = tuple(sorted(draw(st.sets(st.integers(0, rank - 1), min_size=1))))
    keepdim = draw(st.booleans())
    return op, shape, axes, keepdim, draw(st.sampled_from(TARGETS))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reductions())
def test_random_reductions(case: tuple[str, tuple[int, ...], tuple[int, ...], bool, str]) -> None:
    op, shape, axes, keepdim, target = case
    torch.manual_seed(1)
    x = torch.randn(*shape) * 2
    cm = npuc.compile(Reduce(op, axes, keepdim).eval(), (x,), target=target)
    with tempfile.TemporaryDirectory() as folder:
        assert_bit_exact(cm, [x.numpy() * 1.5], Path(folder))


# -- random pools -------------------------------------------------------------------------------

class Pool(nn.Module):
    def __init__(self, kind: str, rank: int, options: dict) -> None:
        super().__init__()
        self.fn = getattr(F, f"{kind}_pool{rank}d")
        self.options = options

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, **self.options)


@st.composite
def pools(draw: st.DrawFn) -> tuple[str, tuple[int, ...], dict]:
    kind = draw(st.sampled_from(["max", "avg"]))
    rank = draw(st.integers(1, 2))
    kernel = draw(st.lists(st.integers(1, 4), min_size=rank, max_size=rank))
    options = {"kernel_size": kernel,
               "stride": draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank)),
               "padding": [draw(st.integers(0, k // 2)) for k in kernel],
               "ceil_mode": draw(st.booleans())}
    if kind == "max":
        options["dilation"] = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    else:
        options["count_include_pad"] = draw(st.booleans())
    reach = [(k - 1) * options.get("dilation", [1] * rank)[i] + 1 for i, k in enumerate(kernel)]
    shape = (2, 3) + tuple(draw(st.integers(r, r + 6)) for r in reach)
    return kind, shape, options


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pools())
def test_random_pools(case: tuple[str, tuple[int, ...], dict]) -> None:
    kind, shape, options = case
    torch.manual_seed(2)
    x = torch.randn(*shape)
    model = Pool(kind, len(shape) - 2, options).eval()
    cm = npuc.compile(model, (x,), target="npu-int8")
    with tempfile.TemporaryDirectory() as folder:
        assert_bit_exact(cm, [x.numpy() * 1.5], Path(folder))
