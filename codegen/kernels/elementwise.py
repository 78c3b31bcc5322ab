"""Elementwise ops and data movement as strided maps: out[i] = expr(a[...], b[...], ...).

One template (`ops/map.c.j2`) runs every op here: nested loops over the output with literal
extents, each operand read at its own literal offset and strides (0 where it broadcasts,
negative where it flips, permuted for a transpose), and a C expression over the loaded values
`v0, v1, ...`. Adjacent axes that are contiguous for every operand are merged first, so a
reshape is one flat loop and an elementwise add one vectorisable loop. The expressions call the
runtime's `npuc_requantize` & co. with literal multipliers, exactly as `npuc.ops.quantized` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from npuc.errors import UnsupportedError
from npuc.ir import DType, Node
from npuc.ops.quantized import per_tensor
from npuc.quant import arith

from ..view import Context, Kernel, ctype, limits, lit
from . import kernel


@dataclass(frozen=True)
class Operand:
    ptr: str
    ctype: str
    offset: int
    strides: tuple[int, ...]


@dataclass(frozen=True)
class Part:
    """One loop nest: `shape` iterated, the output at `out_offset` + strides, `expr` stored."""

    shape: tuple[int, ...]
    out: Operand
    operands: tuple[Operand, ...]
    expr: str


def contiguous(shape: tuple[int, ...]) -> tuple[int, ...]:
    """C-order strides, in elements."""
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= d
    return tuple(reversed(strides))


def broadcast(shape: tuple[int, ...], into: tuple[int, ...]) -> tuple[int, ...]:
    """Strides reading a C-ordered `shape` broadcast (numpy rules) into `into`."""
    own = (1,) * (len(into) - len(shape)) + tuple(shape)
    return tuple(0 if d == 1 else s for d, s in zip(own, contiguous(own), strict=True))


def merge(part: Part) -> Part:
    """Merge adjacent axes that every operand walks contiguously; drop unit axes."""
    views = (part.out,) + part.operands
    shape = list(part.shape)
    strides = [list(v.strides) for v in views]
    axis = len(shape) - 1
    while axis > 0:
        if all(s[axis - 1] == s[axis] * shape[axis] for s in strides):
            shape[axis - 1] *= shape[axis]
            del shape[axis]
            for s in strides:
                s[axis - 1] = s[axis]
                del s[axis]
        axis -= 1
    keep = [i for i, d in enumerate(shape) if d != 1] or ([0] if shape else [])
    new = [Operand(v.ptr, v.ctype, v.offset, tuple(s[i] for i in keep))
           for v, s in zip(views, strides, strict=True)]
    return Part(tuple(shape[i] for i in keep), new[0], tuple(new[1:]), part.expr)


def map_kernel(parts: list[Part], fill: tuple[str, int, str] | None = None) -> Kernel:
    """The `map` template over `parts`; `fill` = (pointer, count, value) is stored first."""
    return Kernel("map", {"parts": [merge(p) for p in parts], "fill": fill})


def elementwise(node: Node, ctx: Context, expr: str) -> Kernel:
    """`expr` over the node's operands broadcast to its shape."""
    out = Operand(ctx.ptr(node), ctype(node.dtype), 0, contiguous(node.shape))
    operands = tuple(Operand(ctx.ptr(i), ctype(i.dtype), 0, broadcast(i.shape, node.shape))
                     for i in node.inputs)
    return map_kernel([Part(node.shape, out, operands, expr)])


def _limits(node: Node) -> str:
    return ", ".join(limits(node.dtype))


def requantized(acc: str, real: float, node: Node, zp: int | None = None) -> str:
    """C for `arith.requantize(acc, real, zp, node.dtype)` (zp defaults to the result's)."""
    m, s = arith.quantize_multiplier(float(real))
    zp = per_tensor(node.type)[1] if zp is None else zp
    return f"npuc_requantize({acc}, {m}, {s}, {zp}, {_limits(node)})"


def _centred(node: Node, i: int) -> str:
    return f"((npuc_i64)v{i} - {per_tensor(node.inputs[i].type)[1]})"


# -- pure elementwise ---------------------------------------------------------------------------

_EXPRESSIONS = {
    "where": "v0 ? v1 : v2", "eq": "v0 == v1", "ne": "v0 != v1", "lt": "v0 < v1",
    "le": "v0 <= v1", "gt": "v0 > v1", "ge": "v0 >= v1", "logical_and": "v0 && v1",
    "logical_or": "v0 || v1", "logical_not": "!v0", "maximum": "v0 > v1 ? v0 : v1",
    "minimum": "v0 < v1 ? v0 : v1",
}


@kernel(*_EXPRESSIONS)
def _plain(node: Node, ctx: Context) -> Kernel:
    return elementwise(node, ctx, _EXPRESSIONS[node.op])


@kernel("add", "sub", "mul")
def _integer_arithmetic(node: Node, ctx: Context) -> Kernel:
    """Index arithmetic on plain integers (a position minus one): modular, as numpy's, so in
    unsigned 64 bits (signed overflow is undefined in C) narrowed to the result's type."""
    if node.type.quant is not None or node.dtype == DType.BOOL:
        raise UnsupportedError(f"{node.op} of quantized or boolean values has no C kernel",
                               op=node.op, loc=node.loc, stage="emit-c",
                               hint="the quantize pass lowers arithmetic on activations to qadd, "
                                    "qsub and qmul")
    sign = {"add": "+", "sub": "-", "mul": "*"}[node.op]
    return elementwise(node, ctx, f"({ctype(node.dtype)})((npuc_u64)v0 {sign} (npuc_u64)v1)")


@kernel("cast")
def _cast(node: Node, ctx: Context) -> Kernel:
    expr = "v0 != 0" if node.dtype == DType.BOOL else f"({ctype(node.dtype)})v0"
    return elementwise(node, ctx, expr)


@kernel("quantize")
def _quantize(node: Node, ctx: Context) -> Kernel:
    scale, zp = per_tensor(node.type)
    return elementwise(node, ctx, f"npuc_quantize(v0, {np.float32(scale).item().hex()}f, {zp}, "
                                  f"{_limits(node)})")


@kernel("dequantize")
def _dequantize(node: Node, ctx: Context) -> Kernel:
    scale, zp = per_tensor(node.inputs[0].type)
    return elementwise(node, ctx, f"npuc_dequantize(v0, {np.float32(scale).item().hex()}f, {zp})")


@kernel("rescale")
def _rescale(node: Node, ctx: Context) -> Kernel:
    real = per_tensor(node.inputs[0].type)[0] / per_tensor(node.type)[0]
    expr = requantized(f"npuc_sat32({_centred(node, 0)})", real, node)
    lo, hi = node.attrs.get("min"), node.attrs.get("max")
    if lo is not None or hi is not None:
        full = arith.dtype_range(node.dtype)
        expr = f"npuc_clamp({expr}, {lit(full[0] if lo is None else lo)}, " \
               f"{lit(full[1] if hi is None else hi)})"
    return elementwise(node, ctx, expr)


@kernel("qadd", "qsub")
def _qadd(node: Node, ctx: Context) -> Kernel:
    (s_a, _), (s_b, _) = (per_tensor(i.type) for i in node.inputs)
    left = 20 if max(i.dtype.bits for i in node.inputs) <= 8 else 15
    twice_max = 2 * max(s_a, s_b)
    wide = f"{lit(arith.INT32_MIN)}, {lit(arith.INT32_MAX)}"

    def operand(i: int, s: float) -> str:
        m, e = arith.quantize_multiplier(s / twice_max)
        return f"npuc_requantize({_centred(node, i)} * {1 << left}, {m}, {e}, 0, {wide})"

    sign = "+" if node.op == "qadd" else "-"
    total = f"({operand(0, s_a)} {sign} {operand(1, s_b)})"
    real = twice_max / ((1 << left) * per_tensor(node.type)[0])
    return elementwise(node, ctx, requantized(f"npuc_sat32{total}", real, node))


@kernel("qmul")
def _qmul(node: Node, ctx: Context) -> Kernel:
    (s_a, _), (s_b, _) = (per_tensor(i.type) for i in node.inputs)
    product = f"npuc_sat32({_centred(node, 0)} * {_centred(node, 1)})"
    return elementwise(node, ctx, requantized(product, s_a * s_b / per_tensor(node.type)[0], node))


@kernel("qprelu")
def _qprelu(node: Node, ctx: Context) -> Kernel:
    x, slope = node.inputs
    s_x, s_slope, s_out = (per_tensor(t.type)[0] for t in (x, slope, node))
    positive = requantized(f"npuc_sat32({_centred(node, 0)})", s_x / s_out, node)
    negative = requantized(f"npuc_sat32({_centred(node, 0)} * {_centred(node, 1)})",
                           s_x * s_slope / s_out, node)
    out = Operand(ctx.ptr(node), ctype(node.dtype), 0, contiguous(node.shape))
    if slope.type.size > 1:  # one slope per channel (axis 1)
        strides = tuple(1 if a == 1 else 0 for a in range(len(node.shape)))
    else:
        strides = (0,) * len(node.shape)
    operands = (Operand(ctx.ptr(x), ctype(x.dtype), 0, contiguous(x.shape)),
                Operand(ctx.ptr(slope), ctype(slope.dtype), 0, strides))
    expr = f"{_centred(node, 0)} >= 0 ? {positive} : {negative}"
    return map_kernel([Part(node.shape, out, operands, expr)])


@kernel("lut")
def _lut(node: Node, ctx: Context) -> Kernel:
    x, table = node.inputs
    values = table.data.astype(np.int64)
    if values.size == 256:
        name = ctx.array(values.astype(table.dtype.numpy), ctype(table.dtype))
        index = "v0" if x.dtype == DType.U8 else "v0 + 128"
        expr = f"npuc_clamp({name}[{index}], {_limits(node)})"
    else:
        name = ctx.array(values.astype(np.int32), "npuc_i32")
        expr = f"npuc_clamp(npuc_lookup513(v0, {name}), {_limits(node)})"
    out = Operand(ctx.ptr(node), ctype(node.dtype), 0, contiguous(node.shape))
    operand = Operand(ctx.ptr(x), ctype(x.dtype), 0, contiguous(x.shape))
    return map_kernel([Part(node.shape, out, (operand,), expr)])


# -- data movement ------------------------------------------------------------------------------

def _copy(node: Node, ctx: Context, shape: tuple[int, ...], offset: int,
          strides: tuple[int, ...]) -> Kernel:
    x = node.inputs[0]
    out = Operand(ctx.ptr(node), ctype(node.dtype), 0, contiguous(shape))
    return map_kernel([Part(shape, out, (Operand(ctx.ptr(x), ctype(x.dtype), offset, strides),),
                            "v0")])


@kernel("reshape", "expand")
def _reshape(node: Node, ctx: Context) -> Kernel:
    x = node.inputs[0]
    strides = contiguous(node.shape) if node.op == "reshape" else broadcast(x.shape, node.shape)
    return _copy(node, ctx, node.shape, 0, strides)


@kernel("permute")
def _permute(node: Node, ctx: Context) -> Kernel:
    own = contiguous(node.inputs[0].shape)
    return _copy(node, ctx, node.shape, 0, tuple(own[p] for p in node.attrs["perm"]))


@kernel("slice")
def _slice(node: Node, ctx: Context) -> Kernel:
    x = node.inputs[0]
    axis = node.attrs["axis"] % len(x.shape)
    start = slice(node.attrs["start"], node.attrs["end"], node.attrs["step"]).indices(
        x.shape[axis])[0]
    strides = list(contiguous(x.shape))
    offset = start * strides[axis]
    strides[axis] *= node.attrs["step"]
    return _copy(node, ctx, node.shape, offset, tuple(strides))


@kernel("flip")
def _flip(node: Node, ctx: Context) -> Kernel:
    shape = node.inputs[0].shape
    strides, offset = list(contiguous(shape)), 0
    for a in node.attrs["axes"]:
        a %= len(shape)
        offset += (shape[a] - 1) * strides[a]
        strides[a] = -strides[a]
    return _copy(node, ctx, node.shape, offset, tuple(strides))


@kernel("pixel_shuffle")
def _pixel_shuffle(node: Node, ctx: Context) -> Kernel:
    n, c, h, w = node.shape[0], node.shape[1], node.inputs[0].shape[2], node.inputs[0].shape[3]
    r = node.attrs["factor"]
    s_n, s_c, s_h, s_w = contiguous(node.inputs[0].shape)
    # out[n, c, h*r + i, w*r + j] = x[n, c*r*r + i*r + j, h, w], the output walked as (n,c,h,i,w,j)
    return _copy(node, ctx, (n, c, h, r, w, r), 0, (s_n, r * r * s_c, s_h, r * s_c, s_w, s_c))


@kernel("concat")
def _concat(node: Node, ctx: Context) -> Kernel:
    axis = node.attrs["axis"] % len(node.shape)
    out_strides = contiguous(node.shape)
    parts, at = [], 0
    for x in node.inputs:
        out = Operand(ctx.ptr(node), ctype(node.dtype), at * out_strides[axis], out_strides)
        parts.append(Part(x.shape, out, (Operand(ctx.ptr(x), ctype(x.dtype), 0,
                                                 contiguous(x.shape)),), "v0"))
        at += x.shape[axis]
    return map_kernel(parts)


@kernel("pad")
def _pad(node: Node, ctx: Context) -> Kernel:
    x = node.inputs[0]
    pads = node.attrs["pads"]
    out_strides, in_strides = contiguous(node.shape), contiguous(x.shape)
    shape, out_offset, in_offset = [], 0, 0
    for i, size in enumerate(x.shape):
        lo, hi = pads[2 * i], pads[2 * i + 1]
        shape.append(size + min(lo, 0) + min(hi, 0))  # the input's elements that survive
        out_offset += max(lo, 0) * out_strides[i]
        in_offset += max(-lo, 0) * in_strides[i]
    out = Operand(ctx.ptr(node), ctype(node.dtype), out_offset, out_strides)
    value = int(node.attrs["value"])
    part = Part(tuple(shape), out, (Operand(ctx.ptr(x), ctype(x.dtype), in_offset, in_strides),),
                "v0")
    fill = (ctx.ptr(node), math.prod(node.shape), str(value)) if any(p > 0 for p in pads) else None
    return map_kernel([part], fill)


@kernel("reuse")
def _reuse(node: Node, ctx: Context) -> Kernel:
    """The fresh or the cached value by the call's step (`npuc_step_value`): a copy of the
    picked one, which the guards have computed (steps past the schedule recompute)."""
    fresh, cached, _ = node.inputs
    schedule = np.asarray(node.attrs["recompute"], np.uint8)
    return Kernel("reuse", {"out": ctx.ptr(node), "fresh": ctx.ptr(fresh),
                            "cached": ctx.ptr(cached), "nbytes": node.type.nbytes,
                            "steps": schedule.size, "table": ctx.array(schedule, "npuc_u8")})
