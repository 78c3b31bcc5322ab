"""Generated C of elementwise ops and data movement, built with gcc and compared bit for bit with
the interpreter; emit-time errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import npuc
import npuc.codegen
from npuc.errors import UnsupportedError
from tests.codegen.harness import SANITIZE, assert_bit_exact


class Movement(nn.Module):
    """permute, flip, concat, slice, pad, pixel_shuffle, expand and a sigmoid gate."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.sigmoid(x) * x + x
        z = torch.cat([y.permute(0, 1, 3, 2), y.flip(2).permute(0, 1, 3, 2)], 1)[:, 1:7]
        z = F.pad(z, (1, 2, 0, 1))
        z = F.pixel_shuffle(z[:, :4], 2)
        return z + z[:, :, :1].expand(-1, -1, z.shape[2], -1)


class Broadcast(nn.Module):
    """Binary ops broadcasting two inputs, PReLU per channel, clamps, tanh, hardswish."""

    def __init__(self) -> None:
        super().__init__()
        self.prelu = nn.PReLU(3)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        a = self.prelu(x) - y
        b = torch.tanh(x * y) + F.hardswish(a)
        return torch.maximum(F.relu6(b), torch.minimum(a, y)).clamp(-1.0, 3.0)


class Masked(nn.Module):
    """A where on a comparison of the inputs (a runtime mask) and a masked fill."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x > 0.25
        return torch.where(keep, x * 2, x.abs()) + x.masked_fill(torch.logical_not(keep), 0.0)


CASES = {
    "movement": (Movement, lambda: (torch.randn(2, 3, 5, 6),)),
    "broadcast": (Broadcast, lambda: (torch.randn(2, 3, 4, 5), torch.randn(1, 3, 1, 5))),
    "masked": (Masked, lambda: (torch.randn(3, 17),)),
}


def compiled(name: str, target: str) -> tuple[npuc.CompiledModel, list[np.ndarray]]:
    factory, inputs = CASES[name]
    torch.manual_seed(0)
    model, calib = factory().eval(), inputs()
    cm = npuc.compile(model, calib, target=target)
    fresh = [x.numpy() * 1.5 for x in inputs()]  # beyond the calibrated range: saturation paths
    return cm, fresh


@pytest.mark.parametrize("target", ["npu-int8", "dsp-int16"])
@pytest.mark.parametrize("name", list(CASES))
def test_bit_exact(name: str, target: str, tmp_path: Path) -> None:
    cm, inputs = compiled(name, target)
    assert_bit_exact(cm, inputs, tmp_path)


def test_sanitizers_are_clean(tmp_path: Path) -> None:
    cm, inputs = compiled("movement", "dsp-int16")
    assert_bit_exact(cm, inputs, tmp_path, cflags=SANITIZE)


def test_project_layout_and_banner(tmp_path: Path) -> None:
    cm, _ = compiled("broadcast", "npu-int8")
    out = cm.emit_c(tmp_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "Makefile", "main.c", "model.c", "model.h", "npuc_runtime.h", "weights.c", "weights.h"]
    model_c = (out / "model.c").read_text()
    assert "target: npu-int8; pipeline: fold_constants" in model_c.splitlines()[0]
    assert "malloc" not in model_c
    view = npuc.codegen.build_view(cm.ir)
    body = [layer for layer in view.layers if layer.stage == "body"]
    assert body and not any("float" in layer.body for layer in body)  # integer-only inside
    assert {layer.op for layer in view.layers if layer.stage != "body"} == {"quantize",
                                                                              "dequantize"}


def test_float_graph_is_refused_at_emit_time(tmp_path: Path) -> None:
    factory, inputs = CASES["masked"]
    cm = npuc.compile(factory().eval(), inputs(), target="cpu-fp32")
    with pytest.raises(UnsupportedError, match=r"\[emit-c\] float .* integer-only graphs"):
        cm.emit_c(tmp_path)


def test_op_without_kernel_is_named_at_emit_time(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from npuc.codegen import kernels

    monkeypatch.delitem(kernels.KERNELS, "permute")
    cm, _ = compiled("movement", "npu-int8")
    with pytest.raises(UnsupportedError, match=r"no C kernel for permute(.|\n)*op: +permute"):
        cm.emit_c(tmp_path)


INT_MAIN = r"""
#include <stdio.h>
#include "model.h"
/* reads the quantized inputs and writes the raw integer outputs (npuc_run_int) */
int main(void) {
    static {{IN}} in[{{N_IN}}];
    static {{OUT}} out[{{N_OUT}}];
    const void *inputs[1] = {in};
    void *outputs[1] = {out};
    if (fread(in, sizeof in[0], {{N_IN}}, stdin) != {{N_IN}}) return 1;
    npuc_run_int(inputs, outputs);
    fwrite(out, sizeof out[0], {{N_OUT}}, stdout);
    return 0;
}
"""


def test_integer_api_matches_raw_outputs(tmp_path: Path) -> None:
    """npuc_run_int: quantized inputs in, the integer outputs before the final dequantize out,
    equal to cm.run(..., raw=True)."""
    import subprocess

    from npuc.quant import arith
    from tests.codegen.harness import build

    cm, (x,) = compiled("masked", "dsp-int16")
    quantize = next(n for n in cm.ir.nodes if n.op == "quantize")
    scale, zp = quantize.type.quant.scale[0], quantize.type.quant.zero_point[0]
    xq = arith.quantize(x, scale, zp, quantize.dtype)
    raw = cm.run(x, raw=True)
    project = cm.emit_c(tmp_path)
    build(project)  # the float harness builds too
    source = INT_MAIN.replace("{{IN}}", "int16_t").replace("{{N_IN}}", str(xq.size))
    source = source.replace("{{OUT}}", "int16_t").replace("{{N_OUT}}", str(raw.size))
    (project / "int_main.c").write_text(source)
    subprocess.run(["gcc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-o",
                    str(project / "int_model"), str(project / "int_main.c"),
                    str(project / "model.c"), str(project / "weights.c"), "-lm"], check=True)
    out = subprocess.run([str(project / "int_model")], input=xq.astype("<i2").tobytes(),
                         capture_output=True, check=True).stdout
    assert raw.dtype == np.int16
    assert np.array_equal(np.frombuffer(out, dtype="<i2"), raw.ravel())
