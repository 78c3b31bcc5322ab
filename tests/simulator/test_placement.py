"""Schedule-aware placement (HEFT), the soc target, and the cost model's sparsity, weight-decode
and gather rules."""

from __future__ import annotations

import dataclasses
import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.errors import UnsupportedError
from npuc.ir import DType, Graph, Node, const
from npuc.pipeline import PassContext
from npuc.simulator import cost as cost_model
from npuc.simulator import simulate
from npuc.simulator.cost import op_cost, sram_bytes_per_s, supports
from npuc.simulator.schedule import heft
from tests.models import ZOO
from tests.strategies import graph_and_inputs, graphs

ENGINES = ("npu", "dsp", "cpu")


def _check_schedule(graph: Graph, report) -> None:  # noqa: ANN001 - a SimReport
    """Operands finish before their readers start; each engine runs one op at a time."""
    order = [n for n in graph.nodes if not n.is_const]
    row = {order[int(r.name)]: r for r in report.rows}
    for node, r in row.items():
        for i in node.inputs:
            if i in row:
                assert r.start_s >= row[i].start_s + row[i].seconds - 1e-15
    spans: dict[str, list] = {}
    for r in report.rows:
        if r.seconds > 0:  # a view occupies no engine
            spans.setdefault(r.engine, []).append((r.start_s, r.start_s + r.seconds))
    for s in spans.values():
        s.sort()
        assert all(a[1] <= b[0] + 1e-15 for a, b in zip(s, s[1:], strict=False))


# ------------------------------------------------------------------ HEFT on its own


@st.composite
def costed_graphs(draw: st.DrawFn) -> tuple[Graph, dict]:
    """A random graph and, for each op, a cost on a nonempty subset of the engines."""
    graph = draw(graphs())
    costs = {}
    for node in graph.nodes:
        if node.is_const or node.op == "input":
            continue
        offered = draw(st.lists(st.sampled_from(ENGINES), min_size=1, max_size=3, unique=True))
        offered.sort(key=ENGINES.index)
        costs[node] = {e: draw(st.floats(0.0, 1e-3)) for e in offered}
    return graph, costs


@given(costed_graphs(), st.integers(1, 1 << 16))
def test_heft_puts_each_op_where_it_finishes_first(case: tuple, sram_bytes: int) -> None:
    graph, costs = case
    memory = SimpleNamespace(sram_bytes=sram_bytes, dram_bytes_per_s=1e9)
    slots = heft(graph, costs, memory, 1e10)
    assert set(slots) == set(costs)
    for node, slot in slots.items():
        assert slot.engine in costs[node]  # only an engine offered for it
        assert set(slot.options) == set(costs[node])
        assert slot.finish == min(o.finish for o in slot.options.values())
        assert slot.finish == pytest.approx(slot.start + costs[node][slot.engine], abs=1e-18)
        for i in node.inputs:
            if i in slots:
                assert slot.start >= slots[i].finish + slot.transfer_s - 1e-15
        moved = sum(i.type.nbytes for i in set(node.inputs)  # a value read twice moves once
                    if i in slots and slots[i].engine != slot.engine)
        assert slot.transfer_bytes == moved
    by_engine: dict[str, list] = {}
    for node, slot in slots.items():
        if any(costs[node].values()):  # an op free everywhere (a view) occupies no engine
            by_engine.setdefault(slot.engine, []).append((slot.start, slot.finish))
    for spans in by_engine.values():
        spans.sort()
        assert all(a[1] <= b[0] + 1e-15 for a, b in zip(spans, spans[1:], strict=False))


# ------------------------------------------------------------------ placement on real graphs

TARGET_VARIANTS = {
    "as is": lambda t: t,
    "no dsp": lambda t: dataclasses.replace(t, dsp=None),
    "no int16 on the npu": lambda t: dataclasses.replace(
        t, npu=dataclasses.replace(t.npu, int16_rate=0.0)),
    "flags flipped": lambda t: dataclasses.replace(
        t, npu=dataclasses.replace(t.npu, sparsity="none" if t.npu.sparsity == "ideal" else "ideal",
                                   palette_decode=not t.npu.palette_decode)),
}


@given(graph_and_inputs(), st.sampled_from(["soc", "npu-int8", "npu-w4a8"]),
       st.sampled_from(sorted(TARGET_VARIANTS)))
def test_every_op_runs_on_an_engine_that_supports_it(case: tuple, name: str,
                                                     variant: str) -> None:
    graph, inputs = case
    try:
        folded = npuc.passes.apply(graph, "fold_batchnorm")
        lowered = npuc.passes.apply(folded, "quantize", ctx=PassContext(calibration=[inputs]),
                                    int16=["softmax", "log_softmax", "layer_norm", "group_norm",
                                           "output"])
    except UnsupportedError:
        event("the quantize pass does not lower it")
        return
    target = TARGET_VARIANTS[variant](npuc.targets.get(name))
    report = simulate(lowered, target)
    order = [n for n in lowered.nodes if not n.is_const]
    for r in report.rows:
        assert supports(r.engine, order[int(r.name)], target) is None
    _check_schedule(lowered, report)


class TwoBranches(nn.Module):
    """Two equal, independent linear branches joined by a concat and a small head."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(128, 128), nn.Linear(128, 128), nn.Linear(256, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], -1))


@pytest.fixture(scope="module")
def two_branches():  # noqa: ANN201 - a CompiledModel
    torch.manual_seed(0)
    return npuc.compile(TwoBranches().eval(), (torch.randn(64, 128),), target="soc")


def test_independent_branches_run_on_npu_and_dsp_at_once(two_branches) -> None:  # noqa: ANN001
    report = two_branches.simulate()
    branches = [r for r in report.rows if r.op == "qlinear" and r.note.split(" ")[0] in {"a", "b"}]
    assert {r.engine for r in branches} == {"npu", "dsp"}
    (s1, e1), (s2, e2) = ((r.start_s, r.start_s + r.seconds) for r in branches)
    assert s1 < e2 and s2 < e1  # they overlap in time
    assert report.latency_s < sum(r.seconds for r in report.rows)
    on_dsp = next(r for r in branches if r.engine == "dsp")
    assert re.search(r"\(npu busy: finishes [\d.]+ [un]s earlier on dsp\)", on_dsp.note)
    _check_schedule(two_branches.ir, report)


def test_one_engine_runs_the_branches_one_after_the_other(two_branches) -> None:  # noqa: ANN001
    """Without a DSP (nor a CPU fast enough) the branches serialise, and take longer."""
    soc = npuc.targets.get("soc")
    alone = simulate(two_branches.ir, dataclasses.replace(soc, dsp=None))
    branches = [r for r in alone.rows if r.op == "qlinear" and r.note.split(" ")[0] in {"a", "b"}]
    assert {r.engine for r in branches} == {"npu"}
    assert alone.latency_s > two_branches.simulate().latency_s


# ------------------------------------------------------------------ zero skipping


@pytest.fixture(scope="module")
def linear():  # noqa: ANN201 - the qlinear node of a compiled Linear(96, 64) on npu-int8
    torch.manual_seed(3)
    cm = npuc.compile(nn.Linear(96, 64).eval(), (torch.randn(32, 96),), target="npu-int8")
    return next(n for n in cm.ir.nodes if n.op == "qlinear")


def _with_weight(node: Node, values: np.ndarray) -> Node:
    """`node` reading a fresh int8 weight constant holding `values`."""
    w = node.inputs[1]
    return node.with_inputs((node.inputs[0], const(values, DType.I8, w.loc, w.type.quant),
                             *node.inputs[2:]))


def _npu(target, **flags) -> npuc.targets.Target:  # noqa: ANN001, ANN003
    return dataclasses.replace(target, npu=dataclasses.replace(target.npu, **flags))


@given(st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_ideal_sparsity_scales_compute_with_weight_density(linear, zeroed: float,  # noqa: ANN001
                                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.integers(1, 128, linear.inputs[1].shape) * rng.choice([-1, 1],
                                                                       linear.inputs[1].shape)
    values[rng.random(values.shape) < zeroed] = 0
    node = _with_weight(linear, values.astype(np.int8))
    base = npuc.targets.get("npu-int8")
    dense, skipping = op_cost("npu", node, _npu(base, sparsity="none")), \
        op_cost("npu", node, _npu(base, sparsity="ideal"))
    density = np.count_nonzero(values) / values.size
    assert dense.macs == skipping.macs == op_cost("npu", linear, base).macs
    # without zero skipping the zeros change nothing
    assert dense.compute_cycles == op_cost("npu", linear, base).compute_cycles
    share = min(density, cost_model.sparsity_fractions(node, base.npu, "block")[0])
    assert skipping.compute_cycles == math.ceil(dense.compute_cycles * share)
    assert dense.dram_bytes == skipping.dram_bytes  # weights stream as stored (int8 here)
    assert skipping.energy_j <= dense.energy_j
    assert cost_model._DENSITY[node.inputs[1]] == density  # cached per constant


def test_half_zero_weights_halve_the_compute_cycles(linear) -> None:  # noqa: ANN001
    values = np.array(linear.inputs[1].data, dtype=np.int8)
    values = np.where(values == 0, 1, values).astype(np.int8)
    values[:, ::2] = 0
    node = _with_weight(linear, values)
    base = npuc.targets.get("npu-int8")
    on = op_cost("npu", node, _npu(base, sparsity="ideal"))
    off = op_cost("npu", node, _npu(base, sparsity="none"))
    assert on.compute_cycles == pytest.approx(off.compute_cycles / 2, rel=0.01)
    assert off.compute_cycles == op_cost("npu", linear, base).compute_cycles
    assert on.macs == off.macs == 96 * 64 * 32
    assert on.dram_bytes == off.dram_bytes  # stored int8: fewer bytes need a sparse encoding


# ------------------------------------------------------------------ encoded weights


@pytest.fixture(scope="module")
def encoded():  # noqa: ANN201 - weight format -> the qlinear node of a Linear(96, 64)
    torch.manual_seed(4)
    model, x = nn.Linear(96, 64).eval(), torch.randn(32, 96)
    return {fmt: next(n for n in npuc.compile(model, (x,), target="npu-int8",
                                              passes={"quantize": {"weights": fmt}}).ir.nodes
                      if n.op == "qlinear")
            for fmt in ("palette4", "int4", "ternary", "sparse")}


@pytest.mark.parametrize("fmt", ["palette4", "ternary"])
def test_palette_decode_costs_a_dsp_pass_only_without_a_decoder(encoded, fmt: str) -> None:  # noqa: ANN001
    node = encoded[fmt]
    assert node.inputs[1].attrs["encoding"].startswith(fmt)
    base = npuc.targets.get("npu-int8")
    free = op_cost("npu", node, _npu(base, palette_decode=True))
    paid = op_cost("npu", node, _npu(base, palette_decode=False))
    n = node.inputs[1].type.size
    decode_s = math.ceil(n / base.dsp.lanes) / base.dsp.clock_hz + 2 * n / sram_bytes_per_s(base)
    assert paid.seconds - free.seconds == pytest.approx(decode_s, rel=1e-9)
    assert paid.sram_bytes - free.sram_bytes == 2 * n  # int8 weights written and read back
    assert paid.dram_bytes == free.dram_bytes  # the compressed bytes stream either way
    assert paid.compute_cycles == free.compute_cycles and paid.energy_j > free.energy_j
    stored = node.inputs[1].attrs["data"].nbytes
    assert stored < n  # packed codes and LUT, not int8
    weights = sum(i.attrs["data"].nbytes for i in node.inputs if i.is_const)
    assert free.dram_bytes == weights


def test_without_a_dsp_the_cpu_decodes(encoded) -> None:  # noqa: ANN001
    node = encoded["palette4"]
    base = _npu(npuc.targets.get("npu-int8"), palette_decode=False)
    n = node.inputs[1].type.size
    no_dsp = dataclasses.replace(base, dsp=None)
    decoder = op_cost("npu", node, no_dsp).seconds - op_cost(
        "npu", node, _npu(no_dsp, palette_decode=True)).seconds
    assert decoder == pytest.approx(math.ceil(n / base.cpu.ops_per_cycle) / base.cpu.clock_hz
                                    + 2 * n / sram_bytes_per_s(base), rel=1e-9)
    bare = dataclasses.replace(no_dsp, cpu=None)
    assert "decode" in supports("npu", node, bare)
    assert supports("npu", node, _npu(bare, palette_decode=True)) is None


def test_sub_byte_weights_are_unpacked_for_an_int8_array(encoded) -> None:  # noqa: ANN001
    node = encoded["int4"]
    n = node.inputs[1].type.size
    int8 = npuc.targets.get("npu-int8")
    w4 = npuc.targets.get("npu-w4a8")
    assert (op_cost("npu", node, int8).sram_bytes
            == op_cost("npu", node, w4).sram_bytes + 2 * n)  # unpacked int8 out and back
    # the w4 array reads int4 natively: nothing to decode, the flag does not matter
    assert (op_cost("npu", node, w4).seconds
            == op_cost("npu", node, _npu(w4, palette_decode=True)).seconds)


def test_sparse_weights_stream_compressed_and_decode_unless_ideal(
        encoded) -> None:  # noqa: ANN001
    node = encoded["sparse"]
    stored = node.inputs[1].attrs["data"].nbytes
    n = node.inputs[1].type.size
    assert stored == -(-n // 8) + np.count_nonzero(node.inputs[1].data)
    base = npuc.targets.get("npu-int8")
    reads = op_cost("npu", node, _npu(base, sparsity="ideal"))
    decodes = op_cost("npu", node, _npu(base, sparsity="gating"))
    assert decodes.sram_bytes - reads.sram_bytes == 2 * n  # decoded int8 out and back
    assert decodes.seconds > reads.seconds
    others = sum(i.attrs["data"].nbytes for i in node.inputs[2:] if i.is_const)
    assert decodes.dram_bytes == stored + others  # the compressed bytes stream either way


# ------------------------------------------------------------------ gather


@pytest.mark.parametrize("target", ["npu-int8", "soc"])
def test_gather_reads_the_rows_it_fetches_not_the_table(target: str) -> None:
    model, inputs = ZOO["embedding_mlp"]()
    cm = npuc.compile(model, inputs, target=target)
    order = [n for n in cm.ir.nodes if not n.is_const]
    rows = [(order[int(r.name)], r) for r in cm.simulate().rows if r.op == "gather"]
    assert rows
    for node, row in rows:
        table = node.inputs[0]
        assert table.is_const and row.dram_bytes == node.type.nbytes < table.type.nbytes


# ------------------------------------------------------------------ the soc target


def test_soc_is_a_built_in_npu_dsp_cpu_target() -> None:
    assert "soc" in npuc.targets.names()
    soc, ref = npuc.targets.get("soc"), npuc.targets.get("npu-int8")
    assert soc.npu and soc.dsp and soc.cpu and soc.memory and soc.energy
    assert soc.pipeline == ref.pipeline and soc.quantize == ref.quantize
    assert soc.npu.rows * soc.npu.cols < ref.npu.rows * ref.npu.cols
    assert soc.npu.sparsity == "ideal"


@pytest.mark.parametrize("name", npuc.targets.names())
def test_every_figure_cites_a_source(name: str) -> None:
    """Each hardware value of a built-in target has a comment on its line, or opens (with the
    values right above it) right under a comment block."""
    lines = npuc.targets.get(name).path.read_text().splitlines()
    section = None
    for k, line in enumerate(lines):
        if line.startswith("["):
            section = line.strip("[]")
        elif "=" in line and section not in (None, "compile", "quantize") and "#" not in line:
            j = k - 1
            while "=" in lines[j] and not lines[j].startswith("#"):
                j -= 1
            assert lines[j].startswith("#"), f"uncited: {line}"


@pytest.mark.parametrize("name", ["mobilenetv2_block", "unet_small", "resnet_basic"])
def test_soc_uses_several_engines(name: str) -> None:
    """Real work (not views) on several engines, and where the graph branches (a shortcut, skip
    connections) on the NPU and the DSP at the same time."""
    model, inputs = ZOO[name]()
    report = npuc.compile(model, inputs, target="soc").simulate()
    assert report.by_engine()["npu"][1] > 0  # the NPU does real MACs
    busy = [r for r in report.rows if r.seconds > 0]
    assert len({r.engine for r in busy}) >= 2
    overlap = any(a.engine != b.engine and a.start_s < b.start_s + b.seconds
                  and b.start_s < a.start_s + a.seconds for a in busy for b in busy)
    assert overlap == (name != "mobilenetv2_block")  # that block is a chain
