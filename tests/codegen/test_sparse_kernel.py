"""The sparse GEMM kernel (`gemm.sparse_plan`, ops/gemm_sparse.c.j2): `sparse`-stored weights
below `gemm.SPARSE_DENSITY` are read in place by a kernel that skips zeros, and its outputs equal
the interpreter's bit for bit: linears, pointwise convs and kxk (strided, grouped, dilated)
convs, 8- and 16-bit activations, channels without a nonzero, all-zero weights, rows that are
not a multiple of the register block, k not a multiple of 64, several row tiles, layers
left dense (too few rows, no int32 proof); gcc and clang, portable and native.
The chosen kernel is read off the marker comment the sparse template writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.codegen.kernels import gemm
from tests.codegen.harness import FAST, WARNINGS, assert_bit_exact

MARKER = "npuc: sparse kernel"
SPARSE = {"quantize": {"weights": "sparse"}}


def prune(layer: nn.Module, density: float, seed: int = 0, empty: bool = True) -> nn.Module:
    """Keep round(density * size) weights at random positions (never exactly zero), the rest 0;
    with `empty`, output channel 0 keeps none (its sum is the bias alone)."""
    rng = np.random.default_rng(seed)
    w = layer.weight.detach().numpy()
    keep = np.zeros(w.size, bool)
    keep[rng.choice(w.size, round(density * w.size), replace=False)] = True
    keep = keep.reshape(w.shape)
    if empty:
        keep[0] = False
    values = np.where(np.abs(w) < 1e-3, 0.05, w) * keep
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(values, dtype=torch.float32))
    return layer


def layers(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A one- or two-layer model of `kind` and its input (odd sizes everywhere)."""
    torch.manual_seed(0)
    if kind == "linear":  # 65 rows, k = 70 and 37
        return (nn.Sequential(nn.Linear(70, 37), nn.ReLU(), nn.Linear(37, 6)),
                torch.randn(5, 13, 70))
    if kind == "pointwise":  # 72 pixels, k = 13
        return nn.Sequential(nn.Conv2d(13, 9, 1), nn.ReLU()), torch.randn(2, 13, 8, 9)
    # kxk: strided and padded 3x3 (k = 54, 72 pixels); grouped, dilated, asymmetric 2x3 (k = 24
    # per group, 90 pixels)
    return (nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 6, (2, 3), groups=2, dilation=(2, 1), padding=(1, 2))),
            torch.randn(2, 6, 17, 16))


def compiled(kind: str, density: float, target: str = "npu-int8"):  # noqa: ANN201
    model, x = layers(kind)
    for i, layer in enumerate(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))):
        prune(layer, density, seed=i)
    return npuc.compile(model.eval(), (x,), target=target, passes=SPARSE), x


def sparse_layers(folder: Path) -> int:
    return (folder / "model.c").read_text().count(MARKER)


@pytest.mark.parametrize(("fraction", "target"), [  # fraction: of SPARSE_DENSITY
    (0.0, "npu-int8"), (0.4, "npu-int8"), (0.9, "npu-int8"), (0.9, "dsp-int16")])
@pytest.mark.parametrize("kind", ["linear", "pointwise", "conv"])
def test_sparse_kernel_bit_exact(kind: str, fraction: float, target: str,
                                 tmp_path: Path) -> None:
    cm, x = compiled(kind, fraction * gemm.SPARSE_DENSITY, target)
    assert_bit_exact(cm, [x.numpy() * 1.5], tmp_path)
    text = (tmp_path / "model.c").read_text()
    assert text.count(MARKER) == (1 if kind == "pointwise" else 2)
    assert "*next++" not in text  # no decode pass: the kernel reads the stored bytes


@pytest.mark.parametrize("kind", ["linear", "pointwise", "conv"])
def test_several_row_tiles(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiles of one register block: a partial last tile and last block, rows restarting."""
    monkeypatch.setattr(gemm, "TILE_BYTES", 1)
    cm, x = compiled(kind, 0.5 * gemm.SPARSE_DENSITY)
    assert_bit_exact(cm, [x.numpy()], tmp_path)
    assert sparse_layers(tmp_path) >= 1


@pytest.mark.parametrize("side", [-1, 1])
def test_threshold_picks_the_kernel(side: int, tmp_path: Path) -> None:
    """One weight just below SPARSE_DENSITY takes the sparse kernel, just above the dense one
    (decoded); both are exact. So does a layer with fewer than SPARSE_MIN_ROWS rows."""
    layer = nn.Linear(100, 20)
    count = round(gemm.SPARSE_DENSITY * layer.weight.numel()) + side * 5
    prune(layer, count / layer.weight.numel(), empty=False)
    x = torch.randn(70, 100)
    cm = npuc.compile(layer.eval(), (x,), target="npu-int8", passes=SPARSE)
    w = next(n for n in cm.ir.nodes if n.is_const and n.attrs.get("encoding") == "sparse")
    density = np.count_nonzero(w.data) / w.data.size
    assert (density < gemm.SPARSE_DENSITY) == (side < 0)
    assert_bit_exact(cm, [x.numpy()], tmp_path)
    assert sparse_layers(tmp_path) == (1 if side < 0 else 0)


def test_int32_proof_falls_back_to_dense(tmp_path: Path) -> None:
    """int16 activations (|x - zp| up to 32768), ~630 nonzeros in a channel (below the density
    threshold): 630 * 32768 * 127 > 2**31 - 1, so no int32 sum is proven and the dense kernel
    (chunked sums) runs instead."""
    density = 0.9 * gemm.SPARSE_DENSITY
    layer = prune(nn.Linear(round(630 / density), 4), density, empty=False)
    w = layer.weight.detach().numpy()
    assert np.count_nonzero(w, axis=1).max() * 32768 * 127 > gemm.INT32_MAX
    x = torch.randn(64, w.shape[1])
    cm = npuc.compile(layer.eval(), (x,), target="dsp-int16", passes=SPARSE)
    assert_bit_exact(cm, [x.numpy()], tmp_path)
    assert sparse_layers(tmp_path) == 0


@pytest.mark.parametrize(("cc", "cflags", "arch"), [
    ("gcc", f"{WARNINGS} -O2", "-march=x86-64"), ("clang", f"{WARNINGS} -O2", "-march=x86-64"),
    ("clang", f"{WARNINGS} -O2", "-march=native")])
@pytest.mark.parametrize("kind", ["linear", "pointwise", "conv"])
def test_compilers(kind: str, cc: str, cflags: str, arch: str, tmp_path: Path) -> None:
    """Portable gcc and clang builds and a native clang one (every other test here builds with
    gcc -O2 -march=native)."""
    cm, x = compiled(kind, 0.7 * gemm.SPARSE_DENSITY)
    assert_bit_exact(cm, [x.numpy()], tmp_path, cflags=cflags, cc=cc, arch=arch)
    assert sparse_layers(tmp_path) >= 1


@settings(max_examples=6, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 150), out=st.integers(1, 40), rows=st.integers(gemm.SPARSE_MIN_ROWS, 100),
       density=st.floats(0.0, 0.95).map(lambda f: f * gemm.SPARSE_DENSITY),
       seed=st.integers(0, 99))
def test_random_linears(k: int, out: int, rows: int, density: float, seed: int,
                        tmp_path_factory: pytest.TempPathFactory) -> None:
    torch.manual_seed(seed)
    layer = prune(nn.Linear(k, out), density, seed, empty=seed % 2 == 0)
    x = torch.randn(rows, k)
    cm = npuc.compile(layer.eval(), (x,), target="npu-int8", passes=SPARSE)
    folder = tmp_path_factory.mktemp("linear")
    assert_bit_exact(cm, [x.numpy() * 2], folder, cflags=FAST)
    assert sparse_layers(folder) == 1


def test_few_rows_stay_dense(tmp_path: Path) -> None:
    layer = prune(nn.Linear(100, 20), 0.02)
    x = torch.randn(gemm.SPARSE_MIN_ROWS - 1, 100)
    cm = npuc.compile(layer.eval(), (x,), target="npu-int8", passes=SPARSE)
    assert_bit_exact(cm, [x.numpy()], tmp_path)
    assert sparse_layers(tmp_path) == 0
