"""`npuc.compile`: capture, run the target's pipeline, keep every stage.

Stages are "captured", then one per pipeline step (named after the pass, "#2" appended when a
pass runs again), and "lowered", the graph the target executes (`cm.ir`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .compare import Comparison, compare
from .frontend import capture
from .interpreter import interpret
from .ir import Graph
from .ops import macs
from .pipeline import PassContext, PassRecord, Step, run_pipeline
from .printer import print_graph


@dataclass(frozen=True)
class Summary:
    """Ops by kind, parameter count (elements of constants), weight bytes as stored, MACs."""

    ops: dict[str, int]
    params: int
    weight_bytes: int
    macs: int

    def __str__(self) -> str:
        kinds = ", ".join(f"{op} {n}" for op, n in sorted(self.ops.items(), key=lambda kv: -kv[1]))
        return (f"ops: {sum(self.ops.values())} ({kinds})\n"
                f"parameters: {self.params:,} ({self.weight_bytes:,} bytes)\n"
                f"MACs: {self.macs:,}")


def summarize(graph: Graph) -> Summary:
    ops = Counter(n.op for n in graph.nodes if n.op not in ("input", "const"))
    consts = [n for n in graph.nodes if n.is_const]
    return Summary(dict(ops), sum(n.type.size for n in consts if n.type.size > 1),
                   sum(n.stored_nbytes for n in consts), sum(macs(n) for n in graph.nodes))


@dataclass
class CompiledModel:
    """The result of `npuc.compile`: every stage's graph, the lowered one, and how to run it."""

    stages: dict[str, Graph]
    target: Any
    records: list[PassRecord] = field(default_factory=list)
    # what the lowered graph's state slots hold between calls (name -> array); see `reset`
    state: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def ir(self) -> Graph:
        return self.stages["lowered"]

    def run(self, *inputs: Any, raw: bool = False) -> Any:
        """Execute the lowered graph; one array for a single-output model, else a tuple, or, for
        a model that returned a dict, the same dict (`ir.meta["output_structure"]`).
        `raw=True` returns the integer outputs as computed, before the final dequantize.
        An input with NaN or Inf that the graph quantizes gives a RuntimeWarning naming it:
        quantize maps NaN to the zero point and saturates infinities, so the outputs would be
        finite and wrong without a word.
        A graph with state (`ir.state`: an attention-map cache, a KV cache) continues from
        what the previous call left; `reset()` starts the sequence over."""
        from .interpreter import warn_non_finite_inputs
        from .ir import unflatten_outputs

        graph = self.ir
        warn_non_finite_inputs(graph, inputs)
        if raw:
            graph = graph.with_outputs(tuple(o.inputs[0] if o.op == "dequantize" else o
                                             for o in graph.outputs))
        outputs = tuple(np.asarray(o, dtype=np.float32) if o.dtype.kind == "f" else o
                        for o in interpret(graph, *inputs, state=self.state))
        structure = graph.meta.get("output_structure")
        if structure is not None:
            return unflatten_outputs(structure, outputs)
        return outputs[0] if len(outputs) == 1 else outputs

    def reset(self) -> None:
        """Forget the state kept between calls: the next call reads every state's reset value
        (real zero), as the first call after compiling did."""
        self.state.clear()

    def simulate(self, sparsity: str | None = None, step: int | None = None) -> Any:
        """The SimReport of the lowered graph on the target: per-layer engine, cycles, bytes and
        energy, and totals, and the totals under every sparsity mode (see `npuc.simulator`);
        `sparsity` ("none", "gating", "nm", "block", "ideal") overrides the NPU's mode. `step`:
        the call to cost, for a graph whose work depends on it (attention-map reuse)."""
        from npuc.simulator import simulate

        return simulate(self.ir, self.target, sparsity, step=step)

    def simulate_calls(self, steps: Iterable[int], sparsity: str | None = None) -> Any:
        """A CallsReport: the simulated cost of each call of a sequence (a sampling loop's
        steps), and their sums (see `npuc.simulator.simulate_calls`)."""
        from npuc.simulator import simulate_calls

        return simulate_calls(self.ir, self.target, steps, sparsity)

    def emit_c(self, out_dir: Any) -> Any:
        """Write the lowered graph as a C99 project into `out_dir` (see `npuc.codegen`): `make`
        builds `./model`, which computes exactly what `run` computes. Returns the directory."""
        from npuc.codegen import emit_c

        pipeline = tuple(r.name for r in self.records)
        return emit_c(self.ir, out_dir, target=self.target, pipeline=pipeline)

    def compare(self, *inputs: Any) -> Comparison:
        """Per value, the SQNR and relative error of the integer graph against the float graph
        it was lowered from, on `inputs` (see `npuc.compare`)."""
        meta = self.ir.meta
        if "origins" not in meta:
            raise ValueError(f"target {self.target.name}: the lowered graph is not quantized, "
                             "there is nothing to compare")
        missing = [n for n in meta["origins"] if n not in self.ir.users]
        if len(missing) == len(meta["origins"]):
            raise ValueError("a pass after quantize rebuilt the graph; run quantize last")
        return compare(meta["float_graph"], self.ir, meta["origins"], inputs)

    def dump(self, stage: str = "lowered", *, constants: bool = False, locs: bool = True) -> str:
        """The text IR of a stage (see `npuc.printer`)."""
        if stage not in self.stages:
            raise KeyError(f"no stage {stage!r}; stages: {', '.join(self.stages)}")
        return print_graph(self.stages[stage], constants=constants, locs=locs)

    def summary(self, stage: str = "lowered") -> Summary:
        return summarize(self.stages[stage])

    def report(self) -> str:
        """Per-pass timing and notes, then the lowered graph's summary."""
        lines = [f"target {self.target.name}: {len(self.records)} passes"]
        for r in self.records:
            notes = "; ".join(n.split(": ", 1)[-1] for n in r.notes)
            lines.append(f"  {r.name:<16} {r.seconds * 1e3:8.1f} ms  {r.nodes_before:5d} -> "
                         f"{r.nodes_after:5d} nodes  {notes}")
        return "\n".join(lines + [str(self.summary())])


def compile(model: Any, example_inputs: Sequence[Any] | None = None, target: Any = "npu-int8",
            calibration: Iterable[Sequence[Any]] | None = None,
            passes: Iterable[Step] | Mapping[str, Mapping[str, Any]] | str | None = None, *,
            debug: bool = False,
            name: str | None = None) -> CompiledModel:
    """Compile a torch.nn.Module (or an already captured Graph) for `target`.

    example_inputs: a tuple of tensors for capture; may be omitted when `calibration` is given
    (its first item serves). target: a built-in name or `npuc.targets.load(path)`.
    passes: None for the target's default pipeline; a dict {pass: options} to set options of the
    passes in it (e.g. {"quantize": {"weights": "int4"}}); or a list of steps / a pipeline
    string that replaces it.
    debug: verify the graph after every pass.
    """
    from npuc import targets

    target = targets.get(target)
    calibration = list(calibration) if calibration is not None else None
    if example_inputs is None:
        if not calibration:
            raise TypeError("npuc.compile needs example inputs: pass example_inputs=(x,) or "
                            "calibration=[(x1,), (x2,), ...]")
        example_inputs = calibration[0]
    if not isinstance(example_inputs, list | tuple):
        example_inputs = (example_inputs,)
    graph = model if isinstance(model, Graph) else capture(model, example_inputs, name=name)
    stages: dict[str, Graph] = {"captured": graph}

    def keep(stage: str, g: Graph) -> None:
        key, n = stage, 2
        while key in stages:
            key, n = f"{stage}#{n}", n + 1
        stages[key] = g

    ctx = PassContext(target=target, calibration=calibration or [tuple(example_inputs)])
    pipeline = target.pipeline if passes is None else passes
    if isinstance(passes, Mapping):  # options for some passes of the target's own pipeline
        unknown = set(passes) - set(target.pipeline)
        if unknown:
            raise TypeError(f"passes: {', '.join(sorted(unknown))} not in {target.name}'s "
                            f"pipeline ({', '.join(target.pipeline)}); pass a list to replace it")
        for key, options in passes.items():
            if not isinstance(options, Mapping):
                raise TypeError(f"passes[{key!r}] must be a dict of options, e.g. "
                                f"{{'quantize': {{'weights': 'int4'}}}}, got "
                                f"{type(options).__name__} {options!r}")
        pipeline = [(name, passes.get(name, {})) for name in target.pipeline]
    lowered, records = run_pipeline(graph, pipeline, ctx, verify=debug, on_stage=keep)
    stages["lowered"] = lowered
    return CompiledModel(stages, target, records)
