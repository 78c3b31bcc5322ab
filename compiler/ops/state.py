"""State across calls: the `state` leaf and `reuse`, the one op whose work depends on the call.

A `state` node reads the value its graph's `StateSlot` kept from the previous call. `reuse`
picks, by the call's step index, a freshly computed value or a cached one; the executors compute
only the operand it picks (`compiler/state.py` derives, for every node, the steps that need it),
so a step that reuses costs the cache read and nothing of the work it skips.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs, DType, TensorType
from . import LEAF, NO_MIRROR, VIEW, AttrSpec, defop, moves
from .elementwise import OpTypeError
from .shape import _leaf_type

STEP_DTYPES = (DType.I32, DType.I64)


@defop("state", 0, _leaf_type, category="graph", attrs={"name": AttrSpec("str")}, integer=LEAF,
       cost=VIEW, mirror=NO_MIRROR)
def state(attrs: Attrs) -> np.ndarray:
    """The value state `name` holds at the start of a call (real zero after a reset)."""
    raise RuntimeError("state is bound by the executor")


def recomputes(schedule: tuple[int, ...], step: int) -> bool:
    """Whether `step` recomputes under `schedule` (1 = recompute); steps outside it recompute,
    which is always correct."""
    return not 0 <= step < len(schedule) or bool(schedule[step])


def reuse_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    fresh, cached, step = types
    if (fresh.shape, fresh.dtype) != (cached.shape, cached.dtype):
        raise OpTypeError(f"reuse: cached {cached.shape} {cached.dtype} differs from fresh "
                          f"{fresh.shape} {fresh.dtype}")
    if step.size != 1 or step.dtype not in STEP_DTYPES:
        raise OpTypeError(f"reuse: the step must be one i32/i64 element, got {step.shape} "
                          f"{step.dtype}")
    if any(v not in (0, 1) for v in attrs["recompute"]):
        raise OpTypeError(f"reuse: recompute holds 0/1 per step, got {attrs['recompute']}")
    return TensorType(fresh.shape, fresh.dtype, fresh.quant)


def _reuse_mirror(attrs: Attrs, fresh, cached, step):  # noqa: ANN001, ANN202 - torch tensors
    return fresh if recomputes(attrs["recompute"], int(step.reshape(-1)[0])) else cached


@defop("reuse", 3, reuse_type, category="graph", attrs={"recompute": AttrSpec("ints")},
       integer=moves("reuse"), cost=VIEW, mirror=_reuse_mirror)
def reuse(attrs: Attrs, fresh: np.ndarray | None, cached: np.ndarray | None,
          step: np.ndarray) -> np.ndarray:
    """`fresh` at the steps `recompute` marks 1 (and at any step past its end), else `cached`.
    Only the picked operand is computed: the other one is None here. The schedule is indexed
    by the step's value (a step index, or a diffusion timestep); what introduces the op makes
    sure the first call of a sequence recomputes (a cache read before then is its reset
    value)."""
    picked = fresh if recomputes(attrs["recompute"], int(step.reshape(-1)[0])) else cached
    if picked is None:
        raise RuntimeError("reuse: the operand the step picks was not computed")
    return picked
