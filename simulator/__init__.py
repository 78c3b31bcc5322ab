"""npuc.simulator: what a lowered graph costs on a target, per layer and in total.

    report = npuc.simulator.simulate(cm.ir, target)     # or cm.simulate()
    print(report)            # per-layer table and totals
    report.to_json()

Placement is schedule-aware (HEFT, `schedule.py`): ops are taken by upward rank and each goes to
the engine, among those that support it (`cost.supports` says why an engine cannot), where it
finishes earliest given when the engines are free and what its operands cost to move there (a
round trip through the shared SRAM), so independent branches run concurrently on the NPU and the
DSP. A row's note says why an op is not on the NPU: the engines' reasons, or "npu busy: finishes
12.3 us earlier on dsp" (or "slower", or "waits for operands"). `cost.py` prices each op on each
engine (sparsity and weight decoding included); the memory plan packs activations into one arena
over the schedule's order.

A graph with state (`Graph.state`) is simulated one call at a time: `step=` picks the call, and
only what that call computes is costed (`npuc.state.Activity`: a step that reuses a cached
attention map skips the work that would have recomputed it). State lives in DRAM between
calls (`SimReport.state_bytes`, beside the arena): a call pays a DRAM read for each cached
value it reads (the `state` rows) and a DRAM write for each state it changes (added to the
row of the value it keeps). `simulate_calls` costs a whole sequence of steps.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from npuc.ir import Graph, Node
from npuc.state import Activity, unchanged_state

from .cost import (
    OpCost,
    engines,
    is_view,
    op_cost,
    sparsity_signature,
    sram_bytes_per_s,
    supports,
)
from .memory import MemoryPlan, plan_memory
from .schedule import Slot, heft


@dataclass(frozen=True)
class Row:
    name: str
    op: str
    engine: str
    macs: int
    compute_cycles: int
    cycles: int  # at the engine's clock, memory included
    utilization: float
    dram_bytes: int
    sram_bytes: int
    energy_j: float
    bound: str
    seconds: float
    start_s: float  # when the list schedule starts it
    note: str  # why faster engines were not used
    tile: str = ""  # "tile MtxKtxNt": the GEMM's blocks when its activations did not fit in SRAM


@dataclass(frozen=True)
class ModeTotals:
    """The totals of one simulation under one sparsity mode."""

    cycles: int
    latency_s: float
    energy_j: float


@dataclass(frozen=True)
class SimReport:
    target: str
    rows: tuple[Row, ...]
    total_cycles: int  # at the NPU's clock (else the first engine's)
    latency_s: float
    energy_j: float
    arena_bytes: int
    arena_lower_bound: int
    weight_bytes: int
    peak_macs_per_s: dict[str, float]  # each engine's MACs per second at full rate (roofline)
    dram_bytes_per_s: float
    transfer_bytes: int  # moved between engines through the shared SRAM
    sparsity: str = ""  # the NPU's sparsity mode simulated ("" without an NPU)
    # every sparsity mode's totals on the same graph and target (placement redone per mode),
    # so a user sees which pattern of zeros this NPU rewards
    by_sparsity: dict[str, ModeTotals] = field(default_factory=dict)
    state_bytes: int = 0  # kept in DRAM between calls (Graph.state), not in the arena
    state_dram_bytes: int = 0  # of dram_bytes: this call's state reads and writes
    step: int | None = None  # the call simulated, for a graph whose work depends on it

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def plot(self, path: str) -> None:
        """Write a figure to `path`: per-layer latency and energy bars coloured by engine, and a
        roofline (achieved MAC/s against MACs per DRAM byte, under the target's compute and
        DRAM-bandwidth roofs)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = {"npu": "tab:blue", "dsp": "tab:orange", "cpu": "tab:red", "dma": "tab:grey"}
        rows = self.rows
        fig, (lat, en, roof) = plt.subplots(3, 1, figsize=(max(8, len(rows) * 0.18), 11))
        x = range(len(rows))
        colour = [colours[r.engine] for r in rows]
        lat.bar(x, [r.seconds * 1e6 for r in rows], color=colour)
        lat.set_ylabel("latency (us)")
        lat.set_title(f"{self.target}: {self.latency_s * 1e3:.3f} ms, "
                      f"{self.energy_j * 1e6:.1f} uJ per inference")
        en.bar(x, [r.energy_j * 1e6 for r in rows], color=colour)
        en.set_ylabel("energy (uJ)")
        for axis in (lat, en):
            axis.set_xticks(list(x), [f"{r.name} {r.op}" for r in rows], rotation=90,
                            fontsize=6)
        from matplotlib.patches import Patch

        lat.legend(handles=[Patch(color=c, label=e) for e, c in colours.items()])
        gemm = [r for r in rows if r.macs and r.dram_bytes]
        roof.scatter([r.macs / r.dram_bytes for r in gemm],
                     [r.macs / r.seconds for r in gemm], c=[colours[r.engine] for r in gemm])
        roof.set_xscale("log")
        roof.set_yscale("log")
        roof.set_xlabel("arithmetic intensity (MACs per DRAM byte)")
        roof.set_ylabel("achieved MAC/s")
        dram_bytes_per_s = self.dram_bytes_per_s
        if gemm:
            lo = min(r.macs / r.dram_bytes for r in gemm) / 2
            hi = max(r.macs / r.dram_bytes for r in gemm) * 2
            for engine in sorted({r.engine for r in gemm}):  # one roof per engine used
                peak = self.peak_macs_per_s[engine]
                knee = peak / dram_bytes_per_s
                xs = [lo, min(max(knee, lo), hi), hi]
                roof.plot(xs, [min(peak, v * dram_bytes_per_s) for v in xs], "--",
                          color=colours[engine], label=f"{engine} roof")
            roof.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def __str__(self) -> str:
        head = (f"{'#':>4} {'op':<16} {'engine':<4} {'MACs':>12} {'cycles':>10} {'util':>5} "
                f"{'DRAM B':>10} {'energy uJ':>9} {'bound':<7} module / note")
        lines = [f"simulated on {self.target}", head]
        for r in self.rows:
            lines.append(f"{r.name:>4} {r.op:<16} {r.engine:<4} {r.macs:>12,} {r.cycles:>10,} "
                         f"{r.utilization:5.0%} {r.dram_bytes:>10,} {r.energy_j * 1e6:9.2f} "
                         f"{r.bound:<7} {r.note}{'  [' + r.tile + ']' if r.tile else ''}")
        lines.append(f"total: {self.total_cycles:,} cycles, {self.latency_s * 1e3:.3f} ms, "
                     f"{self.energy_j * 1e6:.1f} uJ; arena {self.arena_bytes:,} B (lower bound "
                     f"{self.arena_lower_bound:,} B); weights {self.weight_bytes:,} B; "
                     f"{self.transfer_bytes:,} B moved between engines")
        if self.state_bytes:
            call = f"step {self.step}: " if self.step is not None else ""
            lines.append(f"state: {self.state_bytes:,} B kept in DRAM between calls; {call}"
                         f"{self.state_dram_bytes:,} B of state read and written")
        lines.append("engines: " + "; ".join(
            f"{e} {n} ops, {macs:,} MACs, busy {busy * 1e6:,.1f} us"
            for e, (n, macs, busy) in self.by_engine().items()))
        if self.by_sparsity:
            lines.append(f"{'sparsity':<10} {'cycles':>12} {'ms':>9} {'energy uJ':>10}  "
                         "(* this NPU; the others: the same graph on an NPU that treats zero "
                         "weights that way)")
            for mode, t in self.by_sparsity.items():
                mark = " *" if mode == self.sparsity else ""
                lines.append(f"{mode + mark:<10} {t.cycles:>12,} {t.latency_s * 1e3:>9.3f} "
                             f"{t.energy_j * 1e6:>10.1f}")
        return "\n".join(lines)

    def by_engine(self) -> dict[str, tuple[int, int, float]]:
        """Per engine that ran something: (ops, MACs, seconds busy)."""
        totals: dict[str, tuple[int, int, float]] = {}
        for r in self.rows:
            n, work, busy = totals.get(r.engine, (0, 0, 0.0))
            totals[r.engine] = (n + 1, work + r.macs, busy + r.seconds)
        return totals


def simulate(graph: Graph, target, sparsity: str | None = None,  # noqa: ANN001 - a Target
             compare: bool = True, step: int | None = None) -> SimReport:
    """Place, cost and plan `graph` on `target` (see the module docstring), its NPU skipping
    zero weights as `sparsity` says (default: the target's `npu.sparsity`; see
    `cost.sparsity_fractions`). With `compare`, `by_sparsity` holds the totals under every mode
    (each simulated in full: placement may change with the cost). `step`: the call to cost, for
    a graph whose work depends on it (default 0, the first call, which computes everything)."""
    from npuc import targets as _targets

    target = _targets.get(target)
    activity = Activity(graph)
    if step is not None and activity.step is None:
        raise ValueError(f"graph @{graph.name} does the same work at every call: step= "
                         "applies to graphs with reuse nodes")
    step = 0 if step is None and activity.step is not None else step
    if target.npu is None:
        if sparsity is not None:
            raise ValueError(f"target {target.name} has no NPU: no sparsity mode to choose")
        return _simulate(graph, target, step)
    if sparsity is not None and sparsity not in _targets.SPARSITY_MODES:
        raise ValueError(f"sparsity {sparsity!r}: expected one of "
                         f"{', '.join(_targets.SPARSITY_MODES)}")
    report = _simulate(graph, _with_sparsity(target, sparsity or target.npu.sparsity), step)
    modes: dict[str, ModeTotals] = {}
    gemms = list(graph.nodes)
    done = {sparsity_signature(gemms, target.npu, report.sparsity):
            ModeTotals(report.total_cycles, report.latency_s, report.energy_j)}
    for mode in _targets.SPARSITY_MODES if compare else ():
        key = sparsity_signature(gemms, target.npu, mode)
        if key not in done:  # a mode that changes nothing here costs what another one did
            other = _simulate(graph, _with_sparsity(target, mode), step)
            done[key] = ModeTotals(other.total_cycles, other.latency_s, other.energy_j)
        modes[mode] = done[key]
    return dataclasses.replace(report, by_sparsity=modes)


@dataclass(frozen=True)
class CallsReport:
    """A sequence of calls of a graph with state: one SimReport per step, and their sums."""

    target: str
    steps: tuple[int, ...]
    reports: tuple[SimReport, ...]

    @property
    def latency_s(self) -> float:
        return sum(r.latency_s for r in self.reports)

    @property
    def energy_j(self) -> float:
        return sum(r.energy_j for r in self.reports)

    @property
    def cycles(self) -> int:
        return sum(r.total_cycles for r in self.reports)

    @property
    def state_dram_bytes(self) -> int:
        return sum(r.state_dram_bytes for r in self.reports)

    def __str__(self) -> str:
        lines = [f"{len(self.steps)} calls on {self.target}",
                 f"{'step':>5} {'cycles':>12} {'ms':>9} {'energy uJ':>10} {'state DRAM B':>13}"]
        for step, r in zip(self.steps, self.reports, strict=True):
            lines.append(f"{step:>5} {r.total_cycles:>12,} {r.latency_s * 1e3:>9.3f} "
                         f"{r.energy_j * 1e6:>10.1f} {r.state_dram_bytes:>13,}")
        lines.append(f"{'total':>5} {self.cycles:>12,} {self.latency_s * 1e3:>9.3f} "
                     f"{self.energy_j * 1e6:>10.1f} {self.state_dram_bytes:>13,}")
        return "\n".join(lines)


def simulate_calls(graph: Graph, target, steps: Iterable[int],  # noqa: ANN001 - a Target
                   sparsity: str | None = None) -> CallsReport:
    """`simulate` at each of `steps` (a sampling loop's step indices); calls that compute the
    same nodes and store the same state are simulated once."""
    from npuc import targets as _targets

    target = _targets.get(target)
    activity = Activity(graph)
    steps = tuple(steps)
    seen: dict[tuple, SimReport] = {}
    reports = []
    for step in steps:
        key = (tuple(map(id, activity.computed(step))),
               tuple(unchanged_state(s, step) for s in graph.state))
        if key not in seen:
            seen[key] = simulate(graph, target, sparsity, compare=False,
                                 step=step if activity.step is not None else None)
        reports.append(dataclasses.replace(seen[key], step=step))
    return CallsReport(target.name, steps, tuple(reports))


def _with_sparsity(target, mode: str):  # noqa: ANN001, ANN202 - Target -> Target
    return dataclasses.replace(target, npu=dataclasses.replace(target.npu, sparsity=mode))


def _simulate(graph: Graph, target, step: int | None = None) -> SimReport:  # noqa: ANN001
    available = engines(target)
    if not available or target.memory is None or target.energy is None:
        raise ValueError(f"target {target.name} describes no engines/memory/energy to simulate")
    computed = set(Activity(graph).computed(step or 0))
    # rows are numbered by position among all non-constants, whatever this call computes
    order = [n for n in graph.nodes if not n.is_const]
    stores = {s.write: s.type.nbytes for s in graph.state
              if not unchanged_state(s, step or 0)}
    costs: dict[Node, dict[str, OpCost]] = {}
    unsupported: dict[Node, list[str]] = {}
    for node in order:
        if node.op == "input" or node not in computed:
            continue
        costs[node], unsupported[node] = {}, []
        for engine in available:
            why = supports(engine, node, target)
            if why is None:
                costs[node][engine] = op_cost(engine, node, target, stores.get(node, 0))
            else:
                unsupported[node].append(f"{engine}: {why}")
        if not costs[node]:
            raise ValueError(f"no engine of {target.name} runs {node.op} "
                             f"({'; '.join(unsupported[node])})")
    clock = getattr(target, available[0]).clock_hz
    slots = heft(graph, {n: {e: c.seconds for e, c in by.items()} for n, by in costs.items()},
                 target.memory, sram_bytes_per_s(target))
    rows = []
    for i, node in enumerate(order):
        if node not in costs:
            continue
        slot = slots[node]
        best = costs[node][slot.engine]
        engine = "dma" if node.op == "state" else best.engine  # a load, on no engine
        rows.append(Row(str(i), node.op, engine, best.macs, best.compute_cycles,
                        round(best.seconds * getattr(target, best.engine).clock_hz),
                        best.utilization, best.dram_bytes, best.sram_bytes, best.energy_j,
                        best.bound, best.seconds, slot.start,
                        _note(node, slot, costs[node], unsupported[node], available[0]),
                        best.tile))
    order = [n for n in order if n in computed or n.op == "input"]
    by_start = sorted(order, key=lambda n: (slots[n].start if n in slots else -1.0,
                                            order.index(n)))
    memory: MemoryPlan = plan_memory(graph, by_start)
    latency = max((slot.finish for slot in slots.values()), default=0.0)
    moved = sum(slot.transfer_bytes for slot in slots.values())
    weights = sum(n.stored_nbytes for n in graph.nodes if n.is_const)
    kept = sum(s.type.nbytes for s in graph.state)
    state_traffic = sum(r.dram_bytes for r in rows if r.op == "state")
    state_traffic += sum(stores.values())
    energy = (sum(r.energy_j for r in rows) + target.energy.static_w * latency
              + 2 * moved * target.energy.sram_byte_pj * 1e-12)
    return SimReport(target.name, tuple(rows), round(latency * clock), latency, energy,
                     memory.arena_bytes, memory.lower_bound, weights,
                     {e: peak_macs(target, e) for e in available},
                     target.memory.dram_bytes_per_s, moved,
                     target.npu.sparsity if target.npu is not None else "",
                     state_bytes=kept, state_dram_bytes=state_traffic,
                     step=step if Activity(graph).step is not None else None)


def _note(node: Node, slot: Slot, costs: dict[str, OpCost], unsupported: list[str],
          first: str) -> str:
    """The op's module path and, when it did not run on `first` (the NPU), why: the engines that
    cannot run it, or how much earlier it finishes where the schedule put it."""
    note = node.loc or ""
    if slot.engine == first or is_view(node.op):  # a view costs nothing anywhere
        return note
    if first not in costs:
        why = "; ".join(unsupported)
    else:
        there = slot.options[first]
        if costs[first].seconds > costs[slot.engine].seconds:
            cause = "slower"
        elif there.start > there.ready:
            cause = "busy"
        else:
            cause = "waits for operands"
        why = (f"{first} {cause}: finishes {_duration(there.finish - slot.finish)} earlier on "
               f"{slot.engine}")
    return f"{note} ({why})".strip()


def _duration(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} us" if seconds >= 1e-7 else f"{seconds * 1e9:.1f} ns"


def peak_macs(target, engine: str) -> float:  # noqa: ANN001
    """MACs per second of one engine of the target at full rate (int8, or its weight width)."""
    if engine == "npu":
        npu = target.npu
        return npu.rows * npu.cols * npu.clock_hz * 8 / npu.weight_bits
    if engine == "dsp":
        return target.dsp.lanes * target.dsp.clock_hz
    return target.cpu.ops_per_cycle * target.cpu.clock_hz
