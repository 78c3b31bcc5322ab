"""GEMM kernels: qlinear, qmatmul, qconv (N-d, grouped, depthwise, pointwise) and qconv_transpose.

Every op here is out[m, o] = requantize(sat32(sum_k (x - zp_x)[m, k] * w[o, k] + bias[o])), the
integer semantics of `npuc.ops.quantized`, computed by one loop nest (`ops/gemm.c.j2`) per image
and group:

- rows: the activations into a tile of rows in scratch, each zero-padded to a multiple of
  `VECTOR` terms (`Lhs`): with 8-bit activations and constant weights, the C compiler picks the
  layout (`NPUC_U8_ROWS` in npuc_runtime.h): unsigned bytes x + 128 where the CPU has a u8 x s8
  dot product (AVX-512 VNNI / AVX-VNNI vpdpbusd, which gcc and clang emit from the plain loop),
  the zero point returning as a per-channel term (zp + 128) * sum(w) taken off each sum; else
  centred int16 x - zp (pmaddwd on AVX2: 3x faster there than u8 rows, which compilers
  multiply in 16 bits and widen). Otherwise centred x - zp, int16 (int32 when that does not
  fit). A linear's or matmul's rows are its input rows; a pointwise conv's are its input
  columns (a transpose); any other conv's are im2col patches in (tap, channel) order, copied
  as contiguous runs from a channel-last, padded (with the value of a real zero; for a
  conv_transpose also zero-stuffed: it is the stride-1 conv of that input with flipped,
  in/out-swapped weights) copy of the image.
  Negative padding crops.
- weights: int8 [channels, kp] rows in the same order, zero-padded: dense ones permuted and
  padded in Python (const arrays), decoded ones reordered once per run into scratch; a
  matmul's right operand is centred and transposed per batch.
- per tile, blocks of 4 output channels times `PIXELS` rows: dot products with literal bounds,
  plus the bias in int64, saturated to int32 into an accumulator tile of 4 channels by the
  tile's rows; then per channel one loop of npuc_requantize over the rows with that channel's
  multiplier and shift (`arith.multipliers` of the interpreter's own float64 reals), which
  vectorises.

The sums are int32 when Python proves no partial sum can overflow (terms * max|x - sub| * max|w|
< 2**31), else int32 chunks added into int64 (int64 throughout when a chunk would be shorter than
`MIN_CHUNK`): 8-bit activations stay in int32 up to 66000 terms, int16 ones with int8 weights
switch to 512-term chunks beyond 516. Depthwise convs (one input channel per group) use
`ops/conv_dw.c.j2`: per channel its padded plane, then per output row each tap adds a weight
times a strided row of the plane to an int32 (or int64) row accumulator, vectorised over the
row, which is padded to a multiple of 8.

Sparse weights: a qlinear's or qconv's (not a conv_transpose's) constant weight stored `sparse`
(bitmap + nonzeros, `npuc.quant.weights`) with density below `SPARSE_DENSITY` and at least
`SPARSE_MIN_ROWS` rows runs `ops/gemm_sparse.c.j2` instead, which skips the zeros ("Fast Sparse
ConvNets", Elsen et al.): per tile of rows the activations k-major as centred int32 xt[kk][r]
(always int32, whatever the activation width: measured faster than int16 rows here, as the
products need no widening); a linear's rows transposed, a pointwise conv's input planes copied,
any other conv's gathered from a planar padded copy of its group in the stored (channel, tap)
order, so the bitmap's order is the GEMM's. Then per block of `SPARSE_BLOCK` rows and output
channel, `SPARSE_BLOCK` int32 scalars (the compiler keeps them in vector registers) take
w * xt[kk][r] for each set bit kk of that channel's bitmap row (56 bits a step, lowest first
via npuc_ctz64) and the next stored value; the dense kernel's bias, saturation and
requantization follow. The C stores the payload as is, plus 8 zero bytes (the bitmap's 8-byte
loads) and, for grouped convs, an int32 index of each group's first value; there is no decode
pass. Exactness: the sums are int32 only when `plan_dot` proves a channel's nonzeros cannot
overflow (max nonzeros * max|x - zp| * max|w| < 2**31), so their order does not matter; else
the dense kernel runs. Sparse weights that stay on the dense path are decoded every call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from npuc.errors import UnsupportedError
from npuc.ir import Node, TensorType
from npuc.ops.quantized import _gemm_scales, per_tensor
from npuc.quant import arith
from npuc.quant.constants import encoding_of

from ..view import Context, Kernel, ctype, limits
from . import kernel
from .elementwise import contiguous

INT32_MAX = (1 << 31) - 1
TILE_BYTES = 1 << 19  # a row tile of centred activations: 512 KiB, inside L2
LANES = 8  # a depthwise conv's row accumulators are padded to a multiple of this
VECTOR = 16  # GEMM rows (activations and weights) are padded to a multiple of this
PIXELS = 2  # rows per register block (times 4 channels: 8 accumulators)
MIN_CHUNK = 64  # int32 partial sums shorter than this: accumulate in int64 instead
SPARSE_BLOCK = 32  # rows per register block of the sparse kernel (4 AVX2 int32 vectors)
# The sparse kernel where a layer's weight density is below SPARSE_DENSITY and it has at least
# SPARSE_MIN_ROWS rows (bench/sparse_kernel.py, RESULTS.md "Sparse kernel", Zen 3 AVX2, gcc -O3
# -march=native, noisy shared machine: ResNet-18 3x3 and 1x1 convs at 56/28/14 break even at
# 7-33% density, 1.1-2.7x faster at 5%; a 128-token MiniLM 384x1536 linear breaks even at 31%,
# 2.4x at 5%; a 16-token one loses at every density, its blocks too short to pay for the
# bitmap walk). Conservative on purpose: on AVX-512 VNNI CPUs the dense kernel is about 2x
# faster, which roughly halves the break-even density.
SPARSE_DENSITY = 0.1
SPARSE_MIN_ROWS = 64


# -- helpers --------------------------------------------------------------------------------------

def _up(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class Lhs:
    """How a GEMM's activation operand sits in its row tile: col = x - sub, of C type `col_t`;
    `pad` is what a padded (real zero) position holds. `sub` and `pad` are C expressions.

    With 8-bit activations and constant int8 weights the tile is `npuc_row8`, whose layout the
    C compiler chooses (NPUC_U8_ROWS): unsigned (sub = lo, so x + 128 for int8: u8 x s8
    products, one AVX-512 VNNI vpdpbusd does 64), the zero point then coming back as
    `u8_pad` * sum(w) per output channel, `u8_pad` = zp - lo; or centred int16 (sub = zp,
    pad = 0). Otherwise the tile is centred, int16 when that fits, else int32."""

    col_t: str
    sub: int | str
    pad: int | str
    bound: int  # the largest |x - sub| under either layout
    u8_pad: int = 0  # per unit of sum(w), what unsigned rows add to a sum

    @property
    def size(self) -> int:
        return 4 if self.col_t == "npuc_i32" else 2  # npuc_row8: room for its int16 layout


def lhs(t: TensorType, constant_weights: bool) -> Lhs:
    lo, hi = arith.dtype_range(t.dtype)
    zp = per_tensor(t)[1]
    if constant_weights and t.dtype.bits == 8:
        return Lhs("npuc_row8", f"(NPUC_U8_ROWS ? {lo} : {zp})",
                   f"(NPUC_U8_ROWS ? {zp - lo} : 0)", hi - lo, zp - lo)
    small = lo - zp >= -32768 and hi - zp <= 32767
    return Lhs("npuc_i16" if small else "npuc_i32", zp, 0, max(abs(lo - zp), abs(hi - zp)))


def _weight_bound(w: Node) -> int:
    if w.is_const:
        data = np.asarray(w.data, dtype=np.int64)
        return int(np.abs(data).max()) if data.size else 0
    lo, hi = arith.dtype_range(w.dtype)
    return max(abs(lo), abs(hi))


@dataclass(frozen=True)
class Dot:
    """How a reduction of `k` terms accumulates (see the module docstring)."""

    mode: str  # "int32", "chunked" or "int64"
    k: int
    chunk: int = 0  # chunked: int32 partial sums of this many terms...
    full: int = 0  # ... over [0, full), then one partial chunk [full, k)


def plan_dot(k: int, bound: int) -> Dot:
    """The accumulation of `k` terms each at most `bound` in magnitude."""
    if bound == 0 or k * bound <= INT32_MAX:
        return Dot("int32", k)
    chunk = INT32_MAX // bound // VECTOR * VECTOR
    if chunk < MIN_CHUNK:
        return Dot("int64", k)
    return Dot("chunked", k, chunk, k // chunk * chunk)


def _requant_arrays(ctx: Context, real: np.ndarray, channels: int) -> tuple[str, str]:
    real = np.broadcast_to(np.asarray(real, dtype=np.float64), (channels,))
    mult, shift = arith.multipliers(real)
    return (ctx.array(mult.astype(np.int32), "npuc_i32", "multipliers"),
            ctx.array(shift.astype(np.int32), "npuc_i32", "shifts"))


def _requant(node: Node, ctx: Context, channels: int, bias: Node | None, real: np.ndarray,
             u8_sums: np.ndarray | None = None) -> dict[str, Any]:
    """Requantization parameters; a nonzero `u8_sums` (per channel) is what unsigned rows add
    to each sum, taken off it when the C compiler picks that layout."""
    mult, shift = _requant_arrays(ctx, real, channels)
    lo, hi = limits(node.dtype)
    params = {"mult": mult, "shift": shift, "zp": per_tensor(node.type)[1], "lo": lo, "hi": hi,
              "bias": ctx.ptr(bias) if bias is not None else None,
              "bias_t": ctype(bias.dtype) if bias is not None else None,
              "out_t": ctype(node.dtype), "u8_sums": None}
    if u8_sums is not None and np.any(u8_sums):
        params["u8_sums"] = ctx.array(u8_sums.astype(np.int64), "npuc_i64",
                                      f"{node.loc or node.op}: zero point of unsigned rows")
    return params


def _tile(rows: int, row_bytes: int) -> int:
    return max(1, min(rows, TILE_BYTES // row_bytes))


def _weights(ctx: Context, w: Node, rows: int, k: int, x: Lhs,
             order: Order | None = None) -> dict[str, Any]:
    """The GEMM's int8 weight rows, [rows, kp] in (tap, channel) order with kp = k padded to a
    multiple of `VECTOR` (zeros), the dot plan, and the zero point's bias correction.

    `order` is how the GEMM's rows come from the stored tensor when they are a permutation of
    it (a conv's (tap, channel) order, a conv_transpose's flipped taps): dense weights are
    permuted and padded here, encoded ones after they are decoded, into scratch (`reorder`)."""
    kp = _up(k, VECTOR)
    values = np.asarray(w.data, np.int64)
    gemm = order.permute(values) if order is not None else values.reshape(rows, k)
    params = {"w_t": "npuc_i8", "wrow": kp, "kp": kp, "reorder": None,
              "dot": plan_dot(kp, x.bound * _weight_bound(w)),
              "u8_sums": x.u8_pad * gemm.sum(axis=1)}
    if encoding_of(w).is_dense:
        padded = np.zeros((rows, kp), np.int8)
        padded[:, :k] = gemm
        params["w"] = ctx.array(padded, "npuc_i8", f"{w.loc or 'weight'}: rows in GEMM order")
        return params
    decoded = ctx.weight(w)
    if order is None and kp == k:
        params["w"] = decoded
        return params
    params["w"] = ctx.scratch(rows * kp, "npuc_i8")
    params["reorder"] = {"rows": rows, "k": k, "w": decoded,
                         "src": order.src if order else None,
                         "split": (order.cg, order.taps) if order else None}
    return params


# -- sparse weights -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sparse:
    """The sparse kernel's plan for one GEMM (see the module docstring): `block` rows of int32
    accumulators, tiles of `tile` rows (a multiple of `block`) of k-major centred int32 rows."""

    x: Lhs
    density: float
    block: int
    tile: int


def sparse_plan(w: Node, channels: int, k: int, rows: int, x: TensorType) -> Sparse | None:
    """The sparse kernel's plan when const weight `w` ([channels, k] flattened, its C order the
    GEMM's) is `sparse`-encoded, below `SPARSE_DENSITY`, has `SPARSE_MIN_ROWS` rows or more,
    and every channel's sum provably fits
    int32 (`plan_dot` over a channel's nonzeros); else None (the dense kernel)."""
    if (not w.is_const or encoding_of(w).kind != "sparse" or channels * k == 0
            or rows < SPARSE_MIN_ROWS):
        return None
    values = np.asarray(w.data, np.int64).reshape(channels, k)
    nonzero = np.count_nonzero(values, axis=1)
    density = float(nonzero.sum()) / values.size
    lo, hi = arith.dtype_range(x.dtype)
    zp = per_tensor(x)[1]
    centred = Lhs("npuc_i32", zp, 0, max(abs(lo - zp), abs(hi - zp)))
    if density >= SPARSE_DENSITY or plan_dot(int(nonzero.max()), centred.bound *
                                             _weight_bound(w)).mode != "int32":
        return None
    block = min(SPARSE_BLOCK, _up(rows, 8))
    tile = min(_up(rows, block), max(block, TILE_BYTES // (4 * k) // block * block))
    return Sparse(centred, density, block, tile)


def _sparse_kernel(node: Node, ctx: Context, plan: Sparse, *, k: int, m: int, images: int,
                   groups: int, og: int, fill: dict[str, Any], out: dict[str, int],
                   xp: dict[str, Any] | None = None) -> Kernel:
    """The `gemm_sparse` template's parameters: the stored payload (bitmap, then the nonzero
    values) read in place, plus 8 zero bytes for the bitmap's 8-byte loads."""
    x, w = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    channels = groups * og
    payload = np.asarray(w.attrs["data"], np.uint8).ravel()
    values = np.asarray(w.data, np.int64).reshape(channels, k)
    firsts = np.count_nonzero(values, axis=1).cumsum()[og - 1:-1:og] if groups > 1 else []
    starts = np.concatenate([[0], firsts]).astype(np.int32)
    params = {
        "x": ctx.ptr(x), "x_t": ctype(x.dtype), "y": ctx.ptr(node),
        "payload": ctx.array(np.concatenate([payload, np.zeros(8, np.uint8)]), "npuc_u8",
                             f"{w.loc or 'weight'}: sparse ({values.size} values) + 8 bytes"),
        "values_at": -(-values.size // 8),
        "starts": ctx.array(starts, "npuc_i32", "first nonzero of each group")
        if groups > 1 else None,
        "xt": ctx.scratch(4 * k * plan.tile, "npuc_i32"),
        "acc": ctx.scratch(4 * plan.block, "npuc_i32"),
        "rowbase": ctx.scratch(4 * plan.tile, "npuc_i32") if fill["kind"] == "conv" else None,
        "xp": xp, "images": images, "groups": groups, "og": og, "k": k, "m": m,
        "mt": plan.tile, "rb": plan.block, "density": f"{plan.density:.3f}",
        "threshold": SPARSE_DENSITY, "fill": fill, "out": out,
        **_requant(node, ctx, channels, bias, _gemm_scales(node)),
    }
    return Kernel("gemm_sparse", params)


# -- qlinear / qmatmul ----------------------------------------------------------------------------

@kernel("qlinear")
def _qlinear(node: Node, ctx: Context) -> Kernel:
    x, w = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    k = x.shape[-1]
    n_out = w.shape[0]
    rows = math.prod(x.shape[:-1])
    plan = sparse_plan(w, n_out, k, rows, x.type)
    if plan is not None:
        return _sparse_kernel(node, ctx, plan, k=k, m=rows, images=1, groups=1, og=n_out,
                              fill={"kind": "rows", "sub": plan.x.sub},
                              out={"image": 0, "o": 1, "m": n_out})
    rows_in = lhs(x.type, constant_weights=True)
    weights = _weights(ctx, w, n_out, k, rows_in)
    kp = weights["kp"]
    tile = _tile(rows, kp * rows_in.size)
    params = {
        "x": ctx.ptr(x), "x_t": ctype(x.dtype), "y": ctx.ptr(node), "col_t": rows_in.col_t,
        "col": ctx.scratch(tile * kp * rows_in.size, rows_in.col_t),
        "acc": ctx.scratch(4 * 4 * tile, "npuc_i32"),
        "images": 1, "groups": 1, "m": rows, "mt": tile, "og": n_out,
        "fill": {"kind": "rows", "k": k, "sub": rows_in.sub, "row": k, "at": "0"},
        "out": {"image": 0, "o": 1, "m": n_out},
        "xp": None, "per_image": None,
        **weights,
        **_requant(node, ctx, n_out, bias, _gemm_scales(node), weights["u8_sums"]),
        "pr": PIXELS,
    }
    return Kernel("gemm", params)


@kernel("qmatmul")
def _qmatmul(node: Node, ctx: Context) -> Kernel:
    a, b = node.inputs
    k = a.shape[-1]
    a_shape = a.shape if len(a.shape) >= 2 else (1,) + a.shape
    b_shape = b.shape if len(b.shape) >= 2 else b.shape + (1,)
    m, n_out = a_shape[-2], b_shape[-1]
    batch = np.broadcast_shapes(a_shape[:-2], b_shape[:-2])
    images = math.prod(batch)
    a_at = _batch_offsets(a_shape, batch)
    b_at = _batch_offsets(b_shape, batch)
    left, right = lhs(a.type, constant_weights=False), lhs(b.type, constant_weights=False)
    col_t = "npuc_i32" if "npuc_i32" in (left.col_t, right.col_t) else "npuc_i16"
    size = 2 if col_t == "npuc_i16" else 4
    kp = _up(k, VECTOR)
    tile = _tile(m, kp * size)
    s_a, s_b = per_tensor(a.type)[0], per_tensor(b.type)[0]
    real = np.float64(s_a * s_b / per_tensor(node.type)[0])
    bt = ctx.scratch(size * n_out * kp, col_t)
    params = {
        "x": ctx.ptr(a), "x_t": ctype(a.dtype), "y": ctx.ptr(node), "col_t": col_t,
        "col": ctx.scratch(tile * kp * size, col_t),
        "acc": ctx.scratch(4 * 4 * tile, "npuc_i32"),
        "images": images, "groups": 1, "m": m, "mt": tile, "og": n_out,
        "fill": {"kind": "rows", "k": k, "sub": left.sub, "row": k,
                 "at": _offset_expr(ctx, a_at)},
        "out": {"image": m * n_out, "o": 1, "m": n_out},
        "xp": None,
        "per_image": {"b": ctx.ptr(b), "b_t": ctype(b.dtype), "sub": right.sub,
                      "at": _offset_expr(ctx, b_at), "k": k, "n": n_out},
        "reorder": None, "w_t": col_t, "w": bt, "wrow": kp, "kp": kp,
        "pr": PIXELS,
        "dot": plan_dot(kp, left.bound * right.bound),
        **_requant(node, ctx, n_out, None, real),
    }
    return Kernel("gemm", params)


def _batch_offsets(shape: tuple[int, ...], batch: tuple[int, ...]) -> np.ndarray:
    """Element offset of each (C-ordered) batch index's matrix in an operand of `shape`."""
    own = shape[:-2]
    matrix = shape[-2] * shape[-1]
    strides = np.zeros(len(batch), dtype=np.int64)
    step = matrix
    for i in range(1, len(own) + 1):
        if own[-i] != 1:
            strides[-i] = step
        step *= own[-i]
    index = np.indices(batch).reshape(len(batch), -1) if batch else np.zeros((0, 1), np.int64)
    return (strides[:, None] * index).sum(axis=0).astype(np.int64)


def _offset_expr(ctx: Context, offsets: np.ndarray) -> str:
    """C for offsets[n]: 0, an affine n * step, or a lookup in a const array."""
    if not offsets.any():
        return "0"
    step = int(offsets[1] - offsets[0]) if offsets.size > 1 else 0
    if np.array_equal(offsets, np.arange(offsets.size) * step):
        return f"n * {step}"
    return f"{ctx.array(offsets.astype(np.int32), 'npuc_i32', 'batch offsets')}[n]"


# -- qconv / qconv_transpose ----------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """A conv (or conv_transpose, as the conv of its zero-stuffed input) over `nsp` axes."""

    batch: int
    channels: int  # input channels
    x: tuple[int, ...]  # input spatial sizes
    q: tuple[int, ...]  # output spatial sizes
    kernel: tuple[int, ...]
    stride: tuple[int, ...]  # of the conv reading the virtual input
    dilation: tuple[int, ...]
    step: tuple[int, ...]  # input element i sits at lo + i * step of the virtual input
    lo: tuple[int, ...]  # padding before (negative: cropped)
    hi: tuple[int, ...]
    groups: int
    cg: int  # input channels per group
    og: int  # output channels per group

    @property
    def virtual(self) -> tuple[int, ...]:
        return tuple((n - 1) * s + 1 + lo + hi for n, s, lo, hi in zip(
            self.x, self.step, self.lo, self.hi, strict=True))

    @property
    def taps(self) -> int:
        return math.prod(self.kernel)


def _geometry(node: Node, transpose: bool) -> Geometry:
    x, w = node.inputs[:2]
    a = node.attrs
    nsp = len(w.shape) - 2
    groups = a["groups"]
    kernel_ = tuple(w.shape[2:])
    dil = tuple(a["dilation"])
    pad = tuple(a["padding"])
    if transpose:
        edge = [d * (k - 1) for d, k in zip(dil, kernel_, strict=True)]
        lo = tuple(edge[i] - pad[2 * i] for i in range(nsp))
        hi = tuple(edge[i] - pad[2 * i + 1] + a["output_padding"][i] for i in range(nsp))
        return Geometry(x.shape[0], x.shape[1], x.shape[2:], node.shape[2:], kernel_,
                        (1,) * nsp, dil, tuple(a["stride"]), lo, hi, groups,
                        x.shape[1] // groups, w.shape[1])
    return Geometry(x.shape[0], x.shape[1], x.shape[2:], node.shape[2:], kernel_,
                    tuple(a["stride"]), dil, (1,) * nsp, pad[0::2], pad[1::2], groups,
                    w.shape[1], w.shape[0] // groups)


def _sum(*terms: str | int) -> str:
    """A C sum of the terms, zeros dropped."""
    kept = [str(t) for t in terms if str(t) != "0"]
    return " + ".join(kept) or "0"


def _times(var: str, factor: int) -> str:
    return "0" if factor == 0 or var == "0" else var if factor == 1 else f"{var} * {factor}"


def _padded(geo: Geometry, ctx: Context, x: Lhs, sizes: tuple[int, ...], channels: int,
            channel: str, last: bool) -> dict[str, Any]:
    """A buffer of `channels` channels over `sizes`, filled with `x.pad` (a real zero), holding
    the image's values x - sub at their virtual positions, channel-last when `last` (else
    planar); `channel` is the C expression of the first channel copied."""
    zs = contiguous(sizes)
    loops = []
    for i, (n, s, lo) in enumerate(zip(geo.x, geo.step, geo.lo, strict=True)):
        first = max(0, -(lo // s))
        end = min(n, (geo.virtual[i] - 1 - lo) // s + 1)
        loops.append((f"i{i}", first, end))
    plane = math.prod(sizes)
    at = [f"({_sum(lo, _times(f'i{i}', s))}) * {st * (channels if last else 1)}"
          for i, (lo, s, st) in enumerate(zip(geo.lo, geo.step, zs, strict=True))]
    dst = _sum(*at, "c" if last else _times("c", plane))
    src = _sum(_times("n", geo.channels * math.prod(geo.x)),
               _times(f"({_sum(channel, 'c')})", math.prod(geo.x)),
               *[_times(f"i{i}", st) for i, st in enumerate(contiguous(geo.x))])
    size = channels * plane * x.size
    return {"ptr": ctx.scratch(size, x.col_t), "bytes": f"{channels * plane} * sizeof(*xp)",
            "channels": channels,
            "loops": loops, "empty": any(a >= b for _, a, b in loops), "dst": dst, "src": src,
            "sub": x.sub, "fill": x.pad, "plane": plane}


@dataclass(frozen=True)
class Order:
    """GEMM weight row o, column t * cg + c = stored weight `src` (C, of o, c, t)."""

    src: str
    cg: int
    taps: int
    transpose: bool
    groups: int

    def permute(self, w: np.ndarray) -> np.ndarray:
        """The same permutation in numpy: [rows, taps * cg] from the stored tensor."""
        if not self.transpose:  # (O, cg, *k) -> (O, taps, cg)
            return np.swapaxes(w.reshape(w.shape[0], self.cg, self.taps), 1, 2).reshape(
                w.shape[0], -1)
        og = w.shape[1]  # (C, og, *k): row g*og + o, column t*cg + c = w[g*cg + c, o, T-1-t]
        v = w.reshape(self.groups, self.cg, og, self.taps)[..., ::-1]
        return v.transpose(0, 2, 3, 1).reshape(self.groups * og, self.taps * self.cg)


def _order(geo: Geometry, transpose: bool) -> Order:
    t, og, cg = geo.taps, geo.og, geo.cg
    if not transpose:
        src = _sum(f"o * {cg * t}", _times("c", t), "t")
    else:
        src = f"((o / {og}) * {cg} + c) * {og * t} + (o % {og}) * {t} + {t - 1} - t"
    return Order(src, cg, t, transpose, geo.groups)


def _pixel(geo: Geometry, zs: list[int]) -> tuple[list[tuple[str, str]], str]:
    """C for output pixel m's coordinates q<i> (declarations) and the offset of its window's
    first element in a padded image whose axis i has stride zs[i]."""
    q_exprs, div = [], 1
    for i in reversed(range(len(geo.q))):
        expr = f"m / {div}" if div > 1 else "m"
        q_exprs.append((f"q{i}", f"{expr} % {geo.q[i]}" if i else expr))
        div *= geo.q[i]
    return q_exprs, _sum(*[_times(f"q{i}", geo.stride[i] * zs[i]) for i in range(len(geo.q))])


def _conv(node: Node, ctx: Context, transpose: bool) -> Kernel:
    x, w = node.inputs[:2]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if len(x.shape) != len(w.shape) or len(x.shape) < 3:
        raise UnsupportedError(f"{node.op} of a rank-{len(x.shape)} input", op=node.op,
                               loc=node.loc, stage="emit-c")
    geo = _geometry(node, transpose)
    out_channels = node.shape[1]
    if geo.cg == 1:
        requant = _requant(node, ctx, out_channels, bias, _gemm_scales(node))
        return _depthwise(node, ctx, geo, transpose, requant)
    rows_in = lhs(x.type, constant_weights=True)
    col_t, size = rows_in.col_t, rows_in.size
    nsp = len(geo.x)
    k = geo.cg * geo.taps
    pixels = math.prod(geo.q)
    pointwise = (not transpose and geo.taps == 1 and all(s == 1 for s in geo.stride)
                 and geo.q == geo.x and not any(geo.lo + geo.hi))
    plan = None if transpose else sparse_plan(w, out_channels, k, pixels, x.type)
    if plan is not None:
        return _sparse_conv(node, ctx, geo, plan, pointwise)
    weights = _weights(ctx, w, out_channels, k, rows_in,
                       None if pointwise else _order(geo, transpose))
    requant = _requant(node, ctx, out_channels, bias, _gemm_scales(node), weights["u8_sums"])
    kp = weights["kp"]
    tile = _tile(pixels, kp * size)
    fill: dict[str, Any]
    xp = None
    if pointwise:  # the patches are the input's columns
        fill = {"kind": "pointwise", "k": k, "sub": rows_in.sub, "cg": geo.cg,
                "plane": pixels, "image": geo.channels * pixels}
    else:  # im2col from a channel-last, zero-padded (and zero-stuffed) copy of the image
        xp = _padded(geo, ctx, rows_in, geo.virtual, geo.channels, "0", last=True)
        zs = [st * geo.channels for st in contiguous(geo.virtual)]
        q_exprs, base = _pixel(geo, zs)
        base = _sum(base, _times("g", geo.cg))
        # copy runs of channels; the last kernel axis joins the run when it is contiguous
        merged = geo.dilation[-1] == 1 and geo.cg == geo.channels
        axes = nsp - 1 if merged else nsp
        run = geo.cg * (geo.kernel[-1] if merged else 1)
        flat = "0"
        for i in range(axes):
            flat = f"({flat}) * {geo.kernel[i]} + t{i}" if i else f"t{i}"
        fill = {"kind": "conv", "k": k, "q": q_exprs, "base": base, "run": run,
                "taps": [(f"t{i}", geo.kernel[i]) for i in range(axes)],
                "read": _sum(*[_times(f"t{i}", geo.dilation[i] * zs[i]) for i in range(axes)]),
                "write": _times(f"({flat})" if axes > 1 else flat, run)}
    params = {
        "x": ctx.ptr(x), "x_t": ctype(x.dtype), "y": ctx.ptr(node), "col_t": col_t,
        "col": ctx.scratch(tile * kp * size, col_t),
        "acc": ctx.scratch(4 * 4 * tile, "npuc_i32"),
        "images": geo.batch, "groups": geo.groups, "m": pixels, "mt": tile, "og": geo.og,
        "fill": fill, "out": {"image": out_channels * pixels, "o": pixels, "m": 1},
        "xp": xp, "per_image": None,
        **weights, **requant,
        "pr": PIXELS,
    }
    return Kernel("gemm", params)


def _sparse_conv(node: Node, ctx: Context, geo: Geometry, plan: Sparse,
                 pointwise: bool) -> Kernel:
    """A conv's sparse kernel: its k-major rows in the stored weight's (channel, tap) order, a
    pointwise conv's straight from the input planes, any other's gathered from a planar padded
    copy of the group's channels through each row's window offset (`rowbase`)."""
    pixels, k = math.prod(geo.q), geo.cg * geo.taps
    shape = {"k": k, "m": pixels, "images": geo.batch, "groups": geo.groups, "og": geo.og,
             "out": {"image": geo.groups * geo.og * pixels, "o": pixels, "m": 1}}
    if pointwise:
        fill = {"kind": "pointwise", "sub": plan.x.sub, "cg": geo.cg, "plane": pixels,
                "image": geo.channels * pixels}
        return _sparse_kernel(node, ctx, plan, fill=fill, **shape)
    xp = _padded(geo, ctx, plan.x, geo.virtual, geo.cg, _times("g", geo.cg), last=False)
    zs = contiguous(geo.virtual)
    q_exprs, base = _pixel(geo, list(zs))
    nsp = len(geo.x)
    flat = "0"
    for i in range(nsp):
        flat = f"({flat}) * {geo.kernel[i]} + t{i}" if i else f"t{i}"
    fill = {"kind": "conv", "cg": geo.cg, "q": q_exprs, "base": base, "plane": xp["plane"],
            "taps": [(f"t{i}", geo.kernel[i]) for i in range(nsp)], "ntaps": geo.taps,
            "tap": flat, "last": geo.q[-1], "step": geo.stride[-1],
            "read": _sum(*[_times(f"t{i}", geo.dilation[i] * zs[i]) for i in range(nsp)])}
    return _sparse_kernel(node, ctx, plan, fill=fill, xp=xp, **shape)


def _depthwise(node: Node, ctx: Context, geo: Geometry, transpose: bool,
               requant: dict[str, Any]) -> Kernel:
    """One input channel per group: per output row (all axes but the last), each tap adds a
    weight times a row of the padded channel plane to an int32 row accumulator."""
    x, w = node.inputs[:2]
    plane = lhs(x.type, constant_weights=False)  # centred: products of int16 x int8 weights
    nsp = len(geo.x)
    row = _up(geo.q[-1], LANES)
    sizes = list(geo.virtual)
    sizes[-1] = max(sizes[-1], (row - 1) * geo.stride[-1] + (geo.kernel[-1] - 1) *
                    geo.dilation[-1] + 1)
    xp = _padded(geo, ctx, plane, tuple(sizes), 1, "g", last=False)
    zs = contiguous(tuple(sizes))
    bound = plane.bound * _weight_bound(w) * geo.taps
    acc_t = "npuc_i32" if bound <= INT32_MAX else "npuc_i64"
    t = geo.taps
    widx = f"o * {t} + {t - 1} - tap" if transpose else f"o * {t} + tap"  # transposed: flipped
    tap = "0"
    for i in range(nsp):
        tap = f"({tap}) * {geo.kernel[i]} + t{i}" if i else f"t{i}"
    start = _sum(*[_times(f"q{i}", geo.stride[i] * zs[i]) for i in range(nsp - 1)],
                 *[_times(f"t{i}", geo.dilation[i] * zs[i]) for i in range(nsp)])
    pixels = math.prod(geo.q)
    out_at = _sum(_times("n", node.shape[1] * pixels), _times("o", pixels),
                  *[_times(f"q{i}", s) for i, s in enumerate(contiguous(geo.q)[:-1])])
    params = {
        "x": ctx.ptr(x), "y": ctx.ptr(node), "w": ctx.weight(w), "w_t": ctype(w.dtype),
        "x_t": ctype(x.dtype),
        "col_t": plane.col_t, "acc_t": acc_t, "xp": xp, "images": geo.batch,
        "groups": geo.groups,
        "og": geo.og, "outer": [(f"q{i}", geo.q[i]) for i in range(nsp - 1)],
        "taps": [(f"t{i}", geo.kernel[i]) for i in range(nsp)], "tap": tap, "widx": widx,
        "start": start, "row": row, "width": geo.q[-1], "step": geo.stride[-1],
        # static scratch, never a local array: GCC 12 misplaces such arrays in the red zone
        # (tests/codegen/compiler_bugs/red_zone_misaligned.c)
        "acc": ctx.scratch(row * 8, acc_t), "out_at": out_at,
        **requant,
    }
    return Kernel("conv_dw", params)


@kernel("qconv")
def _qconv(node: Node, ctx: Context) -> Kernel:
    return _conv(node, ctx, transpose=False)


@kernel("qconv_transpose")
def _qconv_transpose(node: Node, ctx: Context) -> Kernel:
    return _conv(node, ctx, transpose=True)
