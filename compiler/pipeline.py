"""Pass registry and pipeline runner.

A pass is a pure function `(graph, ctx, **options) -> Graph`, registered by name with
`@register_pass`. Its keyword-only parameters, with type hints and defaults, are its options; the
registry checks option names and types before the pass runs. A pipeline is a list of steps, each
a pass name, a `(name, {options})` pair or a `{"name": ..., **options}` dict; the text form
`"dce,fold_constants{max_bytes=65536}"` is accepted by `parse_pipeline`.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from .ir import Graph
from .parser import parse_attrs

PassFn = Callable[..., Graph]


def plural(n: int, one: str, many: str | None = None) -> str:
    """'1 node', '3 nodes', '2 scales/biases': counts in pass reports."""
    return f"{n} {one if n == 1 else many or one + 's'}"


@dataclass
class PassContext:
    """What a pass may read besides the graph: the target, calibration data and options of the
    whole compile, and a place to write its one-line report."""

    target: Any = None
    calibration: Sequence[tuple] | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, message: str) -> None:
        """Record what the pass changed ("folded 20 batch_norm"), shown in the compile report."""
        self.notes.append(message)


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    description: str
    options: Mapping[str, tuple[type, Any]]  # option -> (type, default)
    exact: bool  # keeps the function exactly (within float rounding)

    def check_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(self.options) or "none"
            raise TypeError(f"pass {self.name}: unknown option(s) {sorted(unknown)}; "
                            f"options are: {known}")
        checked = {}
        for key, value in options.items():
            kind = self.options[key][0]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if isinstance(kind, type) and not isinstance(value, kind):
                raise TypeError(f"pass {self.name}: option {key} must be {kind.__name__}, "
                                f"got {value!r}")
            checked[key] = value
        return checked


REGISTRY: dict[str, PassInfo] = {}


def register_pass(name: str, *, exact: bool = True) -> Callable[[PassFn], PassFn]:
    """Register `fn(graph, ctx, *, option: type = default, ...)`; its docstring's first line is
    the description shown by `npuc passes`."""

    def deco(fn: PassFn) -> PassFn:
        if name in REGISTRY:
            raise ValueError(f"pass {name} registered twice")
        hints = get_type_hints(fn)
        options = {
            p.name: (hints.get(p.name, object), p.default)
            for p in inspect.signature(fn).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        doc = (fn.__doc__ or inspect.getmodule(fn).__doc__ or "").strip().splitlines()
        REGISTRY[name] = PassInfo(name, fn, doc[0] if doc else "", options, exact)
        return fn

    return deco


class PassError(RuntimeError):
    """A pass failed; the message names it and the passes that ran before it."""


def names() -> list[str]:
    """The registered pass names, sorted."""
    return sorted(REGISTRY)


def get(name: str) -> PassInfo:
    if name not in REGISTRY:
        raise KeyError(f"unknown pass {name!r}; known passes: {', '.join(names())}")
    return REGISTRY[name]


def apply(graph: Graph, name: str, *, ctx: PassContext | None = None, **options: Any) -> Graph:
    """Run one pass; the input graph is never mutated."""
    info = get(name)
    return info.fn(graph, ctx or PassContext(), **info.check_options(options))


Step = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any]


def normalize(pipeline: Iterable[Step] | str) -> list[tuple[str, dict[str, Any]]]:
    """Pipeline steps as (name, options) pairs, checked against the registry."""
    if isinstance(pipeline, str):
        return parse_pipeline(pipeline)
    steps = []
    for step in pipeline:
        if isinstance(step, str):
            name, options = step, {}
        elif isinstance(step, tuple):
            name, options = step[0], dict(step[1])
        else:
            options = dict(step)
            name = options.pop("name")
        steps.append((name, get(name).check_options(options)))
    return steps


def parse_pipeline(text: str) -> list[tuple[str, dict[str, Any]]]:
    """'a,b{x=1, y="s"},c' -> [("a", {}), ("b", {"x": 1, "y": "s"}), ("c", {})]."""
    steps, depth, start = [], 0, 0
    for i, ch in enumerate(text + ","):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            item = text[start:i].strip()
            start = i + 1
            if item:
                name, _, rest = item.partition("{")
                options = parse_attrs(rest.rstrip("}")) if rest else {}
                steps.append((name.strip(), options))
    return normalize(steps)


@dataclass(frozen=True)
class PassRecord:
    name: str
    options: Mapping[str, Any]
    seconds: float
    nodes_before: int
    nodes_after: int
    notes: tuple[str, ...]


def run_pipeline(graph: Graph, pipeline: Iterable[Step] | str, ctx: PassContext | None = None,
                 *, verify: bool = False,
                 on_stage: Callable[[str, Graph], None] | None = None,
                 ) -> tuple[Graph, list[PassRecord]]:
    """Run the steps in order; time each, verify between them when `verify`, call
    `on_stage(name, graph)` after each, and wrap failures in PassError with the history."""
    ctx = ctx or PassContext()
    records: list[PassRecord] = []
    for name, options in normalize(pipeline):
        info = get(name)
        start, first_note = time.perf_counter(), len(ctx.notes)
        try:
            result = info.fn(graph, ctx, **options)
            if verify:
                result.verify()
        except Exception as e:
            history = ", ".join(r.name for r in records) or "(none)"
            raise PassError(f"pass {name} failed: {type(e).__name__}: {e}\n"
                            f"  passes run before it: {history}") from e
        records.append(PassRecord(name, options, time.perf_counter() - start, len(graph.nodes),
                                  len(result.nodes), tuple(ctx.notes[first_note:])))
        graph = result
        if on_stage is not None:
            on_stage(name, graph)
    return graph, records
