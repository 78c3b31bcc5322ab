"""Windowed and indexed ops: pooling, resizing and gather.

Max and average pools (`ops/window.c.j2`) copy each channel into a plane padded on every side to
cover all windows (with the dtype's minimum for max_pool, the accumulator's initial value, and
with the zero point for avg_pool, so that padding adds a real 0), then per output row update a
row of accumulators tap by tap, one strided load per cell: a loop gcc vectorises. An average's
divisor is the product of per-axis counts from `_pool_rows`, counting whatever
`nn.pool_sum_and_count` counts (padding with count_include_pad, the valid taps without).
Adaptive pools (`ops/pool.c.j2`), whose windows vary, walk each output cell's window from a
constant table of (first input index, taps, divisor) rows per spatial axis. Resize
(`ops/resize.c.j2`) reads per axis a table of source indices and Q16 weights
(`quantized._resize_weights`, zero weights dropped): nearest is a copy, bilinear one exact int64
weighted sum rounded once. Gather (`ops/gather.c.j2`) copies rows picked by an index tensor,
negative indices counting from the end. Operands are local pointers (`declare` in
`_macros.j2`).
"""

from __future__ import annotations

import math

import numpy as np

from npuc.errors import UnsupportedError
from npuc.ir import DType, Node
from npuc.ops import quantized as q
from npuc.ops.quantized import per_tensor
from npuc.quant import arith

from ..view import Context, Kernel, ctype, limits, lit
from . import kernel
from .elementwise import contiguous
from .reduce import Base, operand, output, sum_type


def _table(ctx: Context, name: str, rows: list) -> Base:
    """A constant int32 table of `rows`, as the local pointer `name`."""
    return ("const npuc_i32", name, ctx.array(np.array(rows, dtype=np.int32).ravel(), "npuc_i32"))


def _counts(size: int, out: int, k: int, stride: int, lo: int, hi: int, dilation: int,
            include_pad: bool) -> list[int]:
    """An average pool's divisor per output cell along one axis (nn.pool_sum_and_count's)."""
    counts = []
    for o in range(out):
        taps = [o * stride - lo + j * dilation for j in range(k)]
        valid = sum(0 <= t < size for t in taps)
        count = sum(t < size + hi for t in taps) if include_pad else valid
        # a window of padding only sums to 0: any divisor gives the interpreter's 0 // 0 == 0
        counts.append(max(count, 1))
    return counts


@kernel("max_pool", "qavg_pool")
def _window_pool(node: Node, ctx: Context) -> Kernel:
    """`ops/window.c.j2`: the image in a padded plane, whole output rows updated per tap."""
    x, a = node.inputs[0], node.attrs
    size, out = x.shape[2:], node.shape[2:]
    kernel_, stride, dilation = a["kernel"], a["stride"], a["dilation"]
    lo = a["padding"][0::2]
    # plane coordinate = input index + lo, wide enough for every tap of every window
    plane = [max(n + p, (o - 1) * s + (k - 1) * d + 1) for n, p, o, s, k, d in zip(
        size, lo, out, stride, kernel_, dilation, strict=True)]
    ps, xs, ys = contiguous(tuple(plane)), contiguous(size), contiguous(out)
    nsp = len(out)
    base = " + ".join([f"(p{i} * {stride[i]} + t{i} * {dilation[i]}) * {ps[i]}"
                       for i in range(nsp - 1)] + [f"t{nsp - 1} * {dilation[-1]}"])
    average = node.op == "qavg_pool"
    if average:
        zp_in, zp_out = per_tensor(x.type)[1], per_tensor(node.type)[1]
        fill, acc_type = zp_in, sum_type(math.prod(kernel_), x.dtype)
    else:
        fill = 0 if x.dtype == DType.BOOL else int(np.iinfo(x.dtype.numpy).min)
        acc_type = ctype(x.dtype)
    params = {
        "nc": x.shape[0] * x.shape[1], "x_type": ctype(x.dtype), "y_type": ctype(node.dtype),
        "acc_type": acc_type, "in_block": math.prod(size), "out_block": math.prod(out),
        "plane_size": math.prod(plane), "fill": lit(fill), "sizes": list(size),
        "plane_at": " + ".join(f"(i{i} + {lo[i]}) * {ps[i]}" for i in range(nsp)),
        "x_at": " + ".join(f"i{i} * {xs[i]}" for i in range(nsp)),
        "outer": list(out[:-1]), "kernel": list(kernel_), "width": out[-1], "base": base,
        "step": stride[-1], "y_at": " + ".join([f"p{i} * {ys[i]}" for i in range(nsp - 1)] + ["0"]),
    }
    bases = [operand("x", x, ctx), output(node, ctx),
             (ctype(x.dtype), "plane", ctx.scratch(math.prod(plane) * x.dtype.numpy.itemsize,
                                                   ctype(x.dtype))),
             (acc_type, "acc", ctx.scratch(out[-1] * 8, acc_type))]
    if not average:
        params.update(init=lit(fill), accumulate="if (v > acc[q]) acc[q] = v", result="acc[q]")
        return Kernel("window", {**params, "bases": bases})
    # divisors per axis, as nn.pool_sum_and_count counts them; a window of padding sums to 0
    include = a["count_include_pad"]
    counts = [_counts(size[i], out[i], kernel_[i], stride[i], lo[i], a["padding"][2 * i + 1],
                      dilation[i], include) for i in range(nsp)]
    bases += [_table(ctx, f"count{i}", c) for i, c in enumerate(counts)]
    count = " * ".join([f"(npuc_i64)count{i}[p{i}]" for i in range(nsp - 1)]
                       + [f"(npuc_i64)count{nsp - 1}[q]"])
    total = f"((npuc_i64)acc[q] - {lit(math.prod(kernel_) * zp_in)})"
    lo_y, hi_y = limits(node.dtype)
    params.update(init="0", accumulate="acc[q] += v",
                  result=f"npuc_clamp(npuc_div_round({total}, {count}) + {zp_out}, {lo_y}, "
                         f"{hi_y})")
    return Kernel("window", {**params, "bases": bases})


@kernel("qadaptive_avg_pool")
def _adaptive_pool(node: Node, ctx: Context) -> Kernel:
    """`ops/pool.c.j2`: each cell's window from a table of (first index, taps) per axis."""
    x = node.inputs[0]
    in_sp, out_sp = x.shape[2:], node.shape[2:]
    rows = []
    for size, out in zip(in_sp, out_sp, strict=True):
        bounds = [((o * size) // out, -(-((o + 1) * size) // out)) for o in range(out)]
        rows.append([(a, b - a) for a, b in bounds])
    in_strides, out_strides = contiguous(in_sp), contiguous(out_sp)
    zp_in, zp_out = per_tensor(x.type)[1], per_tensor(node.type)[1]
    taps = " * ".join(f"(npuc_i64)w{i}[1]" for i in range(len(rows)))
    total = f"((npuc_i64)acc - {taps} * {zp_in})" if zp_in else "(npuc_i64)acc"
    lo, hi = limits(node.dtype)
    window = math.prod(max(r[1] for r in axis) for axis in rows)
    return Kernel("pool", {
        "bases": [operand("x", x, ctx), output(node, ctx),
                  *[_table(ctx, f"window{i}", r) for i, r in enumerate(rows)]],
        "nc": x.shape[0] * x.shape[1], "x_type": ctype(x.dtype), "y_type": ctype(node.dtype),
        "in_block": math.prod(in_sp), "out_block": math.prod(out_sp),
        "axes": [{"out": o} for o in out_sp],
        "v_at": " + ".join(f"(w{i}[0] + k{i}) * {s}" for i, s in enumerate(in_strides)),
        "y_at": " + ".join(f"p{i} * {t}" for i, t in enumerate(out_strides)),
        "acc_type": sum_type(window, x.dtype), "init": "0", "accumulate": "acc += v",
        "result": f"npuc_clamp(npuc_div_round({total}, {taps}) + {zp_out}, {lo}, {hi})"})


@kernel("qresize")
def _qresize(node: Node, ctx: Context) -> Kernel:
    x = node.inputs[0]
    in_sp, out_sp = x.shape[2:], node.shape[2:]
    weights = [q._resize_weights(node.attrs, i, size) for i, size in enumerate(in_sp)]
    taps = []
    for w in weights:  # the nonzero weights of each row, padded with zero weights
        rows = [[(int(j), int(w[o, j])) for j in np.flatnonzero(w[o])] for o in range(len(w))]
        width = max(len(r) for r in rows)
        taps.append([r + [r[0][:1] + (0,)] * (width - len(r)) for r in rows])
    nearest = all(len(r) == 1 and r[0][1] == 1 << q.RESIZE_BITS for t in taps for r in t)
    (_, zp_in), zp_out = per_tensor(x.type), per_tensor(node.type)[1]
    lo, hi = arith.dtype_range(x.dtype)
    shift = q.RESIZE_BITS * len(out_sp)
    bound = (max(hi - zp_in, zp_in - lo) << shift) * math.prod(len(t[0]) for t in taps)
    if not nearest and bound >= 1 << 62:
        raise UnsupportedError(f"{len(out_sp)}-d interpolation of {x.dtype} overflows int64",
                               op=node.op, loc=node.loc, stage="emit-c",
                               hint="resize at most two axes at a time")
    in_strides, out_strides = contiguous(in_sp), contiguous(out_sp)
    axes = [{"out": o, "taps": len(t[0])} for o, t in zip(out_sp, taps, strict=True)]
    tables = [_table(ctx, f"index{i}", [[j for j, _ in r] for r in t]) for i, t in enumerate(taps)]
    if not nearest:
        tables += [_table(ctx, f"weight{i}", [[w for _, w in r] for r in t])
                   for i, t in enumerate(taps)]
    out_lo, out_hi = limits(node.dtype)
    return Kernel("resize", {
        "bases": [operand("x", x, ctx), output(node, ctx), *tables],
        "nc": x.shape[0] * x.shape[1], "x_type": ctype(x.dtype),
        "y_type": ctype(node.dtype), "in_block": math.prod(in_sp),
        "out_block": math.prod(out_sp), "axes": axes, "nearest": nearest,
        "v_at": " + ".join(f"i{i}[{'0' if nearest else f'a{i}'}] * {s}"
                           for i, s in enumerate(in_strides)),
        "weight": " * ".join(f"(npuc_i64)w{i}[a{i}]" for i in range(len(out_sp))),
        "y_at": " + ".join(f"p{i} * {t}" for i, t in enumerate(out_strides)),
        "zp_in": zp_in, "zp_out": zp_out, "den": lit(1 << shift), "lo": out_lo, "hi": out_hi})


@kernel("gather")
def _gather(node: Node, ctx: Context) -> Kernel:
    x, idx = node.inputs
    axis = node.attrs["axis"] % len(x.shape)
    return Kernel("gather", {
        "bases": [operand("x", x, ctx), operand("idx", idx, ctx), output(node, ctx)],
        "x_type": ctype(x.dtype), "y_type": ctype(node.dtype),
        "outer": math.prod(x.shape[:axis]), "count": idx.type.size,
        "n": x.shape[axis], "inner": math.prod(x.shape[axis + 1:])})
