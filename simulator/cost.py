"""Per-op cost on each engine of a target: cycles, bytes moved and energy, analytically.

NPU: the integer GEMM ops (qconv, qlinear, qmatmul, qconv_transpose) as im2col GEMMs on the
systolic array (`systolic.gemm_cycles`), per group, at 8 / weight_bits MACs per PE per cycle and
`int16_rate` for int16 activations. DSP: every other integer op, `DSP_WORK` operations per
element over `lanes` (half for int16), and depthwise convs as MACs over lanes. CPU: anything,
float included, at `ops_per_cycle`. Reshape is free (a view); every other data movement is a copy.

Memory: weights stream from DRAM once; activations stay in SRAM unless an op's working set
exceeds it, then they round-trip DRAM once per SRAM-sized tile. With double buffering an op takes
max(compute, memory) plus the DRAM latency of its first tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from npuc.ir import DType, Node
from npuc.ops import macs

from .systolic import gemm_cycles

GEMMS = frozenset({"qconv", "qlinear", "qmatmul", "qconv_transpose"})
FREE = frozenset({"reshape", "input", "const"})
# DSP operations per output element (a lookup, a requantization, ...), by op
DSP_WORK = {"lut": 1, "rescale": 2, "qadd": 4, "qsub": 4, "qmul": 3, "qprelu": 3,
            "qsoftmax": 8, "qlog_softmax": 10, "qlayer_norm": 10, "qgroup_norm": 10,
            "quantize": 2, "dequantize": 2, "where": 1, "maximum": 1, "minimum": 1}


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


def engines(target) -> list[str]:  # noqa: ANN001 - a npuc.targets.Target
    return [e for e in ("npu", "dsp", "cpu") if getattr(target, e, None) is not None]


def supports(engine: str, node: Node) -> str | None:
    """None if `engine` can run `node`, else why not (shown in the report)."""
    floating = node.dtype.is_float and node.op != "dequantize"
    if engine == "npu":
        if node.op not in GEMMS:
            return f"{node.op} is not a matrix product"
        if _depthwise(node):
            return "depthwise: one filter per channel starves the array"
        return None
    if engine == "dsp":
        return "float op" if floating else None
    return None


def _depthwise(node: Node) -> bool:
    return node.op == "qconv" and node.attrs["groups"] > 1 and node.inputs[1].shape[1] == 1


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


def _bytes(node: Node) -> tuple[int, int]:
    """(weight bytes as stored, activation bytes read and written)."""
    weights = sum(i.attrs["data"].nbytes if i.attrs.get("data") is not None else i.type.nbytes
                  for i in node.inputs if i.is_const)
    acts = sum(i.type.nbytes for i in node.inputs if not i.is_const) + node.type.nbytes
    return weights, acts


def op_cost(engine: str, node: Node, target) -> OpCost:  # noqa: ANN001
    """The cost of `node` on `engine` of `target` (which must support it)."""
    work = macs(node)
    wide = any(i.dtype == DType.I16 for i in node.inputs) or node.dtype == DType.I16
    util = 1.0
    if node.op in FREE:
        return OpCost(engine, 0, 0, 0.0, 0, 0, 0.0, "memory", 0.0)
    if engine == "npu":
        npu = target.npu
        groups, m, k, n = _gemm_shape(node)
        cycles = groups * gemm_cycles(m, k, n, npu.rows, npu.cols, npu.dataflow)
        rate = (8 / npu.weight_bits if _weight_bits(node) <= npu.weight_bits else 1.0)
        rate *= npu.int16_rate if wide else 1.0
        cycles = math.ceil(cycles / rate)
        util = work / (npu.rows * npu.cols * rate * cycles) if cycles else 0.0  # of this mode
        clock = npu.clock_hz
    elif engine == "dsp":
        lanes = target.dsp.lanes // (2 if wide else 1)
        ops = work if work else _elements(node) * DSP_WORK.get(node.op, 1)
        cycles = math.ceil(ops / lanes)
        util = ops / (lanes * cycles) if cycles else 0.0
        clock = target.dsp.clock_hz
    else:
        cycles = math.ceil(max(work, _elements(node)) / target.cpu.ops_per_cycle)
        clock = target.cpu.clock_hz
    weights, acts = _bytes(node)
    memory = target.memory
    sram = weights + acts
    spill = acts * math.ceil(sram / memory.sram_bytes) if sram > memory.sram_bytes else 0
    dram = weights + spill
    compute_s = cycles / clock
    memory_s = max(dram / memory.dram_bytes_per_s,
                   sram / (memory.sram_bytes_per_cycle * clock))
    seconds = max(compute_s, memory_s) + (memory.dram_latency_s if dram else 0.0)
    energy = target.energy
    mac_pj = (energy.mac_f32_pj if node.dtype.is_float and node.op != "dequantize"
              else energy.mac_i16_pj if wide else energy.mac_i8_pj)
    joules = (work * mac_pj + sram * energy.sram_byte_pj + dram * energy.dram_byte_pj) * 1e-12
    return OpCost(engine, work, cycles, seconds, dram, sram, joules,
                  "compute" if compute_s >= memory_s else "memory", util)


def _elements(node: Node) -> int:
    """Elements an op touches: the larger of its result and its largest activation operand
    (a reduction or pool reads more than it writes)."""
    return max([node.type.size] + [i.type.size for i in node.inputs if not i.is_const])


def _weight_bits(node: Node) -> int:
    w = node.inputs[1] if len(node.inputs) > 1 else None
    if w is None or not w.is_const:
        return 8
    encoding = w.attrs.get("encoding", "dense").split(":")[0]
    if encoding.startswith("int"):
        return int(encoding[3:])
    return 2 if encoding == "ternary" else 8
