"""The int16 rule of the cost model (`cost.int16_mode`): a GEMM computes at the width of the
operands its MACs multiply, never at its result's width. An int16 result (a graph output, the
residual stream) costs bytes, not MAC rate: a one-layer int8 conv or linear on npu-int8 reports
exactly SCALE-Sim's compute cycles whatever its output dtype."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import npuc
from npuc.ir import DType
from npuc.simulator import simulate
from npuc.simulator.cost import op_cost, supports

SCALESIM = Path(__file__).resolve().parents[2] / "bench" / "scalesim"


def _scalesim(network: str, layer: str) -> dict[str, int]:
    """SCALE-Sim 3.0.0's cached compute cycles of one layer, per array configuration
    (bench/scalesim/<dataflow>_<R>x<C>.csv, made by bench/scalesim_ref.py)."""
    cycles = {}
    for path in sorted(SCALESIM.glob("*.csv")):
        for row in csv.DictReader(path.open()):
            if (row["network"], row["name"]) == (network, layer):
                cycles[path.stem] = int(row["compute_cycles"])
    assert len(cycles) == 4, cycles
    return cycles


def _on_array(target: str, config: str):  # noqa: ANN202 - a Target
    flow, shape = config.split("_")
    rows, cols = map(int, shape.split("x"))
    t = npuc.targets.get(target)
    return dataclasses.replace(t, npu=dataclasses.replace(t.npu, rows=rows, cols=cols,
                                                          dataflow=flow))


def _compile(model: nn.Module, shape: tuple[int, ...], **options):  # noqa: ANN003, ANN202
    torch.manual_seed(0)
    x = torch.randn(*shape)
    passes = {"quantize": options} if options else None
    return npuc.compile(model.eval(), (x,), target="npu-int8", passes=passes)


def _gemm(cm):  # noqa: ANN001, ANN202 - the only GEMM node of a one-layer model
    (node,) = [n for n in cm.ir.nodes if n.op in ("qconv", "qlinear")]
    return node


def _npu_cycles(cm, target) -> int:  # noqa: ANN001
    """Compute cycles of the model's GEMM, which must run on the NPU."""
    (row,) = [r for r in simulate(cm.ir, target).rows if r.op in ("qconv", "qlinear")]
    assert row.engine == "npu", row
    return row.compute_cycles


@pytest.fixture(scope="module")
def conv_256_64():  # noqa: ANN201 - the layer of issue 12, item 2
    torch.manual_seed(0)
    return _compile(nn.Conv2d(256, 64, 1), (1, 256, 56, 56))


def test_issue_layer_reports_scalesim_cycles(conv_256_64) -> None:  # noqa: ANN001
    """nn.Conv2d(256, 64, 1) on 56x56, int8 operands, an int16 result (npu-int8 makes graph
    outputs int16): SCALE-Sim's 51,679 cycles on the 32x32 ws array (M 3136, K 256, N 64:
    8 x 2 folds of 2*32 + 32 + 3136 - 2 cycles, minus 1), not twice that."""
    node = _gemm(conv_256_64)
    assert node.dtype == DType.I16
    assert [i.dtype for i in node.inputs[:2]] == [DType.I8, DType.I8]
    assert _npu_cycles(conv_256_64, npuc.targets.get("npu-int8")) == 51_679


LAYERS = {  # a cached SCALE-Sim layer -> (the same layer in torch, its input shape)
    ("resnet18", "layer1.0.conv1"): (lambda: nn.Conv2d(64, 64, 3, padding=1), (1, 64, 56, 56)),
    ("resnet18", "layer4.0.downsample"): (lambda: nn.Conv2d(256, 512, 1, stride=2),
                                          (1, 256, 14, 14)),
    ("bert_base", "attn.query"): (lambda: nn.Linear(768, 768), (128, 768)),
    ("bert_base", "ffn.output"): (lambda: nn.Linear(3072, 768), (128, 3072)),
}


@pytest.mark.parametrize("layer", sorted(LAYERS), ids="/".join)
def test_int16_output_layers_match_scalesim_on_every_array(layer: tuple[str, str]) -> None:
    """A conv or linear whose result is int16 takes SCALE-Sim's compute cycles for its int8
    GEMM on every cached array and dataflow (32x32 ws/os/is, 128x128 ws)."""
    build, shape = LAYERS[layer]
    cm = _compile(build(), shape)
    assert _gemm(cm).dtype == DType.I16
    for config, want in _scalesim(*layer).items():
        assert _npu_cycles(cm, _on_array("npu-int8", config)) == want, config


def test_no_int16_mode_still_runs_int8_operands_on_the_npu(conv_256_64) -> None:  # noqa: ANN001
    """With int16_rate = 0 an int16 *result* is no reason to leave the array."""
    t = npuc.targets.get("npu-int8")
    no16 = dataclasses.replace(t, npu=dataclasses.replace(t.npu, int16_rate=0.0))
    node = _gemm(conv_256_64)
    assert supports("npu", node, no16) is None
    assert _npu_cycles(conv_256_64, no16) == 51_679


def test_int16_operands_run_at_int16_rate() -> None:
    """The other side of the rule: with activations="int16" (a 16x8 GEMM) the array multiplies
    int16 and runs at `int16_rate`, or refuses it without an int16 mode."""
    cm = _compile(nn.Conv2d(256, 64, 1), (1, 256, 56, 56), activations="int16")
    node = _gemm(cm)
    assert node.inputs[0].dtype == DType.I16
    t = npuc.targets.get("npu-int8")
    assert _npu_cycles(cm, t) == math.ceil(51_679 / t.npu.int16_rate)
    no16 = dataclasses.replace(t, npu=dataclasses.replace(t.npu, int16_rate=0.0))
    assert supports("npu", node, no16) == "int16 activations: the array has no int16 mode"


def test_dsp_lanes_and_mac_energy_follow_the_operands(conv_256_64) -> None:  # noqa: ANN001
    """On the DSP an int8 x int8 GEMM with an int16 result uses all lanes and int8 MAC energy;
    int16 operands halve the lanes and cost int16 MACs."""
    t = npuc.targets.get("npu-int8")
    narrow = op_cost("dsp", _gemm(conv_256_64), t)
    assert narrow.compute_cycles == math.ceil(narrow.macs / t.dsp.lanes)
    wide_cm = _compile(nn.Conv2d(256, 64, 1), (1, 256, 56, 56), activations="int16")
    wide = op_cost("dsp", _gemm(wide_cm), t)
    assert wide.compute_cycles == math.ceil(wide.macs / (t.dsp.lanes // 2))
    e = t.energy
    memory = (narrow.sram_bytes * e.sram_byte_pj + narrow.dram_bytes * e.dram_byte_pj) * 1e-12
    assert narrow.energy_j == pytest.approx(narrow.macs * e.mac_i8_pj * 1e-12 + memory)
    memory = (wide.sram_bytes * e.sram_byte_pj + wide.dram_bytes * e.dram_byte_pj) * 1e-12
    assert wide.energy_j == pytest.approx(wide.macs * e.mac_i16_pj * 1e-12 + memory)
