"""Pass registry and pipeline runner.

A pass is a pure function `(graph, ctx, **options) -> Graph`, registered by name with
`@register_pass`. Its keyword-only parameters, with type hints and defaults, are its options; the
registry checks option names and types (unions, `tuple[str, ...]`, `list[str]`, `dict` included)
before the pass runs. A pass that reads calibration data or the target says so when it registers
(`@register_pass("smoothquant", calibration=True)`), and `apply` / `run_pipeline` take both as
keywords:

    npuc.passes.apply(g, "smoothquant", calibration=[(x1,), (x2,)], alpha=0.5)
    npuc.passes.run_pipeline(g, ["fold_constants", "quantize"], calibration=data, target="npu-int8")

A pass that needs calibration and gets none is refused before anything runs, with a message naming
it and saying what to pass; calibration tuples are checked against the graph's inputs (arity,
shape, finite values) once, up front. A pipeline is a list of steps, each a pass name, a
`(name, {options})` pair or a `{"name": ..., **options}` dict; the text form
`"dce,fold_constants{max_bytes=65536}"` is accepted by `parse_pipeline`.
"""

from __future__ import annotations

import dataclasses
import inspect
import time
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args, get_origin, get_type_hints

import numpy as np

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


class CalibrationError(ValueError):
    """Calibration data that is missing (for a pass that needs it) or does not fit the graph."""


@dataclass(frozen=True)
class PassInfo:
    name: str
    fn: PassFn
    description: str
    options: Mapping[str, tuple[Any, Any]]  # option -> (type hint, default)
    exact: bool  # keeps the function exactly (within float rounding)
    needs_calibration: bool = False  # reads ctx.calibration: refused without it
    reads_target: bool = False  # reads ctx.target (e.g. for its option defaults)

    def check_options(self, options: Any) -> dict[str, Any]:
        """The options, type-checked against the pass's hints (ints widen to float)."""
        if not isinstance(options, Mapping):
            raise TypeError(f"pass {self.name}: options must be a dict of option -> value, got "
                            f"{type(options).__name__} {options!r}")
        unknown = set(options) - set(self.options)
        if unknown:
            known = ", ".join(self.options) or "none"
            raise TypeError(f"pass {self.name}: unknown option(s) {sorted(unknown)}; "
                            f"options are: {known}")
        checked = {}
        for key, value in options.items():
            kind = self.options[key][0]
            ok, value = _conform(value, kind)
            if not ok:
                hint = ""
                if isinstance(value, str) and _wants_sequence(kind):
                    hint = f" (a str is not a list of names: write [{value!r}])"
                raise TypeError(f"pass {self.name}: option {key} must be {_describe(kind)}, "
                                f"got {value!r}{hint}")
            checked[key] = value
        return checked


def _conform(value: Any, kind: Any) -> tuple[bool, Any]:
    """(does `value` fit the type hint `kind`, the value with ints widened where float is
    wanted). Handles plain classes, unions, Optional, Literal, tuple/list/set/dict generics."""
    if kind is object or kind is Any:
        return True, value
    if kind is None or kind is type(None):
        return value is None, value
    origin, args = get_origin(kind), get_args(kind)
    if origin in (typing.Union, types.UnionType):
        plain = [a for a in args if get_origin(a) is None]
        for a in sorted(args, key=lambda a: a not in plain):  # exact classes before widening
            ok, conformed = _conform(value, a)
            if ok:
                return True, conformed
        return False, value
    if origin is typing.Literal:
        return value in args, value
    if origin is None:
        if not isinstance(kind, type):
            return True, value  # an annotation this checker does not know: the pass checks
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return True, float(value)
        if kind is int and isinstance(value, bool):
            return False, value
        return isinstance(value, kind), value
    container = origin if isinstance(origin, type) else None
    if container is None or not isinstance(value, container) or isinstance(value, str) \
            and container is not str:
        return False, value
    if issubclass(container, Mapping):
        if not args:
            return True, value
        items = [(_conform(k, args[0]), _conform(v, args[1])) for k, v in value.items()]
        if not all(k[0] and v[0] for k, v in items):
            return False, value
        return True, type(value)((k[1], v[1]) for k, v in items) if container is dict else value
    if not args:
        return True, value
    if container is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(args) != len(value):
            return False, value
        parts = [_conform(v, a) for v, a in zip(value, args, strict=True)]
    else:
        parts = [_conform(v, args[0]) for v in value]
    if not all(ok for ok, _ in parts):
        return False, value
    return True, container(v for _, v in parts)


def _wants_sequence(kind: Any) -> bool:
    origin = get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_wants_sequence(a) for a in get_args(kind))
    return origin in (tuple, list, set, frozenset) or kind in (tuple, list, set, frozenset)


def _describe(kind: Any) -> str:
    """'str or None', 'tuple of str, list of str or None': a type hint in words."""
    if kind is None or kind is type(None):
        return "None"
    origin, args = get_origin(kind), get_args(kind)
    if origin in (typing.Union, types.UnionType):
        words = [_describe(a) for a in args]
        return ", ".join(words[:-1]) + " or " + words[-1]
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        if not args:
            return name
        if issubclass(origin, Mapping):
            return f"{name} of {_describe(args[0])} -> {_describe(args[1])}"
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            return f"{name} of ({', '.join(_describe(a) for a in args)})"
        return f"{name} of {_describe(args[0])}"
    return getattr(kind, "__name__", str(kind))


REGISTRY: dict[str, PassInfo] = {}


def register_pass(name: str, *, exact: bool = True, calibration: bool = False,
                  target: bool = False) -> Callable[[PassFn], PassFn]:
    """Register `fn(graph, ctx, *, option: type = default, ...)`; its docstring's first line is
    the description shown by `npuc passes`. `calibration=True`: the pass reads
    `ctx.calibration` and is refused without it; `target=True`: it reads `ctx.target`."""

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
        REGISTRY[name] = PassInfo(name, fn, doc[0] if doc else "", options, exact,
                                  calibration, target)
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


def apply(graph: Graph, name: str, *, ctx: PassContext | None = None,
          calibration: Iterable[Sequence[Any]] | None = None, target: Any = None,
          **options: Any) -> Graph:
    """Run one pass; the input graph is never mutated. `calibration` (an iterable of input
    tuples, as npuc.compile takes) and `target` (a name or a loaded target) are for the passes
    that read them, and override `ctx`'s."""
    info = get(name)
    checked = info.check_options(options)
    ctx = context(graph, ctx, calibration, target)
    require(info, ctx)
    return info.fn(graph, ctx, **checked)


def context(graph: Graph, ctx: PassContext | None, calibration: Iterable[Sequence[Any]] | None,
            target: Any) -> PassContext:
    """`ctx` (or a new one) with `calibration` and `target` set when given; the calibration is
    checked against `graph`'s inputs (see `check_calibration`). Notes still go to `ctx`."""
    ctx = ctx if ctx is not None else PassContext()
    changes: dict[str, Any] = {}
    if target is not None:
        from npuc import targets

        changes["target"] = targets.get(target)
    data = calibration if calibration is not None else ctx.calibration
    if data is not None:
        changes["calibration"] = check_calibration(graph, data)
    return dataclasses.replace(ctx, **changes) if changes else ctx


def require(info: PassInfo, ctx: PassContext) -> None:
    """Refuse a pass that needs calibration data when there is none, saying what to pass."""
    if info.needs_calibration and not ctx.calibration:
        raise CalibrationError(
            f"pass {info.name} needs calibration data (example inputs it measures activations "
            f"on): npuc.passes.apply(g, {info.name!r}, calibration=[(x1,), (x2,), ...]), "
            "run_pipeline(g, steps, calibration=[...]) or npuc.compile(model, "
            "calibration=[...]); each item is a tuple with one array per graph input")


def check_calibration(graph: Graph, calibration: Iterable[Sequence[Any]]) -> list[tuple]:
    """The calibration data as a list of input tuples, checked against the graph's inputs:
    each item a tuple (or list) of one array per input, of the input's shape, float inputs
    finite. Errors say which sample and which input."""
    if isinstance(calibration, (str, bytes)) or not isinstance(calibration, Iterable) \
            or hasattr(calibration, "shape"):
        raise CalibrationError(
            f"calibration must be an iterable of input tuples, [(x1,), (x2,), ...], got "
            f"{type(calibration).__name__}")
    inputs = graph.inputs
    names = [str(n.attrs.get("name", k)) for k, n in enumerate(inputs)]
    want = f"a tuple of {len(inputs)} array{'s' if len(inputs) != 1 else ''} " \
           f"({', '.join(names)})"
    samples = []
    for i, item in enumerate(calibration):
        if not isinstance(item, (tuple, list)):
            hint = " (wrap it: calibration=[(x,), ...])" if len(inputs) == 1 else ""
            raise CalibrationError(f"calibration sample {i} is a {type(item).__name__}; "
                                   f"expected {want}{hint}")
        if len(item) != len(inputs):
            raise CalibrationError(f"calibration sample {i} has {len(item)} value"
                                   f"{'s' if len(item) != 1 else ''}; the graph takes {want}")
        for k, (node, value) in enumerate(zip(inputs, item, strict=True)):
            array = _numpy(value)
            where = f"calibration sample {i}, input {k} ({names[k]})"
            if tuple(array.shape) != tuple(node.shape):
                raise CalibrationError(f"{where} has shape {tuple(array.shape)}; the graph "
                                       f"was captured with {tuple(node.shape)}")
            if array.dtype.kind in "fc" and not np.isfinite(array).all():
                nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
                raise CalibrationError(f"{where} has {nan} NaN and {inf} Inf value(s); "
                                       "calibration data must be finite")
        samples.append(tuple(item))
    return samples


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)


Step = str | tuple[str, Mapping[str, Any]] | Mapping[str, Any]


def normalize(pipeline: Iterable[Step] | str) -> list[tuple[str, dict[str, Any]]]:
    """Pipeline steps as (name, options) pairs, checked against the registry."""
    if isinstance(pipeline, str):
        return parse_pipeline(pipeline)
    if isinstance(pipeline, Mapping) or not isinstance(pipeline, Iterable):
        raise TypeError(f"a pipeline is a list of steps or a 'a,b{{x=1}}' string, got "
                        f"{type(pipeline).__name__} {pipeline!r}")
    shapes = ("a pass name, a (name, {options}) pair or a {'name': ..., **options} dict")
    steps = []
    for k, step in enumerate(pipeline):
        if isinstance(step, str):
            name, options = step, {}
        elif isinstance(step, tuple | list) and len(step) == 2 and isinstance(step[0], str):
            name, options = step
            if not isinstance(options, Mapping):
                raise TypeError(f"pipeline step {k} ({name}): options must be a dict, got "
                                f"{type(options).__name__} {options!r}")
            options = dict(options)
        elif isinstance(step, Mapping) and isinstance(step.get("name"), str):
            options = dict(step)
            name = options.pop("name")
        else:
            raise TypeError(f"pipeline step {k}: expected {shapes}, got "
                            f"{type(step).__name__} {step!r}")
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
                 *, calibration: Iterable[Sequence[Any]] | None = None, target: Any = None,
                 verify: bool = False,
                 on_stage: Callable[[str, Graph], None] | None = None,
                 ) -> tuple[Graph, list[PassRecord]]:
    """Run the steps in order; time each, verify between them when `verify`, call
    `on_stage(name, graph)` after each, and wrap failures in PassError with the history.
    `calibration` and `target` are as for `apply` (checked before the first pass runs)."""
    steps = normalize(pipeline)
    ctx = context(graph, ctx, calibration, target)
    for name, _ in steps:
        require(get(name), ctx)
    records: list[PassRecord] = []
    for name, options in steps:
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
