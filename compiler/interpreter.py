"""The reference interpreter: runs any IR graph with the numpy semantics of the op table.

Values are freed as soon as their last reader has run, so peak memory follows the graph's
liveness rather than its size.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np

from .ir import Graph, Node
from .ops import evaluate


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
              observe: Callable[[Node, np.ndarray], None] | None = None) -> tuple[np.ndarray, ...]:
    """Run `graph` on numpy arrays (or torch tensors); returns a tuple with one array per output.
    `observe(node, value)` is called with every value an op computes (calibration statistics)."""
    env = _bind(graph, inputs)
    remaining = {n: len(users) for n, users in graph.users.items()}
    for out in graph.outputs:
        remaining[out] += 1
    for node in graph.nodes:
        if node.op == "input":
            continue
        if node.is_const:
            env[node] = node.data  # raises, naming the digest, if the data was never loaded
            continue
        args = [env[i] for i in node.inputs]
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
            remaining[i] -= 1
            if remaining[i] == 0:
                del env[i]
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
