"""The per-op rules of the quantize pass: each float op becomes its integer-only form.

Not a pass itself: `lower(graph, specs, formats, stats)` walks the prepared, planned float graph
(see `npuc.passes.quantize`) and returns the integer graph and, for every lowered value, the float
value it stands for. Which integer op a float op becomes is its `integer` trait
(`npuc.ops.IntegerForm`); the rule that builds it is the op's own (`@rule`), else the one that
trait implies (`rule_for`): ops whose integer form is "lut" (sigmoid, tanh, GELU, SiLU, exp, ...)
share one rule, a table of the float op evaluated on every integer input (256 entries for 8-bit
inputs, 513 interpolated for int16), and data movement that stays itself and keeps its input's
parameters shares another. A rule reads its operands' integer values with `Lowering.operand`,
which quantizes constants and rescales values whose parameters differ from what the rule needs,
and builds its result with `Lowering.result`, which attaches the planned dtype and parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from npuc.errors import UnsupportedError
from npuc.ir import DType, Graph, Node, QuantParams, StateSlot, const, state_read
from npuc.ops import OPS, make, moves
from npuc.ops.quantized import EXP_BITS, EXP_RANGE, per_tensor
from npuc.quant import arith
from npuc.quant.constants import encoded_const
from npuc.quant.weights import quantize_weight

from .quantize import Spec, Stats, _params, is_mask

Rule = Callable[["Lowering", Node], Node]
MIN_SCALE = 1e-30  # weights below float32's normal range quantize to 0 at this scale
RULES: dict[str, Rule] = {}
I32 = DType.I32


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Register `fn` as the rule of float `ops`: each must have an integer form (an op whose
    `integer` trait says it has none gets no rule), and one rule only."""
    def register(fn: Rule) -> Rule:
        for op in ops:
            if op in RULES or OPS[op].integer.op is None:
                raise AssertionError(f"rule for {op}: a second one, or the op has no integer "
                                     f"form ({OPS[op].integer})")  # pragma: no cover
            RULES[op] = fn
        return fn

    return register


def rule_for(op: str) -> Rule | None:
    """The rule that lowers float `op`: its own, else the one its integer form implies (a
    table for "lut", `_data_movement` for an op that stays itself and keeps its parameters);
    None when it has no integer form."""
    form = OPS[op].integer
    if op in RULES:
        return RULES[op]
    if form.op == "lut":
        return _table
    if form == moves(op):
        return _data_movement
    return None


def integer_op(node: Node) -> str:
    """The integer op float `node` lowers to (its op's `integer` trait)."""
    op = OPS[node.op].integer.op
    assert op is not None, node.op  # only rules call it, and only ops with a form have rules
    return op


class Lowering:
    """The state of one lowering: planned specs, lowered values, and how to build integer nodes."""

    def __init__(self, specs: dict[Node, Spec], formats: Callable[[str | None], Any],
                 stats: Stats, wide_gemms: bool | frozenset[Node] = False) -> None:
        self.specs, self.formats, self.stats = specs, formats, stats
        # int16 activations a MAC array multiplies as int16 (16x8), not narrowed to int8: all
        # of them (True), or these float values
        self.wide_gemms = wide_gemms
        self.env: dict[Node, Node] = {}

    def spec(self, node: Node) -> Spec:
        return self.specs[node]

    def operand(self, node: Node, want: Spec | None = None, dtype: DType = DType.I8) -> Node:
        """The integer value of float `node`, with the parameters `want` when given. Constants are
        quantized to `want`, else per tensor over their own range in `dtype` (int16 symmetric)."""
        if node.is_const:
            data = node.data
            spec = want or Spec(dtype, arith.qparams(*_finite_range(data), dtype,
                                                     symmetric=dtype == DType.I16))
            q = arith.quantize(data, *_pair(spec.quant), spec.dtype)
            return const(q, spec.dtype, node.loc, spec.quant)
        value = self.env[node]
        have = self.specs.get(node)
        if want is None or have == want:
            return value
        return make("rescale", [value], {"dtype": want.dtype.value}, node.loc, want.quant)

    def gemm_operand(self, node: Node, narrow: bool = False) -> Node:
        """An activation a MAC array multiplies: int8, rescaled from int16 when the plan made it
        wide, unless `wide_gemms` keeps it int16 (16x8 MACs) and this is not the `narrow` side
        of a product of two activations (int16 x int16 products would overflow an int32
        accumulator after a few terms)."""
        spec = self.specs.get(node)
        wide = self.wide_gemms is True or (not isinstance(self.wide_gemms, bool)
                                           and node in self.wide_gemms)
        if spec is None or spec.dtype != DType.I16 or wide and not narrow:
            return self.operand(node)
        lo, hi = self.stats.ranges.get(node, (0.0, 0.0))
        return self.operand(node, _params(lo, hi, DType.I8))

    def result(self, op: str, inputs: list[Node], attrs: Any, node: Node,
               spec: Spec | None = None) -> Node:
        """An integer node computing `node`, with its planned (or the given) spec."""
        spec = spec or self.spec(node)
        attrs = dict(attrs or {})
        if "dtype" in OPS[op].attrs:
            attrs["dtype"] = spec.dtype.value
        return make(op, inputs, attrs, node.loc, spec.quant)


def _pair(q: QuantParams) -> tuple[float, int]:
    return q.scale[0], q.zero_point[0]


def _finite_range(data: np.ndarray) -> tuple[float, float]:
    finite = data[np.isfinite(data)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def unsupported(node: Node, why: str, hint: str) -> UnsupportedError:
    return UnsupportedError(why, op=node.op, loc=node.loc or "", stage="quantize", hint=hint)


def lower(graph: Graph, specs: dict[Node, Spec], formats: Callable[[str | None], Any],
          stats: Stats, wide_gemms: bool | frozenset[Node] = False
          ) -> tuple[Graph, dict[Node, Node]]:
    """The integer-only graph and {lowered value: float value it represents}; `wide_gemms`
    keeps int16 activations as int16 MAC operands (see `Lowering.gemm_operand`)."""
    lowering = Lowering(specs, formats, stats, wide_gemms)
    env, origins = lowering.env, {}
    for node in graph.nodes:
        if node.op == "input":
            env[node] = node
            if node.dtype.is_float:
                env[node] = lowering.result("quantize", [node], {}, node)
                origins[env[node]] = node
        elif node.op == "state":
            env[node] = node if not node.dtype.is_float else state_read(
                node.attrs["name"], lowering.result("quantize", [node], {}, node).type, node.loc)
            origins[env[node]] = node
        elif node.is_const or is_mask(node):
            env[node] = node  # quantized by the reader that knows the parameters it needs
        elif not node.dtype.is_float and not any(i.dtype.is_float for i in node.inputs):
            env[node] = node.with_inputs(tuple(env[i] for i in node.inputs))
        else:
            fn = rule_for(node.op)
            if fn is None:
                raise unsupported(node, f"no integer kernel for '{node.op}'",
                                  "keep this op out of the quantized model, or open an issue")
            env[node] = fn(lowering, node)
            origins[env[node]] = node
    outputs = []
    for out in graph.outputs:
        value = env[out]
        if out.dtype.is_float:
            value = make("dequantize", [value], {}, out.loc)
        outputs.append(value)
    state = tuple(StateSlot(env[s.read], env[s.write]) for s in graph.state)
    return Graph(graph.inputs, tuple(outputs), graph.name, {}, state), origins


# -- tables ---------------------------------------------------------------------------------------

def input_grid(spec: Spec) -> np.ndarray:
    """The integer inputs a table is evaluated at: all 256 8-bit codes, or the 513 int16 points
    -32768 + 128 i that TOSA's interpolated table uses."""
    if spec.dtype.bits == 8:
        lo, hi = arith.dtype_range(spec.dtype)
        return np.arange(lo, hi + 1, dtype=np.int64)
    return -32768 + 128 * np.arange(513, dtype=np.int64)


def _table(lowering: Lowering, node: Node) -> Node:
    """Any unary float function as a lookup table from the input's codes to the result's."""
    src = node.inputs[0]
    x, spec_in, spec = lowering.operand(src), lowering.spec(src), lowering.spec(node)
    real = arith.dequantize(input_grid(spec_in), *_pair(spec_in.quant))
    with np.errstate(all="ignore"):  # log(0), 1/0: the table saturates them
        y = OPS[node.op].impl(node.attrs, real)
    table = const(arith.quantize(y, *_pair(spec.quant), spec.dtype), spec.dtype, node.loc)
    return lowering.result(integer_op(node), [x, table], {}, node)


# -- matrix products ------------------------------------------------------------------------------

@rule("conv", "conv_transpose", "linear")
def _gemm(lowering: Lowering, node: Node) -> Node:
    x, w, *bias = node.inputs
    if not w.is_const:
        raise unsupported(node, "a layer whose weight is computed at run time",
                          "use matmul for products of two activations")
    axis = 1 if node.op == "conv_transpose" else 0
    if node.op == "conv_transpose" and node.attrs["groups"] != 1:
        raise unsupported(node, "grouped conv_transpose", "use groups=1")
    xq = lowering.gemm_operand(x)
    fmt = lowering.formats(node.loc)
    b = bias[0].data.astype(np.float64) if bias else None
    # a bias must fit int32 at s_x * s_w: floor s_w (half the range: room for bias correction)
    floor = None if b is None else np.abs(b) / (per_tensor(xq.type)[0] * (1 << 30))
    try:
        encoded = quantize_weight(w.data, fmt, axis=axis, min_scale=floor,
                                  inputs=lowering.stats.layer_inputs.get(node))
    except ValueError as e:
        raise unsupported(node, f"weight format {fmt}: {e}",
                          "choose another format for this layer with the quantize pass's "
                          "`layers` option") from None
    channels = len(encoded.scale)
    scales = np.maximum(np.asarray(encoded.scale, np.float64), MIN_SCALE)
    wq = encoded_const(encoded, QuantParams(tuple(scales), (0,) * channels, axis), w.loc)
    inputs = [xq, wq]
    b = np.zeros(channels) if b is None else b
    shift = _weight_error_bias(node, encoded, lowering.stats.channel_means.get(node))
    if bias or np.any(shift):
        s_acc = np.maximum(per_tensor(xq.type)[0] * np.asarray(wq.type.quant.scale), MIN_SCALE)
        q = np.clip(np.rint((b - shift) / s_acc), arith.INT32_MIN, arith.INT32_MAX)
        inputs.append(const(q.astype(np.int32), I32, bias[0].loc if bias else node.loc,
                            QuantParams(tuple(map(float, s_acc)), (0,) * channels, 0)))
    return lowering.result(integer_op(node), inputs, node.attrs, node)


def _weight_error_bias(node: Node, encoded: Any, mean: np.ndarray | None) -> np.ndarray:
    """Bias correction (Nagel et al., DFQ, 2019): the mean output shift that the weights'
    quantization error causes on the calibration inputs, (W_q - W) E[x] per output channel
    (conv: each kernel tap sees its input channel's mean; padding is ignored)."""
    channels = len(encoded.scale)
    if mean is None or node.op == "conv_transpose":
        return np.zeros(channels)
    w = node.inputs[1].data.astype(np.float64)
    error = encoded.values * np.asarray(encoded.scale).reshape((-1,) + (1,) * (w.ndim - 1)) - w
    if node.op == "linear":
        return error @ mean
    groups = node.attrs["groups"]
    per_tap = error.reshape(channels, error.shape[1], -1).sum(axis=2)  # (O, C/groups)
    means = mean.reshape(groups, -1)[np.arange(channels) // (channels // groups)]
    return (per_tap * means).sum(axis=1)


@rule("matmul")
def _matmul(lowering: Lowering, node: Node) -> Node:
    operands = []
    for k, v in enumerate(node.inputs):  # a constant operand is a weight: symmetric int8
        want = None
        if v.is_const:
            lo, hi = _finite_range(v.data)
            want = Spec(DType.I8, arith.qparams(lo, hi, DType.I8, symmetric=True))
        operands.append(lowering.operand(v, want) if want else
                        lowering.gemm_operand(v, narrow=k == 1))
    return lowering.result(integer_op(node), operands, {}, node)


# -- elementwise arithmetic -----------------------------------------------------------------------

@rule("add", "sub")
def _add(lowering: Lowering, node: Node) -> Node:
    a, b = node.inputs
    if node.op == "add" and (is_mask(a) or is_mask(b)):
        x, mask = (b, a) if is_mask(a) else (a, b)
        return _masked(lowering, node, x, mask)
    dtype = lowering.spec(node).dtype  # a constant term is as precise as the sum
    return lowering.result(integer_op(node), [lowering.operand(v, dtype=dtype) for v in (a, b)],
                           {}, node)


def _masked(lowering: Lowering, node: Node, x: Node, mask: Node) -> Node:
    """x + mask, mask in {0, -inf}: x where the mask keeps, the dtype's minimum elsewhere (which
    qsoftmax reads as minus infinity)."""
    spec = lowering.spec(node)
    keep = _keep(mask)
    floor = const(np.array(arith.dtype_range(spec.dtype)[0]), spec.dtype, mask.loc, spec.quant)
    return lowering.result("where", [keep, lowering.operand(x, spec), floor], {}, node)


def _keep(mask: Node) -> Node:
    """The bool tensor that is true where `mask` is 0, moved like the mask was moved."""
    if mask.is_const:
        return const(mask.data == 0, DType.BOOL, mask.loc)
    if mask.op == "where":
        cond, zero_if_true = mask.inputs[0], float(mask.inputs[1].data.reshape(-1)[0]) == 0
        keep = cond if zero_if_true else make("logical_not", [cond], loc=mask.loc)
        shape = np.broadcast_shapes(*(i.shape for i in mask.inputs))
        return keep if keep.shape == shape else make("expand", [keep], {"shape": shape},
                                                     mask.loc)
    return make(mask.op, [_keep(mask.inputs[0]), *mask.inputs[1:]], mask.attrs, mask.loc)


@rule("mul")
def _mul(lowering: Lowering, node: Node) -> Node:
    dtype = lowering.spec(node).dtype
    return lowering.result(integer_op(node),
                           [lowering.operand(v, dtype=dtype) for v in node.inputs], {}, node)


@rule("maximum", "minimum", "where", "concat", "reuse")
def _same_params(lowering: Lowering, node: Node) -> Node:
    """Ops exact on integers once every float operand has the result's parameters."""
    spec = lowering.spec(node)
    args = [lowering.operand(v, spec) if v.dtype.is_float else lowering.env[v]
            for v in node.inputs]
    return lowering.result(integer_op(node), args, node.attrs, node)


def _data_movement(lowering: Lowering, node: Node) -> Node:
    """An op that moves values and keeps its input's parameters (see `rule_for`)."""
    args = [lowering.operand(node.inputs[0]), *(lowering.env[i] for i in node.inputs[1:])]
    return lowering.result(integer_op(node), args, node.attrs, node)


@rule("pad")
def _pad(lowering: Lowering, node: Node) -> Node:
    """The padding value, quantized, may widen the range: the result has its own parameters."""
    spec = lowering.spec(node)
    value = int(arith.quantize(np.float32(node.attrs["value"]), *_pair(spec.quant), spec.dtype))
    return lowering.result(integer_op(node), [lowering.operand(node.inputs[0], spec)],
                           node.attrs.replace(value=float(value)), node)


@rule("gather")
def _gather(lowering: Lowering, node: Node) -> Node:
    table, index = node.inputs
    return lowering.result(integer_op(node), [lowering.operand(table, lowering.spec(node)),
                                      lowering.env[index]], node.attrs, node)


@rule("relu", "clamp")
def _clamp(lowering: Lowering, node: Node) -> Node:
    """Saturation at the quantized bounds; nothing at all when the result's range already ends
    where the clamp does (the producer absorbed it)."""
    spec = lowering.spec(node)
    x = lowering.operand(node.inputs[0], spec)
    lo, hi = (0.0, np.inf) if node.op == "relu" else (node.attrs["min"], node.attrs["max"])
    dmin, dmax = arith.dtype_range(spec.dtype)
    qlo, qhi = (int(arith.quantize(np.float32(v), *_pair(spec.quant), spec.dtype))
                for v in (lo, hi))
    if qlo <= dmin and qhi >= dmax:
        return x
    attrs = {"min": qlo if qlo > dmin else None, "max": qhi if qhi < dmax else None}
    return lowering.result(integer_op(node), [x], attrs, node)


@rule("prelu")
def _prelu(lowering: Lowering, node: Node) -> Node:
    x, slope = node.inputs
    lo, hi = _finite_range(slope.data)
    want = Spec(DType.I8, arith.qparams(lo, hi, DType.I8, symmetric=True))
    return lowering.result(integer_op(node), [lowering.operand(x), lowering.operand(slope, want)],
                           {}, node)


@rule("cast")
def _cast(lowering: Lowering, node: Node) -> Node:
    """An integer or bool value made float: its integers at scale 1, rescaled to the plan."""
    src = node.inputs[0]
    if src.dtype.is_float:
        if node.dtype.is_float:
            return lowering.operand(src, lowering.spec(node))
        raise unsupported(node, "a float-to-integer cast inside a quantized graph",
                          "cast the model's inputs instead")
    ints = make("cast", [lowering.env[src]], {"dtype": "i32"}, node.loc, QuantParams((1.0,), (0,)))
    return lowering.result(integer_op(node), [ints], {}, node)


@rule("eq", "ne", "lt", "le", "gt", "ge")
def _compare(lowering: Lowering, node: Node) -> Node:
    a, b = node.inputs
    common = lowering.spec(b if a.is_const else a)
    return make(integer_op(node), [lowering.operand(a, common), lowering.operand(b, common)], {},
                node.loc)


# -- reductions, pooling, resizing ----------------------------------------------------------------

@rule("mean", "sum", "avg_pool", "adaptive_avg_pool", "resize")
def _one_operand(lowering: Lowering, node: Node) -> Node:
    """Its integer op on the operand as it is, with the same attributes."""
    return lowering.result(integer_op(node), [lowering.operand(node.inputs[0])], node.attrs, node)


# -- softmax and normalisation --------------------------------------------------------------------

def exp_table(spec: Spec) -> np.ndarray:
    """round(2**16 * exp(-distance)) at the distances below the max that qsoftmax looks up:
    d * scale for d = 0..255 (8-bit inputs), i * EXP_RANGE / 512 for i = 0..512 (int16)."""
    if spec.dtype.bits == 8:
        distance = np.arange(256) * per_scale(spec)
    else:
        distance = np.arange(513) * (EXP_RANGE / 512)
    return np.rint(np.exp(-distance) * (1 << EXP_BITS)).astype(np.int32)


def per_scale(spec: Spec) -> float:
    return spec.quant.scale[0]


@rule("softmax")
def _softmax(lowering: Lowering, node: Node) -> Node:
    src = node.inputs[0]
    table = const(exp_table(lowering.spec(src)), I32, node.loc)
    return lowering.result(integer_op(node), [lowering.operand(src), table], node.attrs, node)


LOG_TABLE = np.rint(np.log1p(np.arange(256) / 256) * (1 << EXP_BITS)).astype(np.int32)


@rule("log_softmax")
def _log_softmax(lowering: Lowering, node: Node) -> Node:
    src = node.inputs[0]
    tables = [const(exp_table(lowering.spec(src)), I32, node.loc), const(LOG_TABLE, I32, node.loc)]
    return lowering.result(integer_op(node), [lowering.operand(src), *tables], node.attrs, node)


@rule("layer_norm", "group_norm")
def _norm(lowering: Lowering, node: Node) -> Node:
    """gamma and beta become per-element requantization: multiplier and shift of
    gamma / (2**16 * s_out) (gamma's sign on the multiplier) and bias beta / s_out."""
    from npuc.ops.quantized import NORM_BITS

    x, *affine = node.inputs
    shape = x.shape[-node.attrs["ndim"]:] if node.op == "layer_norm" else (x.shape[1],)
    gamma = affine[0].data.astype(np.float64) if affine else np.ones(shape)
    beta = affine[1].data.astype(np.float64) if len(affine) > 1 else np.zeros(shape)
    s_out = per_scale(lowering.spec(node))
    mult, shift = arith.multipliers(np.abs(gamma) / ((1 << NORM_BITS) * s_out))
    mult = np.where(gamma < 0, -mult, mult)
    bias = np.clip(np.rint(beta / s_out), arith.INT32_MIN, arith.INT32_MAX)
    params = [const(v.astype(np.int32), I32, node.loc) for v in (mult, shift, bias)]
    return lowering.result(integer_op(node), [lowering.operand(x), *params], node.attrs, node)
