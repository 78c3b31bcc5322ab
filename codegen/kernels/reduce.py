"""Reductions, softmax and normalisation: an outer walk over the kept axes, an inner one over the
reduced axes.

`split(shape, axes)` turns a reduction into two loop nests with literal extents and strides (axes
of extent 1 dropped, adjacent axes that stay contiguous merged), so a reduction over the last
axes is one flat inner loop and any other set of axes a strided walk. The kernels:

    qsum, qmean, amax, amin        ops/reduce.c.j2   one pass: accumulate, then store
    qsoftmax, qlog_softmax         ops/softmax.c.j2  max, exp table sum, result (one axis)
    qlayer_norm, qgroup_norm       ops/norm.c.j2     mean, variance, normalise + affine

Every rule is `npuc.ops.quantized`'s, literal for literal: the same multipliers (from
`arith.quantize_multiplier`), the same clamps, the exp and log tables as constant arrays, and
left shifts of possibly negative values written as multiplications.

Each layer names its operands as local pointers (`bases`, printed by `declare` in
`_macros.j2`).
"""

from __future__ import annotations

import math

from npuc.errors import UnsupportedError
from npuc.ir import DType, Node
from npuc.ops import quantized as q
from npuc.ops.quantized import per_tensor
from npuc.quant import arith

from ..view import Context, Kernel, ctype, limits, lit
from . import kernel
from .elementwise import contiguous, requantized

Loop = tuple[int, int, int]  # (extent, input stride, output stride), in elements


def merged(loops: list[Loop]) -> list[Loop]:
    """`loops` without unit extents, adjacent loops that step contiguously (in both strides)
    fused; one loop of extent 1 when nothing is left."""
    out: list[Loop] = []
    for n, s, t in loops:
        if n == 1:
            continue
        if out and out[-1][1] == s * n and out[-1][2] == t * n:
            out[-1] = (out[-1][0] * n, s, t)
        else:
            out.append((n, s, t))
    return out or [(1, 0, 0)]


def split(shape: tuple[int, ...], axes: tuple[int, ...] | list[int],
          same_layout: bool = False) -> tuple[list[Loop], list[Loop]]:
    """(outer, inner) loops of a reduction of `shape` over `axes`: outer walks the kept axes
    (output strides of the reduced, C-ordered result, or the input's own with `same_layout`),
    inner the reduced axes (both strides the input's)."""
    rank = len(shape)
    reduced = {a % rank for a in axes}
    strides = contiguous(shape)
    kept = [i for i in range(rank) if i not in reduced]
    out_strides = ([strides[i] for i in kept] if same_layout
                   else list(contiguous(tuple(shape[i] for i in kept))))
    outer = merged([(shape[i], strides[i], t) for i, t in zip(kept, out_strides, strict=True)])
    inner = merged([(shape[i], strides[i], strides[i]) for i in sorted(reduced)])
    return outer, inner


def index(loops: list[Loop], name: str, which: int = 1) -> str:
    """C for the offset sum(<name>i * loops[i][which]) ("0" when every stride is 0)."""
    terms = [f"{name}{i}" if loop[which] == 1 else f"{name}{i} * {loop[which]}"
             for i, loop in enumerate(loops) if loop[which]]
    return " + ".join(terms) or "0"


def sum_type(count: int, dtype: DType) -> str:
    """The narrowest C accumulator that holds a sum of `count` values of `dtype`."""
    lo, hi = arith.dtype_range(dtype) if dtype != DType.BOOL else (0, 1)
    return "npuc_i32" if count * max(-lo, hi) < 1 << 31 else "npuc_i64"


Base = tuple[str, str, str]  # (C pointee type, local name, pointer expression)


def operand(name: str, node: Node, ctx: Context) -> Base:
    """A read-only local pointer to `node`'s elements."""
    return (f"const {ctype(node.dtype)}", name, ctx.ptr(node))


def output(node: Node, ctx: Context, name: str = "y") -> Base:
    """A writable local pointer to `node`'s elements."""
    return (ctype(node.dtype), name, ctx.ptr(node))


def requantize32(acc: str, real: float) -> str:
    """C for `arith.requantize(acc, real, 0, I32)`."""
    m, s = arith.quantize_multiplier(float(real))
    return f"npuc_requantize({acc}, {m}, {s}, 0, NPUC_INT32_MIN, NPUC_INT32_MAX)"


# -- sums, means, max and min -------------------------------------------------------------------

def _reduction(node: Node, ctx: Context, acc_type: str, init: str, accumulate: str,
               result: str) -> Kernel:
    x = node.inputs[0]
    outer, inner = split(x.shape, node.attrs["axes"])
    return Kernel("reduce", {
        "bases": [operand("x", x, ctx), output(node, ctx)], "outer": outer, "inner": inner,
        "x_type": ctype(x.dtype), "y_type": ctype(node.dtype), "acc_type": acc_type,
        "x_at": index(outer, "o", 1), "y_at": index(outer, "o", 2), "v_at": index(inner, "r"),
        "init": init, "accumulate": accumulate, "result": result})


@kernel("qsum", "qmean")
def _qsum(node: Node, ctx: Context) -> Kernel:
    x = node.inputs[0]
    n = math.prod(x.shape[a] for a in node.attrs["axes"])
    (s_in, zp_in), s_out = per_tensor(x.type), per_tensor(node.type)[0]
    real = s_in / ((n if node.op == "qmean" else 1) * s_out)
    total = f"(npuc_i64)acc - {lit(n * zp_in)}" if zp_in else "(npuc_i64)acc"
    return _reduction(node, ctx, sum_type(n, x.dtype), "0", "acc += v",
                      requantized(f"npuc_sat32({total})", real, node))


@kernel("amax", "amin")
def _extreme(node: Node, ctx: Context) -> Kernel:
    compare = ">" if node.op == "amax" else "<"
    return _reduction(node, ctx, ctype(node.inputs[0].dtype), "xp[0]",
                      f"if (v {compare} acc) acc = v", "acc")


# -- softmax ------------------------------------------------------------------------------------

def exp_expr(node: Node, table: str, d: str) -> str:
    """C for `quantized.exp_lookup(node, d, table)` (d >= 0, int64)."""
    size = node.inputs[1].type.size
    if size == 256:
        return f"(npuc_i64){table}[{d} < 255 ? {d} : 255]"
    if size != 513:
        raise UnsupportedError(f"an exp table of {size} entries", op=node.op, loc=node.loc,
                               stage="emit-c")
    real = per_tensor(node.inputs[0].type)[0] * (128 * 512 / q.EXP_RANGE)
    u = requantize32(f"({d} < NPUC_INT32_MAX ? {d} : NPUC_INT32_MAX)", real)
    return f"npuc_sat32(npuc_lookup513(npuc_clamp({u}, NPUC_INT32_MIN, 65535) - 32768, {table}))"


def _softmax_params(node: Node, ctx: Context) -> dict:
    x = node.inputs[0]
    if node.inputs[1].type.size not in (256, 513):
        raise UnsupportedError(f"an exp table of {node.inputs[1].type.size} entries", op=node.op,
                               loc=node.loc, stage="emit-c")
    axis = node.attrs["axis"] % len(x.shape)
    outer, inner = split(x.shape, (axis,), same_layout=True)
    n, step = x.shape[axis], inner[0][1]
    lo, hi = limits(node.dtype)
    return {"bases": [operand("x", x, ctx), output(node, ctx), operand("exp_table", node.inputs[1],
                                                                       ctx)],
            "outer": outer, "x_type": ctype(x.dtype), "y_type": ctype(node.dtype),
            "x_at": index(outer, "o", 1), "y_at": index(outer, "o", 2), "n": n,
            "r": "r" if step == 1 else f"r * {step}", "exp": exp_expr(node, "exp_table", "d"),
            "zp": per_tensor(node.type)[1], "lo": lo, "hi": hi}


@kernel("qsoftmax")
def _qsoftmax(node: Node, ctx: Context) -> Kernel:
    params = _softmax_params(node, ctx)
    params["bases"].append(("npuc_i32", "e", ctx.scratch(4 * params["n"], "npuc_i32")))
    params.update(log=False, masked=node.inputs[0].dtype == DType.I16,
                  one=round(1 / per_tensor(node.type)[0]))
    return Kernel("softmax", params)


@kernel("qlog_softmax")
def _qlog_softmax(node: Node, ctx: Context) -> Kernel:
    params = _softmax_params(node, ctx)
    s_in, s_out = per_tensor(node.inputs[0].type)[0], per_tensor(node.type)[0]
    params["bases"].append(operand("log_table", node.inputs[2], ctx))
    params.update(log=True, ln2=q.LN2_Q16, bits=q.EXP_BITS,
                  shifted=requantize32("-d", s_in / s_out),
                  log_sum=requantize32("log_q16", 2.0 ** -q.EXP_BITS / s_out))
    return Kernel("softmax", params)


# -- layer and group norm -----------------------------------------------------------------------

def _norm(node: Node, ctx: Context, blocks: int, groups: int, channels: int,
          spatial: int) -> Kernel:
    """Normalise `blocks` contiguous blocks of channels * spatial elements; block b's element
    (c, s) takes its affine parameters at (b % groups) * channels + c."""
    x, mult, shift, bias = node.inputs
    s_in, zp_in = per_tensor(x.type)
    n = channels * spatial
    eps = round(node.attrs["eps"] * (1 << 2 * q.MEAN_BITS) / s_in ** 2)
    lo, hi = limits(node.dtype)
    return Kernel("norm", {
        "bases": [operand("x", x, ctx), output(node, ctx), operand("mult", mult, ctx),
                  operand("shift", shift, ctx), operand("bias", bias, ctx)],
        "x_type": ctype(x.dtype), "y_type": ctype(node.dtype), "blocks": blocks,
        "groups": groups, "channels": channels, "centre": not node.attrs.get("rms"),
        "spatial": spatial, "n": n, "sum_type": sum_type(n, x.dtype), "zp_in": zp_in,
        "n_zp": lit(n * zp_in), "mean_scale": 1 << q.MEAN_BITS, "eps": lit(min(eps, q.EPS_MAX)),
        "std_scale": 1 << 2 * (q.STD_BITS - q.MEAN_BITS),
        "norm_scale": 1 << (q.NORM_BITS + q.STD_BITS - q.MEAN_BITS),
        "zp": per_tensor(node.type)[1], "lo": lo, "hi": hi})


@kernel("qlayer_norm")
def _qlayer_norm(node: Node, ctx: Context) -> Kernel:
    shape, ndim = node.inputs[0].shape, node.attrs["ndim"]
    n = math.prod(shape[len(shape) - ndim:])
    return _norm(node, ctx, math.prod(shape[:len(shape) - ndim]), 1, n, 1)


@kernel("qgroup_norm")
def _qgroup_norm(node: Node, ctx: Context) -> Kernel:
    shape, groups = node.inputs[0].shape, node.attrs["groups"]
    return _norm(node, ctx, shape[0] * groups, groups, shape[1] // groups,
                 math.prod(shape[2:]))
