"""Neural-network ops: convolutions, matmul/linear, normalisations, softmax, pooling, resize.

Layout is PyTorch's: channels at axis 1 (NCW, NCHW); conv weights OIHW (conv_transpose IOHW).
Spatial attributes have one entry per spatial axis; `padding` has two per axis, (lo, hi) in axis
order, so asymmetric 'same' padding needs no separate pad op. Convolutions run as one batched
matmul over im2col windows (numpy's BLAS), never a Python loop over pixels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from ..ir import Attrs, Node, TensorType
from . import GEMM, NO_MIRROR, REWRITTEN, AttrSpec, defop, lowers, moves, vector
from .elementwise import OpTypeError, broadcast_shapes, float_type


def _spatial_out(size: int, k: int, stride: int, lo: int, hi: int, dilation: int,
                 ceil_mode: bool = False) -> int:
    span = size + lo + hi - dilation * (k - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    # PyTorch's ceil_mode rule: the last window must start inside the input or left padding.
    if ceil_mode and (out - 1) * stride >= size + lo:
        out -= 1
    return out


def _windows(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...]) -> np.ndarray:
    """(N, C, *spatial) -> (N, C, *out, *kernel) strided view of every window."""
    nsp = len(kernel)
    span = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    axes = tuple(range(2, 2 + nsp))
    view = sliding_window_view(x, span, axis=axes)
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride)
    index += tuple(slice(None, None, d) for d in dilation)
    return view[index]


def _pad(x: np.ndarray, padding: tuple[int, ...], value: float = 0.0) -> np.ndarray:
    """Pad (or crop, for negative amounts) the spatial axes by (lo, hi) pairs."""
    nsp = len(padding) // 2
    pairs = [(0, 0)] * (x.ndim - nsp) + [(padding[2 * i], padding[2 * i + 1]) for i in range(nsp)]
    grow = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
    if any(lo or hi for lo, hi in grow):
        x = np.pad(x, grow, constant_values=value)
    crop = tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in enumerate(pairs))
    return x[crop]


def _conv_attrs() -> dict[str, AttrSpec]:
    return {"stride": AttrSpec("ints", min=1), "padding": AttrSpec("ints"),
            "dilation": AttrSpec("ints", min=1), "groups": AttrSpec("int", 1, min=1)}


def _check_spatial(op: str, x: TensorType, w: TensorType, attrs: Attrs) -> int:
    nsp = w.rank - 2
    if x.rank != nsp + 2 or nsp < 1:
        raise OpTypeError(f"{op}: input rank {x.rank} does not match weight rank {w.rank}")
    if (len(attrs["stride"]), len(attrs["dilation"]), len(attrs["padding"])) != (nsp, nsp, 2 * nsp):
        raise OpTypeError(f"{op}: stride/dilation need {nsp} entries and padding {2 * nsp}")
    return nsp


def _bias_check(op: str, types: list[TensorType], channels: int) -> None:
    if len(types) == 3 and types[2].shape != (channels,):
        raise OpTypeError(f"{op}: bias shape {types[2].shape} != ({channels},)")
    if len({t.dtype for t in types}) > 1:
        raise OpTypeError(f"{op}: operand dtypes differ: {', '.join(str(t.dtype) for t in types)}")


def conv_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, w = types[:2]
    nsp = _check_spatial("conv", x, w, attrs)
    groups = attrs["groups"]
    if x.shape[1] != w.shape[1] * groups or w.shape[0] % groups:
        raise OpTypeError(f"conv: {x.shape[1]} input channels, weight {w.shape}, groups {groups}")
    _bias_check("conv", types, w.shape[0])
    pad, st, dil = attrs["padding"], attrs["stride"], attrs["dilation"]
    out = tuple(_spatial_out(x.shape[2 + i], w.shape[2 + i], st[i], pad[2 * i], pad[2 * i + 1],
                             dil[i]) for i in range(nsp))
    if min(out) < 1:
        raise OpTypeError(f"conv: empty output {out}")
    return TensorType((x.shape[0], w.shape[0]) + out, float_type(types, attrs).dtype)


def _conv_macs(node: Node) -> int:
    w = node.inputs[1].shape
    return int(np.prod(node.shape, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))


@defop("conv", (2, 3), conv_type, category="nn", attrs=_conv_attrs(), macs=_conv_macs,
       integer=lowers("qconv", "requantize"), cost=GEMM, mirror=NO_MIRROR)
def conv(attrs: Attrs, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """N-d cross-correlation:
    out[n, o, p] = b[o] + sum_{c,k} x_pad[n, g*Cg + c, p*s + k*d] * w[o, c, k],
    with g = o // (O / groups) and Cg = C / groups. Depthwise is groups == C."""
    groups, kernel = attrs["groups"], w.shape[2:]
    x = _pad(x, attrs["padding"])
    win = _windows(x, kernel, attrs["stride"], attrs["dilation"])  # N, C, *out, *k
    n, c, out = win.shape[0], win.shape[1], win.shape[2:2 + len(kernel)]
    pixels, cg_k = math.prod(out), (c // groups) * math.prod(kernel)
    nsp = len(kernel)
    # im2col: (N, G, P, Cg*K) @ (G, Cg*K, Og) -> (N, G, P, Og); one batched BLAS call.
    cols = win.reshape((n, groups, c // groups) + out + tuple(kernel))
    perm = (0, 1) + tuple(range(3, 3 + nsp)) + (2,) + tuple(range(3 + nsp, 3 + 2 * nsp))
    cols = cols.transpose(perm).reshape(n, groups, pixels, cg_k)
    wmat = w.reshape(groups, w.shape[0] // groups, cg_k).transpose(0, 2, 1)
    y = np.matmul(cols, wmat).transpose(0, 1, 3, 2).reshape((n, w.shape[0]) + out)
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return y.astype(x.dtype, copy=False)


def conv_transpose_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, w = types[:2]
    nsp = _check_spatial("conv_transpose", x, w, attrs)
    groups = attrs["groups"]
    if x.shape[1] != w.shape[0] or w.shape[0] % groups:
        raise OpTypeError(f"conv_transpose: {x.shape[1]} input channels, weight {w.shape}")
    _bias_check("conv_transpose", types, w.shape[1] * groups)
    if len(attrs["output_padding"]) != nsp:
        raise OpTypeError(f"conv_transpose: output_padding needs {nsp} entries")
    pad, st, dil = attrs["padding"], attrs["stride"], attrs["dilation"]
    op_ = attrs["output_padding"]
    out = tuple((x.shape[2 + i] - 1) * st[i] - pad[2 * i] - pad[2 * i + 1]
                + dil[i] * (w.shape[2 + i] - 1) + op_[i] + 1 for i in range(nsp))
    if min(out) < 1:
        raise OpTypeError(f"conv_transpose: empty output {out}")
    return TensorType((x.shape[0], w.shape[1] * groups) + out, float_type(types, attrs).dtype)


def _conv_transpose_macs(node: Node) -> int:
    x, w = node.inputs[0].shape, node.inputs[1].shape
    return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))


@defop("conv_transpose", (2, 3), conv_transpose_type, category="nn",
       attrs={**_conv_attrs(), "output_padding": AttrSpec("ints")}, macs=_conv_transpose_macs,
       integer=lowers("qconv_transpose", "requantize"), cost=GEMM, mirror=NO_MIRROR)
def conv_transpose(attrs: Attrs, x: np.ndarray, w: np.ndarray,
                   b: np.ndarray | None = None) -> np.ndarray:
    """The adjoint of conv: zero-stuff the input by `stride`, pad by d*(k-1) - padding (plus
    output_padding on the high side), then conv with the flipped, in/out-swapped kernel."""
    groups, kernel, nsp = attrs["groups"], w.shape[2:], w.ndim - 2
    stride, dil = attrs["stride"], attrs["dilation"]
    n, c = x.shape[:2]
    stuffed = np.zeros((n, c) + tuple((s - 1) * (st - 1) + s for s, st in zip(x.shape[2:], stride,
                                                                             strict=True)),
                       dtype=x.dtype)
    stuffed[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in stride)] = x
    padding: list[int] = []
    for i in range(nsp):
        edge = dil[i] * (kernel[i] - 1)
        padding += [edge - attrs["padding"][2 * i],
                    edge - attrs["padding"][2 * i + 1] + attrs["output_padding"][i]]
    og = w.shape[1]
    flipped = np.flip(w, axis=tuple(range(2, 2 + nsp)))
    wconv = flipped.reshape((groups, c // groups, og) + kernel).swapaxes(1, 2)
    wconv = wconv.reshape((groups * og, c // groups) + kernel)
    inner = Attrs({"stride": (1,) * nsp, "padding": tuple(padding), "dilation": dil,
                   "groups": groups})
    return conv(inner, stuffed, np.ascontiguousarray(wconv), b)


def matmul_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    a, b = types
    if a.rank < 1 or b.rank < 1:
        raise OpTypeError("matmul: operands must have rank >= 1")
    if a.shape[-1] != (b.shape[-2] if b.rank > 1 else b.shape[0]):
        raise OpTypeError(f"matmul: inner dimensions of {a.shape} and {b.shape} differ")
    if a.dtype != b.dtype:
        raise OpTypeError(f"matmul: operand dtypes differ: {a.dtype}, {b.dtype}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    rows = a.shape[-2:-1] if a.rank > 1 else ()
    cols = b.shape[-1:] if b.rank > 1 else ()
    return TensorType(batch + rows + cols, a.dtype)


def _matmul_macs(node: Node) -> int:
    return int(np.prod(node.shape, dtype=np.int64)) * node.inputs[0].shape[-1]


@defop("matmul", 2, matmul_type, category="nn", macs=_matmul_macs,
       integer=lowers("qmatmul", "requantize"), cost=GEMM,
       mirror=lambda a, x, y: torch.matmul(x, y))
def matmul(attrs: Attrs, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy.matmul: batched over leading axes with broadcasting."""
    return np.matmul(a, b)


def dense(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w.T over x's last axis, as one 2-D BLAS call (numpy loops over a batched matmul)."""
    return np.matmul(x.reshape(-1, x.shape[-1]), w.T).reshape(x.shape[:-1] + (w.shape[0],))


def linear_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, w = types[:2]
    if w.rank != 2 or x.rank < 1 or x.shape[-1] != w.shape[1]:
        raise OpTypeError(f"linear: input {x.shape} does not match weight {w.shape}")
    _bias_check("linear", types, w.shape[0])
    return TensorType(x.shape[:-1] + (w.shape[0],), float_type(types, attrs).dtype)


@defop("linear", (2, 3), linear_type, category="nn", macs=_matmul_macs,
       integer=lowers("qlinear", "requantize"), cost=GEMM,
       mirror=lambda a, x, w, b=None: F.linear(x, w, b))
def linear(attrs: Attrs, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x @ w.T + b, with w of shape (out_features, in_features)."""
    y = dense(x, w)
    return y if b is None else (y + b).astype(x.dtype, copy=False)


def _norm_type(op: str, channels_of):  # noqa: ANN001, ANN202
    def infer(types: list[TensorType], attrs: Attrs) -> TensorType:
        x = types[0]
        want = channels_of(x, attrs)
        for t in types[1:]:
            if t.shape != want or t.dtype != x.dtype:
                raise OpTypeError(f"{op}: parameter {t.shape} {t.dtype}, expected {want} "
                                  f"{x.dtype}")
        return float_type(types, attrs)

    return infer


@defop("batch_norm", 5, _norm_type("batch_norm", lambda x, a: (x.shape[1],)), category="nn",
       attrs={"eps": AttrSpec("float", 1e-5)},
       integer=REWRITTEN,  # folded into a layer, else a per-channel multiply-add
       cost=vector(1), mirror=lambda a, x, g, b, m, v: F.batch_norm(x, m, v, g, b, False, 0.0,
                                                                    a["eps"]))
def batch_norm(attrs: Attrs, x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray,
               var: np.ndarray) -> np.ndarray:
    """Inference batch norm over axis 1: (x - mean) / sqrt(var + eps) * gamma + beta."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    inv = (gamma / np.sqrt(var + np.float32(attrs["eps"]))).reshape(shape)
    return ((x - mean.reshape(shape)) * inv + beta.reshape(shape)).astype(x.dtype, copy=False)


def _normalise(x: np.ndarray, axes: tuple[int, ...], eps: float,
               centre: bool = True) -> np.ndarray:
    """(x - mean) / sqrt(var + eps), the statistics accumulated in float64 and rounded to x's
    dtype, so a constant group centres to exact zeros (as PyTorch's Welford statistics do).
    Without `centre`, x / sqrt(mean(x^2) + eps): RMSNorm."""
    mean = x.mean(axis=axes, keepdims=True, dtype=np.float64).astype(x.dtype)
    centred = x - mean if centre else x
    var = np.square(centred, dtype=np.float64).mean(axis=axes, keepdims=True).astype(x.dtype)
    return centred / np.sqrt(var + np.float32(eps))


def _layer_norm_shape(x: TensorType, attrs: Attrs) -> tuple[int, ...]:
    if not 1 <= attrs["ndim"] <= x.rank:
        raise OpTypeError(f"layer_norm: ndim {attrs['ndim']} outside 1..{x.rank}")
    return x.shape[-attrs["ndim"]:]


def _norm_mirror(a: Attrs, x: torch.Tensor, g: torch.Tensor | None = None,
                 b: torch.Tensor | None = None) -> torch.Tensor:
    shape = x.shape[x.ndim - a["ndim"]:]
    if not a.get("rms"):
        return F.layer_norm(x, shape, g, b, a["eps"])
    y = F.rms_norm(x, shape, g, a["eps"])
    return y if b is None else y + b


@defop("layer_norm", (1, 3), _norm_type("layer_norm", _layer_norm_shape),
       category="nn", attrs={"ndim": AttrSpec("int", 1, min=1), "eps": AttrSpec("float", 1e-5),
                             "rms": AttrSpec("bool", None)},
       integer=lowers("qlayer_norm", "requantize"), cost=vector(1), mirror=_norm_mirror)
def layer_norm(attrs: Attrs, x: np.ndarray, gamma: np.ndarray | None = None,
               beta: np.ndarray | None = None) -> np.ndarray:
    """Normalise over the last `ndim` axes (biased variance), then * gamma + beta; with `rms`,
    divide by the root mean square instead (RMSNorm: no centring)."""
    y = _normalise(x, tuple(range(x.ndim - attrs["ndim"], x.ndim)), attrs["eps"],
                   not attrs.get("rms"))
    if gamma is not None:
        y = y * gamma
    if beta is not None:
        y = y + beta
    return y.astype(x.dtype, copy=False)


def _group_norm_channels(x: TensorType, attrs: Attrs) -> tuple[int, ...]:
    if x.shape[1] % attrs["groups"]:
        raise OpTypeError(f"group_norm: {x.shape[1]} channels in {attrs['groups']} groups")
    return (x.shape[1],)


@defop("group_norm", (1, 3), _norm_type("group_norm", _group_norm_channels), category="nn",
       attrs={"groups": AttrSpec("int", min=1), "eps": AttrSpec("float", 1e-5)},
       integer=lowers("qgroup_norm", "requantize"), cost=vector(1),
       mirror=lambda a, x, g=None, b=None: F.group_norm(x, a["groups"], g, b, a["eps"]))
def group_norm(attrs: Attrs, x: np.ndarray, gamma: np.ndarray | None = None,
               beta: np.ndarray | None = None) -> np.ndarray:
    """Normalise each group of channels over (channels in group, spatial); per-channel affine."""
    grouped = x.reshape(x.shape[0], attrs["groups"], -1)
    y = _normalise(grouped, (2,), attrs["eps"]).reshape(x.shape)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y.astype(x.dtype, copy=False)


def _axis_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    if not -types[0].rank <= attrs["axis"] < types[0].rank:
        raise OpTypeError(f"axis {attrs['axis']} out of range for rank {types[0].rank}")
    return float_type(types, attrs)


@defop("softmax", 1, _axis_type, category="nn", attrs={"axis": AttrSpec("int")},
       integer=lowers("qsoftmax"), cost=vector(1), mirror=lambda a, x: torch.softmax(x, a["axis"]))
def softmax(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """exp(x - max) / sum(exp(x - max)) along `axis`."""
    e = np.exp(x - x.max(axis=attrs["axis"], keepdims=True))
    return (e / e.sum(axis=attrs["axis"], keepdims=True)).astype(x.dtype, copy=False)


@defop("log_softmax", 1, _axis_type, category="nn", attrs={"axis": AttrSpec("int")},
       integer=lowers("qlog_softmax"), cost=vector(1),
       mirror=lambda a, x: torch.log_softmax(x, a["axis"]))
def log_softmax(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """x - max - log(sum(exp(x - max))) along `axis`."""
    shifted = x - x.max(axis=attrs["axis"], keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=attrs["axis"], keepdims=True))


def glu_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x = _axis_type(types, attrs)
    axis = attrs["axis"] % x.rank
    if x.shape[axis] % 2:
        raise OpTypeError(f"glu: axis {axis} has odd size {x.shape[axis]}")
    return TensorType(x.shape[:axis] + (x.shape[axis] // 2,) + x.shape[axis + 1:], x.dtype)


@defop("glu", 1, glu_type, category="nn", attrs={"axis": AttrSpec("int", -1)},
       integer=REWRITTEN,  # a sigmoid gate times the other half
       cost=vector(1), mirror=lambda a, x: F.glu(x, a["axis"]))
def glu(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """a * sigmoid(b) where a, b are the two halves of x along `axis`."""
    from .elementwise import _sigmoid

    a, b = np.split(x, 2, axis=attrs["axis"])
    return (a * _sigmoid(b)).astype(x.dtype, copy=False)


def _pool_out(shape: tuple[int, ...], attrs: Attrs) -> tuple[int, ...]:
    """The spatial output size of a pool over an input of `shape`."""
    k, st, pad, dil = attrs["kernel"], attrs["stride"], attrs["padding"], attrs["dilation"]
    nsp = len(k)
    if len(shape) != nsp + 2 or (len(st), len(dil), len(pad)) != (nsp, nsp, 2 * nsp):
        raise OpTypeError(f"pool: {nsp}-d kernel on a rank-{len(shape)} input")
    for i in range(nsp):  # PyTorch's rule, which also keeps ceil_mode's last window well defined
        if max(pad[2 * i], pad[2 * i + 1]) > (dil[i] * (k[i] - 1) + 1) // 2:
            raise OpTypeError(f"pool: padding {pad} exceeds half the kernel {k}")
    out = tuple(_spatial_out(shape[2 + i], k[i], st[i], pad[2 * i], pad[2 * i + 1], dil[i],
                             attrs["ceil_mode"]) for i in range(nsp))
    if min(out) < 1:
        raise OpTypeError(f"pool: empty output {out}")
    return out


def pool_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    return TensorType(types[0].shape[:2] + _pool_out(types[0].shape, attrs), types[0].dtype)


def _pool_attrs(**extra: AttrSpec) -> dict[str, AttrSpec]:
    return {"kernel": AttrSpec("ints", min=1), "stride": AttrSpec("ints", min=1),
            "padding": AttrSpec("ints", min=0), "dilation": AttrSpec("ints", min=1),
            "ceil_mode": AttrSpec("bool", False), **extra}


def _pool_windows(attrs: Attrs, x: np.ndarray, out: tuple[int, ...],
                  fill: float) -> np.ndarray:
    """Windows of x padded by `padding` plus whatever ceil_mode's last window reads past the end."""
    k, st, dil, pad = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["padding"]
    padding = []
    for i in range(len(k)):
        need = (out[i] - 1) * st[i] + dil[i] * (k[i] - 1) + 1
        padding += [pad[2 * i], max(need - x.shape[2 + i] - pad[2 * i], pad[2 * i + 1])]
    return _windows(_pad(x, tuple(padding), fill), k, st, dil)


def _reduce_windows(win: np.ndarray, nsp: int, fn) -> np.ndarray:  # noqa: ANN001
    return fn(win, axis=tuple(range(win.ndim - nsp, win.ndim)))


@defop("max_pool", 1, pool_type, category="nn", attrs=_pool_attrs(),
       integer=moves("max_pool"), cost=vector(1), mirror=NO_MIRROR)
def max_pool(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Max over each (dilated) window; padding reads as -inf."""
    out = _pool_out(x.shape, attrs)
    win = _pool_windows(attrs, x, out, -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min)
    return _reduce_windows(win, len(out), np.max)


@defop("avg_pool", 1, pool_type, category="nn",
       attrs=_pool_attrs(count_include_pad=AttrSpec("bool", True)),
       integer=lowers("qavg_pool", "keep"), cost=vector(1), mirror=NO_MIRROR)
def avg_pool(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Mean over each window. The divisor counts the explicit padding when count_include_pad,
    never the extra cells ceil_mode reads past the padded input (PyTorch's rule)."""
    total, count = pool_sum_and_count(attrs, x)
    return (total / count).astype(x.dtype, copy=False)


def pool_sum_and_count(attrs: Attrs, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """avg_pool's window sums (padding reads 0) and divisors, in x's dtype."""
    out = _pool_out(x.shape, attrs)
    nsp = len(out)
    total = _reduce_windows(_pool_windows(attrs, x, out, 0), nsp, np.sum)
    ones = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    if attrs["count_include_pad"]:
        ones = _pad(ones, attrs["padding"], 1)
        inner = Attrs({**attrs, "padding": (0,) * (2 * nsp)})
        count = _reduce_windows(_pool_windows(inner, ones, out, 0), nsp, np.sum)
    else:
        count = _reduce_windows(_pool_windows(attrs, ones, out, 0), nsp, np.sum)
    return total, count


def adaptive_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, size = types[0], attrs["size"]
    if x.rank != len(size) + 2:
        raise OpTypeError(f"adaptive_avg_pool: {len(size)}-d size on a rank-{x.rank} input")
    return TensorType(x.shape[:2] + tuple(size), float_type(types, attrs).dtype)


def _along(x: np.ndarray, axis: int, matrix: np.ndarray) -> np.ndarray:
    """Apply (out, in) `matrix` to `axis` of x."""
    return np.moveaxis(np.tensordot(matrix, x, axes=([1], [axis])), 0, axis)


@defop("adaptive_avg_pool", 1, adaptive_type, category="nn",
       attrs={"size": AttrSpec("ints", min=1)},
       integer=lowers("qadaptive_avg_pool", "keep"),  # a global one: prepare makes it a mean
       cost=vector(1), mirror=NO_MIRROR)
def adaptive_avg_pool(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Output cell i averages input cells [floor(i*in/out), ceil((i+1)*in/out))."""
    for i, out in enumerate(attrs["size"]):
        member = adaptive_windows(x.shape[2 + i], out)
        x = _along(x, 2 + i, (member / member.sum(axis=1, keepdims=True)).astype(x.dtype))
    return x


def adaptive_windows(size: int, out: int) -> np.ndarray:
    """(out, size) 0/1 matrix: output cell o covers [floor(o*size/out), ceil((o+1)*size/out))."""
    member = np.zeros((out, size))
    for o in range(out):  # a loop over output *size*, not over pixels
        member[o, (o * size) // out:-(-((o + 1) * size) // out)] = 1
    return member


def resize_type(types: list[TensorType], attrs: Attrs) -> TensorType:
    x, size = types[0], attrs["size"]
    if x.rank != len(size) + 2 or len(attrs["scales"]) != len(size):
        raise OpTypeError(f"resize: {len(size)}-d size on a rank-{x.rank} input")
    return TensorType(x.shape[:2] + tuple(size), x.dtype)


def _resize_matrix(mode: str, size_in: int, size_out: int, scale: float,
                   align_corners: bool) -> np.ndarray:
    """(out, in) interpolation matrix reproducing PyTorch's source-index arithmetic (float32)."""
    dst = np.arange(size_out, dtype=np.float32)
    ratio = np.float32(1 / scale) if scale > 0 else np.float32(size_in / size_out)
    matrix = np.zeros((size_out, size_in), dtype=np.float32)
    rows = np.arange(size_out)
    if mode == "nearest":
        src = np.minimum(np.floor(dst * ratio).astype(np.int64), size_in - 1)
        matrix[rows, src] = 1
        return matrix
    if align_corners:
        ratio = np.float32((size_in - 1) / (size_out - 1)) if size_out > 1 else np.float32(0)
        src = dst * ratio
    else:
        src = np.maximum((dst + np.float32(0.5)) * ratio - np.float32(0.5), 0)
    lo = np.minimum(np.floor(src).astype(np.int64), size_in - 1)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    np.add.at(matrix, (rows, lo), 1 - frac)
    np.add.at(matrix, (rows, hi), frac)
    return matrix


@defop("resize", 1, resize_type, category="nn",
       attrs={"size": AttrSpec("ints", min=1),
              "mode": AttrSpec("str", choices=("nearest", "bilinear")),
              "scales": AttrSpec("floats"), "align_corners": AttrSpec("bool", False)},
       integer=lowers("qresize", "keep"), cost=vector(1), mirror=NO_MIRROR)
def resize(attrs: Attrs, x: np.ndarray) -> np.ndarray:
    """Nearest or (bi)linear resampling of the spatial axes to `size`. `scales` are the user's
    scale factors (0 = derive from sizes), which PyTorch uses for the source index when given."""
    for i, out in enumerate(attrs["size"]):
        matrix = _resize_matrix(attrs["mode"], x.shape[2 + i], out, attrs["scales"][i],
                                attrs["align_corners"])
        x = _along(x, 2 + i, matrix.astype(x.dtype))
    return x
