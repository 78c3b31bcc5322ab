"""Graph leaves (input, const), data-movement ops and reductions.

Data movement never changes values, only where they sit, so these ops apply unchanged to float
and integer tensors (and keep quantization parameters through lowering).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import Attrs, TensorType
from . import LEAF, NO_MIRROR, VIEW, AttrSpec, defop, lowers, moves, vector
from .elementwise import OpTypeError

COPY = vector(1)  # a data movement the simulator charges as one copy per element


def _leaf_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    raise OpTypeError("a leaf's type is given, not inferred")


@defop("input", 0, _leaf_type, category="graph", attrs={"name": AttrSpec("str")}, integer=LEAF,
       cost=VIEW, mirror=NO_MIRROR)
def input_(attrs: Attrs) -> np.ndarray:
    """A graph input, bound by position when the graph runs."""
    raise RuntimeError("inputs are bound by the interpreter")


@defop("const", 0, _leaf_type, category="graph",
       attrs={"digest": AttrSpec("str"), "encoding": AttrSpec("str", "dense"),
              "data": AttrSpec("array", None)}, integer=LEAF, cost=VIEW, mirror=NO_MIRROR)
def const(attrs: Attrs) -> np.ndarray:
    """A constant tensor; `data` holds its array, `digest` a content hash, `encoding` its layout."""
    return attrs["data"]


def _check_axis(axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise OpTypeError(f"axis {axis} out of range for rank {rank}")
    return axis % max(rank, 1)


def reshape_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, shape = types[0], attrs["shape"]
    if min(shape, default=0) < 0:
        raise OpTypeError(f"reshape: negative size in {shape}")
    if int(np.prod(shape, dtype=np.int64)) != x.size or min(shape, default=1) < 0:
        raise OpTypeError(f"reshape: cannot view {x.shape} as {shape}")
    return TensorType(shape, x.dtype)


@defop("reshape", 1, reshape_type, category="shape", attrs={"shape": AttrSpec("ints")},
       integer=moves("reshape"), cost=VIEW, mirror=lambda a, x: x.reshape(a["shape"]))
def reshape(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Same elements in C order, new shape (view/flatten/squeeze/unsqueeze all become this)."""
    return x.reshape(attrs["shape"])


def permute_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, perm = types[0], attrs["perm"]
    if sorted(perm) != list(range(x.rank)):
        raise OpTypeError(f"permute: {perm} is not a permutation of {x.rank} axes")
    return TensorType(tuple(x.shape[p] for p in perm), x.dtype)


@defop("permute", 1, permute_type, category="shape", attrs={"perm": AttrSpec("ints")},
       integer=moves("permute"), cost=COPY, mirror=lambda a, x: x.permute(a["perm"]))
def permute(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """out axis i is input axis perm[i]."""
    return x.transpose(attrs["perm"]).copy()  # a C-ordered copy that keeps 0-d arrays 0-d


def expand_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, shape = types[0], attrs["shape"]
    if min(shape, default=0) < 0 or len(shape) < x.rank or any(
        s != t and s != 1 for s, t in zip(x.shape, shape[len(shape) - x.rank:], strict=True)
    ):
        raise OpTypeError(f"expand: cannot broadcast {x.shape} to {shape}")
    return TensorType(shape, x.dtype)


@defop("expand", 1, expand_type, category="shape", attrs={"shape": AttrSpec("ints")},
       integer=moves("expand"), cost=COPY, mirror=lambda a, x: x.expand(a["shape"]))
def expand(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Broadcast to `shape` (size-1 axes repeat)."""
    return np.broadcast_to(x, attrs["shape"]).copy()


def slice_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    axis = _check_axis(attrs["axis"], x.rank)
    if attrs["step"] < 1:
        raise OpTypeError("slice: step must be positive")
    n = len(range(*slice(attrs["start"], attrs["end"], attrs["step"]).indices(x.shape[axis])))
    return TensorType(x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype)


def _slice_mirror(a: Attrs, x: torch.Tensor) -> torch.Tensor:
    index = [slice(None)] * x.ndim
    index[a["axis"]] = slice(a["start"], a["end"], a["step"])
    return x[tuple(index)]


@defop("slice", 1, slice_type, category="shape",
       attrs={"axis": AttrSpec("int"), "start": AttrSpec("int"), "end": AttrSpec("int"),
              "step": AttrSpec("int", 1)}, integer=moves("slice"), cost=COPY,
       mirror=_slice_mirror)
def slice_(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """x[start:end:step] along `axis` (Python slice rules; select = slice + reshape)."""
    index = [slice(None)] * x.ndim
    index[attrs["axis"]] = slice(attrs["start"], attrs["end"], attrs["step"])
    return x[tuple(index)]


def flip_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    axes = {_check_axis(a, types[0].rank) for a in attrs["axes"]}
    if len(axes) != len(attrs["axes"]):
        raise OpTypeError(f"flip: repeated axes {attrs['axes']}")
    return TensorType(types[0].shape, types[0].dtype)


@defop("flip", 1, flip_type, category="shape", attrs={"axes": AttrSpec("ints")},
       integer=moves("flip"), cost=COPY, mirror=NO_MIRROR)
def flip(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Reverse the order of elements along `axes`."""
    return np.flip(x, axis=tuple(attrs["axes"])).copy()


def concat_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    first = types[0]
    if first.rank == 0:
        raise OpTypeError("concat: cannot join 0-d values")
    axis = _check_axis(attrs["axis"], first.rank)
    for t in types[1:]:
        if t.dtype != first.dtype or t.rank != first.rank or any(
            a != b for i, (a, b) in enumerate(zip(t.shape, first.shape, strict=True)) if i != axis
        ):
            raise OpTypeError(f"concat: {t.shape} {t.dtype} does not fit "
                              f"{first.shape} {first.dtype}")
    size = sum(t.shape[axis] for t in types)
    return TensorType(first.shape[:axis] + (size,) + first.shape[axis + 1:], first.dtype)


@defop("concat", (1, 1 << 16), concat_type, category="shape", attrs={"axis": AttrSpec("int")},
       integer=lowers("concat"), cost=COPY, mirror=lambda a, *xs: torch.cat(xs, a["axis"]))
def concat(attrs: Attrs, *xs: np.ndarray) -> np.ndarray:
    """Join along `axis`."""
    return np.concatenate(xs, axis=attrs["axis"])


def pad_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, pads = types[0], attrs["pads"]
    if len(pads) != 2 * x.rank:
        raise OpTypeError(f"pad: {len(pads)} amounts for rank {x.rank}, expected {2 * x.rank}")
    shape = tuple(s + pads[2 * i] + pads[2 * i + 1] for i, s in enumerate(x.shape))
    if min(shape, default=1) < 0:
        raise OpTypeError(f"pad: crops {x.shape} to nothing")
    return TensorType(shape, x.dtype)


def _pad_mirror(a: Attrs, x: torch.Tensor) -> torch.Tensor:
    pads = a["pads"]
    pairs = [p for i in reversed(range(x.ndim)) for p in (pads[2 * i], pads[2 * i + 1])]
    return F.pad(x, pairs, value=a["value"])


@defop("pad", 1, pad_type, category="shape",
       attrs={"pads": AttrSpec("ints"), "value": AttrSpec("float", 0.0)}, integer=lowers("pad"),
       cost=COPY, mirror=_pad_mirror)
def pad(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Constant padding; `pads` holds (lo, hi) per axis in axis order; negative amounts crop."""
    from .nn import _pad

    return _pad(x, attrs["pads"], attrs["value"])


def gather_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, idx = types
    axis = _check_axis(attrs["axis"], x.rank)
    if idx.dtype.is_float or idx.dtype.value == "bool":
        raise OpTypeError(f"gather: indices must be integers, got {idx.dtype}")
    return TensorType(x.shape[:axis] + idx.shape + x.shape[axis + 1:], x.dtype)


def _gather_mirror(a: Attrs, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x[(slice(None),) * (a["axis"] % x.ndim) + (idx.long(),)]


@defop("gather", 2, gather_type, category="shape", attrs={"axis": AttrSpec("int", 0)},
       integer=moves("gather"), cost=COPY, mirror=_gather_mirror)
def gather(attrs: Attrs, x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """numpy.take(x, idx, axis): embedding lookup is gather(table, ids, axis=0). Every index must
    lie in [0, n): anything else, negative included, is an error (as torch's embedding; capture
    turns negative constant indices into positive ones), in the interpreter and in the C."""
    n = x.shape[attrs["axis"]]
    bad = (idx < 0) | (idx >= n)
    if bad.any():
        raise IndexError(f"index {idx[bad].ravel()[0]} is outside [0, {n}) "
                         f"({np.count_nonzero(bad)} of {idx.size} indices)")
    return np.take(x, idx, axis=attrs["axis"])


def pixel_shuffle_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, r = types[0], attrs["factor"]
    if x.rank != 4 or x.shape[1] % (r * r):
        raise OpTypeError(f"pixel_shuffle: {x.shape} channels not divisible by {r}^2")
    n, c, h, w = x.shape
    return TensorType((n, c // (r * r), h * r, w * r), x.dtype)


@defop("pixel_shuffle", 1, pixel_shuffle_type, category="shape",
       attrs={"factor": AttrSpec("int", min=1)}, integer=moves("pixel_shuffle"),
       cost=COPY, mirror=lambda a, x: F.pixel_shuffle(x, a["factor"]))
def pixel_shuffle(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """(N, C*r*r, H, W) -> (N, C, H*r, W*r):
    out[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w]."""
    n, c, h, w = x.shape
    r = attrs["factor"]
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r).copy()


def reduce_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x = types[0]
    if x.rank == 0:
        raise OpTypeError("cannot reduce a 0-d value")
    axes = {_check_axis(a, x.rank) for a in attrs["axes"]}
    if len(axes) != len(attrs["axes"]):
        raise OpTypeError(f"repeated reduction axes {attrs['axes']}")
    if attrs["keepdim"]:
        shape = tuple(1 if i in axes else s for i, s in enumerate(x.shape))
    else:
        shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
    return TensorType(shape, x.dtype)


def _reduction(name: str, fn, doc: str, integer, mirror) -> None:  # noqa: ANN001
    def impl(attrs: Attrs, x: np.ndarray) -> np.ndarray:
        out = fn(x, axis=tuple(attrs["axes"]), keepdims=attrs["keepdim"])
        return np.asarray(out, dtype=x.dtype)

    def mirrored(a: Attrs, x: torch.Tensor) -> torch.Tensor:
        if not a["axes"]:
            return x
        return mirror(x, dim=tuple(a["axes"]), keepdim=a["keepdim"]).to(x.dtype)

    impl.__doc__ = doc
    defop(name, 1, reduce_type, category="reduce",
          attrs={"axes": AttrSpec("ints"), "keepdim": AttrSpec("bool", False)}, integer=integer,
          cost=vector(1), mirror=mirrored)(impl)


_reduction("mean", np.mean, "arithmetic mean over `axes`", lowers("qmean", "requantize"),
           torch.mean)
_reduction("sum", np.sum, "sum over `axes`", lowers("qsum", "requantize"), torch.sum)
_reduction("amax", np.max, "maximum over `axes`", moves("amax"), torch.amax)
_reduction("amin", np.min, "minimum over `axes`", moves("amin"), torch.amin)
