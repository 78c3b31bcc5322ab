"""Per-op cost on each engine of a target: cycles, bytes moved and energy, analytically.

What an op is comes from its `cost` trait (npuc.ops.Cost). NPU: the integer matrix products
(`is_gemm`: qconv, qlinear, qmatmul, qconv_transpose) as im2col GEMMs on the systolic array
(`systolic.gemm_cycles`), per group, at 8 / weight_bits MACs per PE per cycle and `int16_rate`
when the operands it multiplies are int16 (`int16_mode`: never for an int16 result). DSP: every
other integer op, its `per_element` operations per element over `lanes` (half at int16, by the
same rule), and depthwise convs as MACs over lanes. CPU: anything, float included, at
`ops_per_cycle`, the same operations per element (a float GEMM: its MACs). A view (reshape) is
free, on any engine; every other data movement is a copy.
SRAM bandwidth is `sram_bytes_per_cycle` at the clock of the target's first engine (the NPU, else
the DSP): the SRAM's, whichever engine reads it.

Memory (`tiling.py`): constants stream from DRAM once; activations stay in SRAM while they fit
beside the constant stream, else a GEMM is blocked to the SRAM (weights re-read once per row
block, inputs once per column block) and any other op streams through DRAM. With double
buffering an op takes max(compute, memory) plus the DRAM latency of its first tile. A `gather`
from a constant table (an embedding) reads only the rows it fetches: its output's bytes.

Sparsity (`npu.sparsity`, one mode per target): what the NPU does with the zero values of a
GEMM's weight constant (decoded: `weight_density` is its fraction of nonzeros). Each mode scales
the GEMM's compute cycles (fill and drain included) and the MACs whose energy it pays by a
fraction (`sparsity_fractions`); the report still counts the dense MACs.
- "none": every MAC runs and costs energy (1, 1).
- "gating": a zero operand gates its MAC: energy scales with the density, cycles do not.
- "nm": the array skips N:M weights natively (Ampere's 2:4 sparse tensor cores, Ethos-U85):
  a layer stored "nm<n>:<m>" runs a reduction of ceil(R/m)*n of its R input channels (n/m
  when m divides R), cycles and energy alike; any other layer runs dense.
- "block": the array skips every weight tile it would load that is all zeros: the GEMM's
  K x N weight matrix (K in OHWI order, input channels innermost) cut into rows x cols tiles,
  cycles and energy scaled by the fraction of nonzero tiles (exactly the folds a weight-
  stationary array skips; for os/is the same count approximates the skipped K-steps).
- "ideal": every zero MAC skipped, as by a perfect compaction of arbitrary nonzeros: the
  density, and never more than the block fraction (the optimistic bound).
So for any weights, cycles: ideal <= nm, block <= gating == none; energy: ideal <= gating.
Weights stream from DRAM as stored, whatever the mode: a compressed encoding (sparse, nm) is
what makes fewer bytes, its index overhead included (bitmap and 2:4 positions both 0.625 bytes
per weight at 50%). The array reads "sparse" weights natively only in the ideal mode, "nm" ones
in the nm and ideal modes; otherwise they are decoded first (below).

Encoded weights (`encoding` of the constant, see npuc.quant.constants). LUT formats (palette<b>,
ternary) stream their stored bytes (packed codes + LUT). With `npu.palette_decode` the NPU
looks them up in its weight path for free; without it they are first decoded to int8 on the DSP
(the CPU if there is no DSP): one operation per weight element over the lanes, plus writing and
reading the decoded weights through SRAM, all added to the GEMM's time, SRAM bytes and energy
(the decoder's own occupancy is not scheduled separately). Sub-byte integer weights ("int4", ...)
whose width the array does not take natively (neither 8 nor `weight_bits`) are unpacked the same
way, without a LUT, and so are "sparse" and "nm" weights where the sparsity mode does not read
them (see above). After decoding, LUT weights are int8 values
and run at the int8 MAC rate. On the DSP or CPU a GEMM on encoded weights decodes inline: one
more operation per weight element.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, replace

import numpy as np

from npuc.ir import DType, Node
from npuc.ops import INTEGER, OPS, macs
from npuc.quant.constants import encoding_of
from npuc.quant.weights import nm_axis
from npuc.targets import SPARSITY_MODES

from .systolic import gemm_cycles
from .tiling import Traffic, gemm_traffic, stream_traffic


def is_view(op: str) -> bool:
    """No work and no bytes on any engine (a reshape, a graph leaf)."""
    return OPS[op].cost.kind == "view"


def is_gemm(op: str) -> bool:
    """An integer matrix product: what the NPU's array runs, blocked to the SRAM. (A float one
    runs only on the CPU, as its MACs over streamed operands.)"""
    return OPS[op].cost.kind == "gemm" and OPS[op].integer == INTEGER


@dataclass(frozen=True)
class OpCost:
    engine: str
    macs: int
    compute_cycles: int
    seconds: float
    dram_bytes: int
    sram_bytes: int
    energy_j: float
    bound: str  # "compute" or "memory"
    utilization: float
    tile: str = ""  # "tile MtxKtxNt" when the op's activations did not fit in SRAM


def engines(target) -> list[str]:  # noqa: ANN001 - a npuc.targets.Target
    """The engines `target` has, fastest kind first (npu, dsp, cpu)."""
    return [e for e in ("npu", "dsp", "cpu") if getattr(target, e, None) is not None]


def sram_bytes_per_s(target) -> float:  # noqa: ANN001
    """The shared SRAM's bandwidth: `sram_bytes_per_cycle` at the first engine's clock."""
    return target.memory.sram_bytes_per_cycle * getattr(target, engines(target)[0]).clock_hz


def supports(engine: str, node: Node, target=None) -> str | None:  # noqa: ANN001
    """None if `engine` can run `node`, else why not (shown in the report). With `target`, also
    the limits of that target's NPU (no int16 mode, no engine to decode its weights)."""
    if is_view(node.op):
        return None  # no work, so no engine is wrong for it
    floating = node.dtype.is_float and node.op != "dequantize"
    if engine == "npu":
        if OPS[node.op].cost.kind != "gemm":
            return f"{node.op} is not a matrix product"
        if not is_gemm(node.op):
            return "unquantized operands: the array multiplies quantized integers"
        if _depthwise(node):
            return "depthwise: one filter per channel starves the array"
        if target is not None and target.npu is not None:
            if target.npu.int16_rate == 0 and int16_mode(node):
                return "int16 activations: the array has no int16 mode"
            if (_decode_kind(node, target.npu) is not None and target.dsp is None
                    and target.cpu is None):
                return (f"{encoding_of(node.inputs[1]).name} weights need a DSP or CPU to "
                        "decode them")
        return None
    if engine == "dsp":
        return "float op" if floating else None
    return None


def _depthwise(node: Node) -> bool:
    return node.op == "qconv" and node.attrs["groups"] > 1 and node.inputs[1].shape[1] == 1


def int16_mode(node: Node) -> bool:
    """Whether `node` computes at int16 width: at the NPU's `int16_rate` (refused by an array
    without an int16 mode), on half the DSP's lanes and at `mac_i16_pj` per MAC.

    A matrix product (qconv, qconv_transpose, qlinear, qmatmul) computes at the width of the
    operands its MACs multiply, by the integer spec (npuc.ops.quantized): its first two, the
    activation and the weight (or qmatmul's two activations); never its int32 bias and never its
    result. The accumulators are int32 whatever the result's width, so an int16 result costs
    only where it is made and moved: at requantization (the array's output stage) and in the
    bytes it writes (`tiling`). On npu-int8 quantize rescales an int16 activation to int8 before
    a GEMM reads it (`integer_lowering.Lowering.gemm_operand`), so every GEMM there multiplies
    int8 x int8; with `activations = "int16"` (dsp-int16) GEMMs multiply int16 x int8.
    Any other op computes at the width of the widest value it reads or writes: its lanes hold
    those elements.
    """
    if OPS[node.op].cost.kind == "gemm":
        return any(i.dtype == DType.I16 for i in node.inputs[:2])
    return any(i.dtype == DType.I16 for i in node.inputs) or node.dtype == DType.I16


def _gemm_shape(node: Node) -> tuple[int, int, int, int]:
    """(groups, M, K, N) of an integer GEMM op."""
    w = node.inputs[1].shape
    if node.op == "qconv":
        g = node.attrs["groups"]
        return g, node.shape[0] * math.prod(node.shape[2:]), math.prod(w[1:]), w[0] // g
    if node.op == "qconv_transpose":
        return 1, node.inputs[0].shape[0] * math.prod(node.inputs[0].shape[2:]), w[0], \
            math.prod(w[1:])
    if node.op == "qlinear":
        return 1, math.prod(node.shape[:-1]), w[1], w[0]
    a = node.inputs[0].shape  # qmatmul: batched
    return math.prod(node.shape[:-2]), a[-2] if len(a) > 1 else 1, a[-1], node.shape[-1]


# ------------------------------------------------------------------ weights


def _weight(node: Node) -> Node | None:
    """The constant weight operand of a GEMM (None for other ops and activation x activation)."""
    if not is_gemm(node.op) or len(node.inputs) < 2 or not node.inputs[1].is_const:
        return None
    return node.inputs[1]


def _stored_bits(w: Node) -> float:
    """Bits per element of a constant's stored codes (or values); for "sparse" and "nm"
    weights their average, bitmap or positions included."""
    enc = encoding_of(w)
    if enc.is_dense:
        return w.dtype.numpy.itemsize * 8  # as numpy holds it (i4 takes a byte)
    if enc.kind in ("sparse", "nm"):
        return w.stored_nbytes * 8 / max(w.type.size, 1)
    return enc.bits


_DENSITY: weakref.WeakKeyDictionary[Node, float] = weakref.WeakKeyDictionary()


def weight_density(w: Node) -> float:
    """The fraction of nonzero values of the constant `w`, decoded (1.0 when its data was not
    loaded). Computed once per node: graphs are immutable."""
    if w not in _DENSITY:
        try:
            values = w.data
        except ValueError:  # parsed from a summarised dump: no data, assume dense
            return 1.0
        _DENSITY[w] = np.count_nonzero(values) / values.size if values.size else 1.0
    return _DENSITY[w]


def _tiled(w: Node, node: Node, rows: int, cols: int) -> float:
    """The fraction of the rows x cols tiles of `node`'s K x N weight matrix (per group; K in
    OHWI order) that hold a nonzero value (1.0 when the weight's data was not loaded)."""
    key = (node.op, node.attrs.get("groups", 1), rows, cols)
    cache = _TILES.setdefault(w, {})
    if key not in cache:
        try:
            values = w.data
        except ValueError:
            return 1.0
        groups = key[1] if node.op == "qconv" else 1
        if node.op == "qconv":  # (O, C/g, *k) -> per group (K = k..., C/g) x (O/g)
            moved = np.moveaxis(values, 1, -1).reshape(groups, values.shape[0] // groups, -1)
            matrices = moved.transpose(0, 2, 1)
        elif node.op == "qlinear":  # (O, K) -> K x O
            matrices = values.T[None]
        elif node.op == "qmatmul":  # (..., K, N) -> batches of K x N
            matrices = values.reshape((-1,) + (values.shape[-2:] if values.ndim > 1
                                               else (values.size, 1)))
        else:  # qconv_transpose (Cin, Cout, *k) -> Cin x (Cout k...)
            matrices = values.reshape(1, values.shape[0], -1)
        g, k, n = matrices.shape
        padded = np.zeros((g, -(-k // rows) * rows, -(-n // cols) * cols), bool)
        padded[:, :k, :n] = matrices != 0
        tiles = padded.reshape(g, padded.shape[1] // rows, rows, padded.shape[2] // cols, cols)
        cache[key] = float(tiles.any(axis=(2, 4)).mean()) if tiles.size else 1.0
    return cache[key]


_TILES: weakref.WeakKeyDictionary[Node, dict] = weakref.WeakKeyDictionary()


def sparsity_fractions(node: Node, npu, mode: str | None = None  # noqa: ANN001 - a targets.NPU
                       ) -> tuple[float, float]:
    """(cycles, MAC energy) fractions of a GEMM on the NPU in sparsity `mode` (default: the
    target's), by the model of the module docstring; (1, 1) for a GEMM without constant
    weights."""
    mode = mode or npu.sparsity
    if mode not in SPARSITY_MODES:
        raise ValueError(f"sparsity mode {mode!r}: expected one of {', '.join(SPARSITY_MODES)}")
    w = _weight(node)
    if w is None or mode == "none":
        return 1.0, 1.0
    if mode == "gating":
        return 1.0, weight_density(w)
    if mode == "nm":
        enc = encoding_of(w)
        if enc.kind != "nm":
            return 1.0, 1.0
        quant = w.type.quant
        length = w.shape[nm_axis(len(w.shape), quant.axis if quant and quant.axis else 0)]
        kept = min(1.0, -(-length // enc.m) * enc.n / length)
        return kept, kept
    tiles = _tiled(w, node, npu.rows, npu.cols)
    if mode == "block":
        return tiles, tiles
    ideal = min(weight_density(w), tiles)
    return ideal, ideal


def sparsity_signature(nodes: list[Node], npu, mode: str) -> tuple:  # noqa: ANN001
    """Everything sparsity `mode` changes in the cost of `nodes` on `npu`: each GEMM's
    fractions and whether its weights are decoded first. Modes with equal signatures cost the
    same, so the report simulates each signature once."""
    npu = replace(npu, sparsity=mode)
    return tuple((sparsity_fractions(n, npu), _decode_kind(n, npu)) for n in nodes
                 if _weight(n) is not None)


def _decode_kind(node: Node, npu) -> str | None:  # noqa: ANN001
    """"lut" or "unpack" when the NPU needs `node`'s weights decoded first (else None)."""
    w = _weight(node)
    if w is None:
        return None
    enc = encoding_of(w)
    if enc.is_lut:
        return None if npu.palette_decode else "lut"
    if enc.kind == "sparse":  # only a perfectly compacting array reads the bitmap itself
        return None if npu.sparsity == "ideal" else "unpack"
    if enc.kind == "nm":
        return None if npu.sparsity in ("nm", "ideal") else "unpack"
    if enc.kind == "int" and enc.bits != npu.weight_bits:
        return "unpack"
    return None


def _decoded_bits(node: Node, npu) -> int:  # noqa: ANN001
    """Width of the weights the array reads after decoding: int8 from a LUT; unpacked integers
    widen to the array's weight width when they fit it, else to int8."""
    if _decode_kind(node, npu) == "unpack" and _weight_bits(node) <= npu.weight_bits:
        return npu.weight_bits
    return 8


def _weight_bits(node: Node) -> int:
    """Bits of a GEMM's weight values as the MAC sees them (LUT formats hold int8 values)."""
    w = _weight(node)
    if w is None:
        return 8
    enc = encoding_of(w)
    return enc.bits if enc.kind == "int" else 8


# ------------------------------------------------------------------ cost


def _traffic(node: Node, engine: str, target) -> Traffic:  # noqa: ANN001
    """DRAM and SRAM bytes of `node` on `engine`, tiled to the SRAM (`tiling`)."""
    sram = target.memory.sram_bytes
    constants = 0
    for k, i in enumerate(node.inputs):
        if not i.is_const or (k == 1 and _weight(node) is i):
            continue
        constants += node.type.nbytes if node.op == "gather" and k == 0 else i.stored_nbytes
    if not is_gemm(node.op):
        activations = sum(i.type.nbytes for i in node.inputs if not i.is_const)
        return stream_traffic(constants, activations + node.type.nbytes, sram)
    _, m, k, n = _gemm_shape(node)
    lhs, rhs = node.inputs[:2]
    w = _weight(node)
    if w is None:
        rhs_bytes, rhs_element = rhs.type.nbytes, rhs.dtype.numpy.itemsize
    else:
        rhs_bytes = w.stored_nbytes
        rhs_element = _stored_bits(w) / 8
    gemm = gemm_traffic(m, k, n, lhs.type.nbytes, rhs_bytes, node.type.nbytes, w is not None,
                        lhs.dtype.numpy.itemsize, rhs_element, sram)
    return replace(gemm, dram_bytes=gemm.dram_bytes + constants,
                   sram_bytes=gemm.sram_bytes + constants)


@dataclass(frozen=True)
class _Decode:
    seconds: float
    sram_bytes: int
    ops: int


def _decode(node: Node, target) -> _Decode:  # noqa: ANN001
    """Decoding (or unpacking) a GEMM's weights for the NPU on the DSP, else the CPU: one
    operation per weight element, and the decoded weights written to and read from SRAM."""
    npu = target.npu
    if _decode_kind(node, npu) is None:
        return _Decode(0.0, 0, 0)
    count = node.inputs[1].type.size
    if target.dsp is not None:
        seconds = math.ceil(count / target.dsp.lanes) / target.dsp.clock_hz
    else:
        seconds = math.ceil(count / target.cpu.ops_per_cycle) / target.cpu.clock_hz
    moved = 2 * math.ceil(count * _decoded_bits(node, npu) / 8)
    seconds += moved / sram_bytes_per_s(target)
    return _Decode(seconds, moved, count)


def op_cost(engine: str, node: Node, target, store_bytes: int = 0) -> OpCost:  # noqa: ANN001
    """The cost of `node` on `engine` of `target` (which must support it). State crosses DRAM:
    a `state` read loads its bytes; `store_bytes` (a state this call changes to `node`'s value)
    are written back."""
    cost = _op_cost(engine, node, target)
    moved = (node.type.nbytes if node.op == "state" else 0) + store_bytes
    if not moved:
        return cost
    memory = target.memory
    seconds = moved / memory.dram_bytes_per_s + (0.0 if cost.dram_bytes else
                                                 memory.dram_latency_s)
    return replace(cost, seconds=cost.seconds + seconds, dram_bytes=cost.dram_bytes + moved,
                   energy_j=cost.energy_j + moved * target.energy.dram_byte_pj * 1e-12,
                   bound="memory" if seconds >= cost.seconds else cost.bound)


def _op_cost(engine: str, node: Node, target) -> OpCost:  # noqa: ANN001
    if is_view(node.op):
        return OpCost(engine, 0, 0, 0.0, 0, 0, 0.0, "memory", 0.0)
    work = macs(node)
    wide = int16_mode(node)
    performed = work  # MACs (or ops) the engine actually does
    decode = _Decode(0.0, 0, 0)
    if engine == "npu":
        npu = target.npu
        groups, m, k, n = _gemm_shape(node)
        cycles = groups * gemm_cycles(m, k, n, npu.rows, npu.cols, npu.dataflow)
        rate = (8 / npu.weight_bits if _weight_bits(node) <= npu.weight_bits else 1.0)
        rate *= npu.int16_rate if wide else 1.0
        cycles = math.ceil(cycles / rate)
        cycle_share, mac_share = sparsity_fractions(node, npu)
        performed = round(work * mac_share)
        cycles = math.ceil(cycles * cycle_share)
        # the MACs the array spends cycles on (gated ones included: gating saves no time)
        util = (work * cycle_share / (npu.rows * npu.cols * rate * cycles) if cycles else 0.0)
        clock = npu.clock_hz
        decode = _decode(node, target)
    elif engine == "dsp":
        lanes = target.dsp.lanes // (2 if wide else 1)
        ops = _vector_ops(node, work)
        cycles = math.ceil(ops / lanes)
        util = ops / (lanes * cycles) if cycles else 0.0
        clock = target.dsp.clock_hz
    else:
        cycles = math.ceil(_vector_ops(node, work) / target.cpu.ops_per_cycle)
        util = 1.0
        clock = target.cpu.clock_hz
    traffic = _traffic(node, engine, target)
    memory = target.memory
    dram, sram = traffic.dram_bytes, traffic.sram_bytes
    compute_s = cycles / clock
    memory_s = max(dram / memory.dram_bytes_per_s, sram / sram_bytes_per_s(target))
    seconds = (max(compute_s, memory_s) + (memory.dram_latency_s if dram else 0.0)
               + decode.seconds)
    energy = target.energy
    mac_pj = (energy.mac_f32_pj if node.dtype.is_float and node.op != "dequantize"
              else energy.mac_i16_pj if wide else energy.mac_i8_pj)
    sram += decode.sram_bytes
    # a decode operation (a lookup or a shift) is costed as one int8 MAC
    joules = (performed * mac_pj + decode.ops * energy.mac_i8_pj + sram * energy.sram_byte_pj
              + dram * energy.dram_byte_pj) * 1e-12
    return OpCost(engine, work, cycles, seconds, dram, sram, joules,
                  "compute" if compute_s >= memory_s else "memory", util, traffic.describe())


def _vector_ops(node: Node, work: int) -> int:
    """Operations a DSP or CPU does for `node`: a GEMM's MACs plus one per encoded weight
    element it decodes as it reads them, or its `per_element` operations per element touched."""
    cost = OPS[node.op].cost
    if cost.kind != "gemm":
        return _elements(node) * cost.per_element
    w = _weight(node)
    return work + (w.type.size if w is not None and not encoding_of(w).is_dense else 0)


def _elements(node: Node) -> int:
    """Elements an op touches: the larger of its result and its largest activation operand
    (a reduction or pool reads more than it writes)."""
    return max([node.type.size] + [i.type.size for i in node.inputs if not i.is_const])
