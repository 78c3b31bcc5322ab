"""The NPU's sparsity modes (`npu.sparsity`): none, gating, nm, block and ideal, per GEMM and in
the report's side-by-side totals; a target with an unknown mode is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.ir import Node, QuantParams
from npuc.quant.constants import encoded_const
from npuc.quant.weights import quantize_weight
from npuc.simulator.cost import op_cost, sparsity_fractions
from npuc.targets import SPARSITY_MODES, TargetError
from tests.sparsity import nm_prune

K, N, BATCH = 256, 128, 256  # a Linear(256, 128) on 256 rows: 8 x 4 weight tiles of 32 x 32


@pytest.fixture(scope="module")
def linear() -> Node:
    torch.manual_seed(3)
    cm = npuc.compile(nn.Linear(K, N).eval(), (torch.randn(BATCH, K),), target="npu-int8")
    return next(n for n in cm.ir.nodes if n.op == "qlinear")


def stored(node: Node, w: np.ndarray, fmt: str) -> Node:
    """`node` reading `w` (float, (N, K)) quantized and stored as `fmt`."""
    encoded = quantize_weight(w, fmt)
    quant = QuantParams(tuple(map(float, encoded.scale)), (0,) * N, 0)
    return node.with_inputs((node.inputs[0], encoded_const(encoded, quant, "w"),
                             *node.inputs[2:]))


def costs(node: Node, target: str = "npu-int8") -> dict:
    base = npuc.targets.get(target)
    return {mode: op_cost("npu", node, dataclasses.replace(
        base, npu=dataclasses.replace(base.npu, sparsity=mode))) for mode in SPARSITY_MODES}


def weights(seed: int, pattern: str, level: float) -> tuple[np.ndarray, str]:
    """A float (N, K) weight with zeros of `pattern` and the format that stores it."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(N, K))
    if pattern == "nm":
        return nm_prune(w, 2, 4), "nm2:4"
    if pattern == "block":  # whole 32 x 32 tiles of the K x N matrix (rows of K, columns of N)
        keep = rng.random((K // 32, N // 32)) >= level
        return w * np.kron(keep, np.ones((32, 32))).T, "int8"
    return np.where(rng.random(w.shape) >= level, w, 0.0), "sparse"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["nm", "block", "scattered"]),
       st.floats(0.0, 0.95))
def test_cycles_and_energy_are_monotone_in_the_mode(linear: Node, seed: int, pattern: str,
                                                    level: float) -> None:
    """ideal <= nm, block <= gating == none in compute cycles; gating pays less MAC energy than
    none whenever a weight is zero; every mode counts the dense MACs."""
    w, fmt = weights(seed, pattern, level)
    node = stored(linear, w, fmt)
    c = {mode: cost.compute_cycles for mode, cost in costs(node).items()}
    assert c["ideal"] <= min(c["nm"], c["block"])
    assert max(c["nm"], c["block"]) <= c["gating"] == c["none"]
    fractions = {mode: sparsity_fractions(node, npuc.targets.get("npu-int8").npu, mode)
                 for mode in SPARSITY_MODES}
    assert fractions["gating"][1] == pytest.approx(np.count_nonzero(node.inputs[1].data) / w.size)
    if np.count_nonzero(node.inputs[1].data) < w.size:
        assert fractions["gating"][1] < fractions["none"][1] == 1.0
    assert len({cost.macs for cost in costs(node).values()}) == 1


def test_each_mode_rewards_its_own_pattern(linear: Node) -> None:
    """2:4 stored nm halves the cycles in the nm and ideal modes only; half the tiles zero
    halves them in the block and ideal modes; scattered zeros only ideal compaction skips."""
    dense = costs(stored(linear, np.random.default_rng(0).normal(size=(N, K)), "int8"))
    base = dense["none"].compute_cycles

    def share(pattern: str, level: float = 0.5) -> dict[str, float]:
        node = stored(linear, *weights(1, pattern, level))
        return {m: round(c.compute_cycles / base, 2) for m, c in costs(node).items()}

    nm = share("nm")
    assert nm == {"none": 1.0, "gating": 1.0, "nm": 0.5, "block": 1.0, "ideal": 0.5}
    block = share("block")
    tiles = block["block"]
    assert 0.2 < tiles < 0.8 and block["ideal"] == tiles
    assert block["none"] == block["gating"] == block["nm"] == 1.0
    scattered = share("scattered", 0.75)
    assert scattered["ideal"] == pytest.approx(0.25, abs=0.02)
    assert scattered["block"] == scattered["nm"] == scattered["gating"] == 1.0


def test_weights_stream_as_stored_with_their_index_overhead(linear: Node) -> None:
    """DRAM bytes of the weight: the stored payload, bitmap or positions included, whatever the
    mode; nm and sparse weights the array does not read natively are decoded first (SRAM)."""
    w = nm_prune(np.random.default_rng(2).normal(size=(N, K)), 2, 4)
    dense = costs(stored(linear, w, "int8"))["none"].dram_bytes
    for fmt in ("nm2:4", "sparse"):
        node = stored(linear, w, fmt)
        assert node.inputs[1].stored_nbytes == pytest.approx(0.625 * w.size, abs=2)
        by_mode = costs(node)
        assert {c.dram_bytes - dense for c in by_mode.values()} == {
            node.inputs[1].stored_nbytes - w.size}
        native = {"nm2:4": ("nm", "ideal"), "sparse": ("ideal",)}[fmt]
        for mode, cost in by_mode.items():
            decoded = cost.sram_bytes - by_mode[native[-1]].sram_bytes
            assert decoded == (0 if mode in native else 2 * w.size), (fmt, mode)


def test_the_report_shows_every_mode_side_by_side() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(K, K), nn.ReLU(), nn.Linear(K, N)).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.copy_(torch.tensor(nm_prune(layer.weight.numpy(), 2, 4)))
    x = torch.randn(BATCH, K)
    cm = npuc.compile(model, (x,), target="npu-w4a8", passes={"quantize": {"weights": "nm2:4"}})
    report = cm.simulate()
    assert report.sparsity == "nm" and list(report.by_sparsity) == list(SPARSITY_MODES)
    t = report.by_sparsity
    assert t["nm"].cycles == report.total_cycles and t["nm"].energy_j == report.energy_j
    assert t["ideal"].cycles <= t["nm"].cycles < t["gating"].cycles == t["none"].cycles
    assert t["gating"].energy_j < t["none"].energy_j
    text = str(report)
    assert "nm *" in text and all(f"\n{m}" in text for m in SPARSITY_MODES if m != "nm")
    assert '"by_sparsity"' in report.to_json()
    again = cm.simulate(sparsity="gating")
    assert again.sparsity == "gating" and again.total_cycles == t["gating"].cycles
    with pytest.raises(ValueError, match="sparsity 'skip'"):
        cm.simulate(sparsity="skip")
    assert npuc.simulator.simulate(cm.ir, "npu-int8", compare=False).by_sparsity == {}


def test_a_target_with_a_bad_mode_is_refused(tmp_path: Path) -> None:
    text = npuc.targets.get("npu-int8").path.read_text()
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('sparsity = "gating"', 'sparsity = "skip"'))
    with pytest.raises(TargetError, match=r"'npu.sparsity' must be one of .*'gating'.*got 'skip'"):
        npuc.targets.load(bad)
    old = tmp_path / "old.toml"
    old.write_text(text.replace('sparsity = "gating"', "zero_skipping = true"))
    with pytest.raises(TargetError, match="replaced by 'npu.sparsity'.*'ideal'"):
        npuc.targets.load(old)


def test_built_in_targets_state_their_mode() -> None:
    modes = {name: npuc.targets.get(name).npu.sparsity for name in npuc.targets.names()
             if npuc.targets.get(name).npu is not None}
    assert modes == {"npu-int8": "gating", "npu-w4a8": "nm", "soc": "ideal"}
