"""The sparse GEMM kernel of the generated C against the dense one, per layer shape and weight
density; writes the "Sparse kernel" section of bench/RESULTS.md.

    python bench/sparse_kernel.py [--quick]

Each layer (ResNet-18's 1x1 and 3x3 convs at 56x56, 28x28 and 14x14, one image; a MiniLM
384 -> 1536 linear at 16 and 128 tokens) is a one-layer npu-int8 model whose weights are pruned
at random to density d. npuc emits its C three ways: weights stored int8 (the dense kernel),
stored `sparse` with the sparse kernel (`gemm.SPARSE_DENSITY` raised to 1 so it is always
chosen), and stored `sparse` on the dense path (`SPARSE_DENSITY` 0: decoded every call, then
the dense kernel) at 50%. Each is built with the Makefile's defaults (gcc -O3 -march=native,
one thread) and timed as the median of 5 means of `./model in.bin out.bin <n>` (n runs about
0.3 s); the times include the layer's input quantize and output dequantize, the same in all
three. The sparse kernel's output is checked bit for bit against the interpreter.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import npuc  # noqa: E402
from bench.results import write_section  # noqa: E402
from npuc.codegen.kernels import gemm  # noqa: E402

DENSITIES = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def layers() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """name -> (one-layer model, example input)."""
    out = {}
    for c, size in ((64, 56), (128, 28), (256, 14)):
        out[f"conv1x1 {c}->{c} @{size}"] = (nn.Conv2d(c, c, 1), torch.randn(1, c, size, size))
        out[f"conv3x3 {c}->{c} @{size}"] = (nn.Conv2d(c, c, 3, padding=1),
                                           torch.randn(1, c, size, size))
    for tokens in (16, 128):
        out[f"linear 384->1536 x{tokens}"] = (nn.Linear(384, 1536), torch.randn(tokens, 384))
    return out


def pruned(layer: nn.Module, density: float) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        keep = torch.rand(layer.weight.shape, generator=g) < density
        layer.weight.mul_(keep.float())
    return layer.eval()


def time_c(cm: npuc.CompiledModel, x: torch.Tensor, folder: Path, check: bool) -> float:
    """Median µs per run of the generated C (see the module docstring)."""
    project = cm.emit_c(folder)
    subprocess.run(["make", "-s", "-C", str(project)], check=True)
    x.numpy().astype("<f4").tofile(project / "in.bin")

    def mean(n: int) -> float:
        run = subprocess.run([str(project / "model"), str(project / "in.bin"),
                              str(project / "out.bin"), str(n)], check=True,
                             capture_output=True, text=True)
        return float(re.search(r"mean ([0-9.]+) us", run.stdout + run.stderr).group(1))

    n = max(3, int(3e5 / max(mean(3), 1.0)))
    means = [mean(n) for _ in range(5)]
    if check:
        want = np.asarray(cm.run(x.numpy()), np.float32).ravel()
        got = np.fromfile(project / "out.bin", dtype="<f4")
        if not np.array_equal(got.view(np.int32), want.view(np.int32)):
            raise AssertionError(f"{project}: C output differs from the interpreter")
    return statistics.median(means)


def measure(name: str, layer: nn.Module, x: torch.Tensor, folder: Path,
            densities: tuple[float, ...]) -> dict:
    sparse = {"quantize": {"weights": "sparse"}}
    row: dict = {"sparse": {}}
    base = pruned(layer, 1.0)
    row["dense"] = time_c(npuc.compile(base, (x,), target="npu-int8"), x, folder / "d", False)
    threshold = gemm.SPARSE_DENSITY
    try:
        for d in densities:
            gemm.SPARSE_DENSITY = 1.0
            cm = npuc.compile(pruned(type(layer)(*_args(layer)), d), (x,), target="npu-int8",
                              passes=sparse)
            row["sparse"][d] = time_c(cm, x, folder / f"s{d}", True)
            if d == 0.5:
                gemm.SPARSE_DENSITY = 0.0
                row["decode"] = time_c(cm, x, folder / "dec", True)
    finally:
        gemm.SPARSE_DENSITY = threshold
    print(name, row, flush=True)
    return row


def _args(layer: nn.Module) -> tuple:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding


def break_even(row: dict) -> float | None:
    """The density where the sparse kernel's time meets the dense kernel's (linear
    interpolation between measured densities), None if it never does in the range."""
    points = sorted(row["sparse"].items())
    for (d0, t0), (d1, t1) in zip(points, points[1:], strict=False):
        if t0 <= row["dense"] < t1:
            return d0 + (d1 - d0) * (row["dense"] - t0) / (t1 - t0)
    return None if points[0][1] > row["dense"] else points[-1][0]


def table(rows: dict[str, dict], densities: tuple[float, ...]) -> str:
    head = ("| layer | dense int8 µs | " + " | ".join(f"sparse {d:.0%}" for d in densities)
            + " | break-even density | sparse 50% on the dense path (decode) µs |")
    lines = [head, "|" + "---|" * (len(densities) + 4)]
    for name, row in rows.items():
        cells = [f"{row['sparse'][d]:.0f} ({row['dense'] / row['sparse'][d]:.2f}x)"
                 for d in densities]
        even = break_even(row)
        decode = row.get("decode")
        decode_cell = (f"{decode:.0f} (+{decode - row['dense']:.0f}, "
                       f"{decode / row['dense'] - 1:+.0%})" if decode else "-")
        lines.append(f"| {name} | {row['dense']:.0f} | " + " | ".join(cells) +
                     f" | {'-' if even is None else f'{even:.0%}'} | {decode_cell} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two layers, three densities")
    args = parser.parse_args()
    densities = (0.1, 0.3, 0.5) if args.quick else DENSITIES
    torch.manual_seed(0)
    chosen = layers()
    if args.quick:
        chosen = dict(list(chosen.items())[:2])
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, (layer, x)) in enumerate(chosen.items()):
            rows[name] = measure(name, layer, x, Path(tmp) / str(i), densities)
    text = table(rows, densities)
    print(text)
    if not args.quick:
        write_section(
            "Sparse kernel", "bench/sparse_kernel.py", text,
            "One-layer npu-int8 models, weights pruned at random to each density; µs per run "
            "of the generated C (make's defaults: gcc -O3 -march=native, one thread; median of "
            "5 means), the speedup over the dense int8 kernel in brackets. The sparse kernel "
            "reads the stored bitmap and nonzeros; the last column is the same 50%-dense "
            "`sparse` weight on the dense path, decoded every call. The generated C picks the "
            f"sparse kernel below density {gemm.SPARSE_DENSITY} (`gemm.SPARSE_DENSITY`) in "
            f"layers of at least {gemm.SPARSE_MIN_ROWS} rows (`gemm.SPARSE_MIN_ROWS`). The "
            "machine is shared (2 cores): single runs vary by up to 2x, so read trends, not "
            "single cells.")


if __name__ == "__main__":
    main()
