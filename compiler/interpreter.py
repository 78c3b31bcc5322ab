"""The reference interpreter: runs any IR graph with the numpy semantics of the op table.

Values are freed as soon as their last reader has run, so peak memory follows the graph's
liveness rather than its size. A graph with state (`Graph.state`) runs one call of a sequence:
the caller holds the state between calls (`cm.run` does, with `cm.reset()`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, MutableMapping, Sequence

import numpy as np

from .ir import Graph, Node
from .ops import evaluate
from .state import Activity, step_value


class InterpreterError(RuntimeError):
    """An op failed while running; the message names the node and its module path."""


def _bind(graph: Graph, inputs: Sequence[object]) -> dict[Node, np.ndarray]:
    if len(inputs) != len(graph.inputs):
        raise TypeError(f"graph @{graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    env: dict[Node, np.ndarray] = {}
    for node, value in zip(graph.inputs, inputs, strict=True):
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if array.shape != node.shape:
            raise TypeError(f"input {node.attrs['name']!r}: shape {array.shape}, "
                            f"expected {node.shape}")
        want = node.dtype.numpy
        if array.dtype != want and not np.can_cast(array.dtype, want, casting="same_kind"):
            raise TypeError(f"input {node.attrs['name']!r}: dtype {array.dtype}, expected {want}")
        env[node] = array.astype(want, copy=False)
    return env


def interpret(graph: Graph, *inputs: object,
              observe: Callable[[Node, np.ndarray], None] | None = None,
              state: MutableMapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, ...]:
    """Run `graph` on numpy arrays (or torch tensors); returns a tuple with one array per output.
    `observe(node, value)` is called with every value an op computes (calibration statistics).
    A graph with state reads it from `state` (name -> array; a missing name reads its reset
    value) and leaves the writes there, so passing the same dict again continues the sequence;
    without `state=`, every call starts from reset values. Only the nodes the call's step needs
    are computed (`compiler.state.Activity`)."""
    env = _bind(graph, inputs)
    for slot in graph.state:
        kept = None if state is None else state.get(slot.name)
        if kept is not None and (kept.shape, kept.dtype) != (slot.type.shape,
                                                              slot.type.dtype.numpy):
            raise TypeError(f"state {slot.name!r}: {kept.shape} {kept.dtype}, expected "
                            f"{slot.type.shape} {slot.type.dtype}")
        env[slot.read] = slot.reset_value() if kept is None else kept
    reads = {slot: env[slot.read] for slot in graph.state}  # what an unchanged slot keeps
    activity = Activity(graph)
    nodes = graph.nodes
    if activity.step is not None:
        step = activity.step
        value = env.get(step)
        if value is None:  # a computed step index: run what it depends on first
            value = interpret(graph.with_outputs((step,)), *inputs)[0]
        nodes = activity.computed(step_value(value))
    computed = set(nodes)
    remaining = {n: 0 for n in nodes}
    for node in nodes:
        for i in node.inputs:
            if i in computed:
                remaining[i] += 1
    for root in graph.roots:
        if root in computed:  # a state write a call leaves unchanged is not
            remaining[root] += 1
    for node in nodes:
        if node.op in ("input", "state"):
            continue
        if node.is_const:
            env[node] = node.data  # raises, naming the digest, if the data was never loaded
            continue
        args = [env.get(i) for i in node.inputs]  # None: an operand reuse does not pick
        try:
            result = evaluate(node, *args)
        except Exception as e:
            raise InterpreterError(f"{node.op} at {node.loc or '?'} failed: {e}") from e
        if result.shape != node.shape or result.dtype != node.dtype.numpy:
            raise InterpreterError(f"{node.op} at {node.loc or '?'} gave {result.shape} "
                                   f"{result.dtype}, its type says {node.shape} {node.dtype}")
        env[node] = result
        if observe is not None:
            observe(node, result)
        for i in node.inputs:
            if i in computed:
                remaining[i] -= 1
                if remaining[i] == 0:
                    del env[i]
    if state is not None:
        for slot in graph.state:  # a copy: the next call's read; unchanged ones keep theirs
            state[slot.name] = np.array(env[slot.write] if slot.write in env else reads[slot])
    return tuple(env[o] for o in graph.outputs)


def warn_non_finite_inputs(graph: Graph, inputs: Sequence[object]) -> None:
    """A RuntimeWarning for each float input that a `quantize` reads and that holds NaN or Inf
    (what `cm.run` checks: quantize maps NaN to the zero point and saturates infinities, so an
    integer graph's outputs stay finite and silently wrong). Float graphs propagate NaN."""
    if len(inputs) != len(graph.inputs):
        return  # interpret raises the arity error
    for node, value in zip(graph.inputs, inputs, strict=True):
        if not any(user.op == "quantize" for user in graph.users.get(node, ())):
            continue
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if array.dtype.kind != "f" or np.isfinite(array).all():
            continue
        nan, inf = int(np.isnan(array).sum()), int(np.isinf(array).sum())
        warnings.warn(f"input {node.attrs['name']!r} holds {nan} NaN and {inf} infinite "
                      "value(s): the integer graph quantizes NaN to the zero point and "
                      "saturates infinities, so its outputs are finite but not meaningful",
                      RuntimeWarning, stacklevel=3)
