"""The integer-only ops (`npuc.ops.quantized`) against their float ops.

Each test draws quantization parameters (scales log-uniform, int8/uint8 zero points anywhere in
range, int16/int32 symmetric), small shapes and integer operands, builds the op with `make`, runs
it through `graph.verify()` and the interpreter, checks the result's dtype is the declared one,
and compares it with the float op evaluated in float64 on the dequantized operands, in the
result's units: want = clip(rint(float_result / s_out) + zp_out). Clipping the reference to the
result's range replaces "wherever not saturated": saturation is 1-Lipschitz, so a bound that
holds before it holds after.

Result parameters are fitted to the float result's range times a drawn factor in [1/4, 2] (so a
result uses most of its range and sometimes saturates): a result scale drawn blindly would make
most results all-zero or all-saturated and every comparison vacuous.

The one bound behind most tests (`npuc.quant.arith`): one requantization lands within 1 of the
exact real product, and the rounded reference within 1/2 of it, so a result made of an exact
integer sum and one requantization is within 1.5 of the reference: at most 1 LSB, both being
integers.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import mutually_broadcastable_shapes

import npuc
from npuc.ir import DType, Graph, Node, QuantParams, TensorType, const, graph_input
from npuc.ops import OPS, make, quantized
from npuc.passes.integer_lowering import LOG_TABLE, exp_table
from npuc.passes.quantize import Spec
from npuc.quant import arith

I8, U8, I16, I32, F32 = DType.I8, DType.U8, DType.I16, DType.I32, DType.F32
SEEDS = st.integers(0, 2**32 - 1)
PROPERTY = settings(deadline=None, max_examples=100)  # the profile's derandomize still applies
Q16 = 1 << quantized.EXP_BITS  # exp tables hold 2**16 * exp(-d * s)


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


SCALES = log_uniform(1e-3, 1.0)


def qp(scale: float, zero_point: int = 0) -> QuantParams:
    return QuantParams((float(scale),), (int(zero_point),))


def value_range(dtype: DType) -> tuple[int, int]:
    """The codes activations use: int16 symmetric is [-32767, 32767] (-32768 is qsoftmax's mask)."""
    lo, hi = arith.dtype_range(dtype)
    return (-hi, hi) if dtype == I16 else (lo, hi)


@st.composite
def act_quant(draw: st.DrawFn, dtype: DType, scales: st.SearchStrategy[float] = SCALES
              ) -> QuantParams:
    """Per-tensor activation parameters: 8-bit asymmetric (any zero point), wider symmetric."""
    zp = draw(st.integers(*arith.dtype_range(dtype))) if dtype.bits == 8 else 0
    return qp(draw(scales), zp)


@st.composite
def codes(draw: st.DrawFn, shape: tuple[int, ...], dtype: DType, zero_point: int = 0,
          lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Codes zero_point + noise of a drawn width 2**k - 1 (k = 0: all zero_point; k = bits: the
    whole range, heavy at its ends), clipped to [lo, hi] (default: `value_range`)."""
    k = draw(st.integers(0, min(dtype.bits, 32)))
    rng = np.random.default_rng(draw(SEEDS))
    width = (1 << k) - 1
    dlo, dhi = value_range(dtype)
    v = zero_point + rng.integers(-width, width, size=shape, endpoint=True)
    return np.clip(v, dlo if lo is None else lo, dhi if hi is None else hi).astype(dtype.numpy)


@st.composite
def operand(draw: st.DrawFn, shape: tuple[int, ...], dtypes: tuple[DType, ...] = (I8, I16),
            scales: st.SearchStrategy[float] = SCALES) -> tuple[np.ndarray, QuantParams]:
    """An activation of a drawn dtype: its codes and per-tensor parameters."""
    dtype = draw(st.sampled_from(dtypes))
    quant = draw(act_quant(dtype, scales))
    return draw(codes(shape, dtype, quant.zero_point[0])), quant


def dequant(q: np.ndarray, quant: QuantParams) -> np.ndarray:
    """The real values of codes, exactly (float64), per channel when `quant.axis` is set."""
    shape = [1] * q.ndim
    if quant.axis is not None:
        shape[quant.axis] = -1
    s = np.asarray(quant.scale, np.float64).reshape(shape)
    zp = np.asarray(quant.zero_point, np.float64).reshape(shape)
    return (q.astype(np.float64) - zp) * s


@st.composite
def fit(draw: st.DrawFn, ref: np.ndarray, dtype: DType, floor: float = 1e-6) -> QuantParams:
    """Result parameters covering ref's range (with 0) times a drawn factor in [1/4, 2]: 8-bit
    asymmetric, wider symmetric; the scale at least `floor`."""
    f = draw(log_uniform(0.25, 2.0))
    finite = ref[np.isfinite(ref)]
    lo = min(float(finite.min(initial=0.0)), 0.0) * f
    hi = max(float(finite.max(initial=0.0)), 0.0) * f
    qmin, qmax = arith.dtype_range(dtype)
    if dtype.bits > 8:
        return qp(max(max(-lo, hi) / qmax, floor))
    scale = max((hi - lo) / (qmax - qmin), floor)
    return qp(scale, int(np.clip(round(qmin - lo / scale), qmin, qmax)))


def int_input(name: str, array: np.ndarray, quant: QuantParams | None) -> Node:
    return graph_input(name, TensorType(array.shape, DType.of(array), quant))


def declared_dtype(node: Node) -> DType:
    """What a node says its result is: its dtype attribute, the table's dtype for lut, float32
    for dequantize, else its operand's dtype (ops that keep the operand's parameters)."""
    if "dtype" in node.attrs:
        return DType(node.attrs["dtype"])
    if node.op == "lut":
        return node.inputs[1].dtype
    return F32 if node.op == "dequantize" else node.inputs[0].dtype


def run(node: Node, *arrays: np.ndarray) -> np.ndarray:
    """node's value on `arrays` (one per graph input it reads, in depth-first operand order):
    the graph must verify and the result have the node's shape and its declared dtype."""
    inputs: dict[Node, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if n.op == "input":
            inputs[n] = None
        stack.extend(reversed(n.inputs))
    (out,) = npuc.interpret(Graph(tuple(inputs), (node,)).verify(), *arrays)
    assert node.dtype == declared_dtype(node)
    assert out.shape == node.shape and out.dtype == node.dtype.numpy, (out.shape, out.dtype)
    return out


def want_codes(ref: np.ndarray, quant: QuantParams, dtype: DType) -> np.ndarray:
    """The reference in the result's codes: clip(rint(ref / s) + zp), as float64."""
    lo, hi = arith.dtype_range(dtype)
    (s,), (zp,) = quant.scale, quant.zero_point
    return np.clip(np.rint(ref / s) + zp, lo, hi)


def assert_close(got: np.ndarray, want: np.ndarray, tol: float | np.ndarray,
                 what: str = "") -> None:
    """|got - want| <= tol everywhere; the message shows the worst element."""
    err = np.abs(got.astype(np.float64) - want)
    excess = err - tol
    if excess.size and excess.max() > 1e-9:
        i = np.unravel_index(np.argmax(excess), err.shape)
        tol_i = tol[i] if isinstance(tol, np.ndarray) else tol
        raise AssertionError(f"{what}: error {err[i]:.6g} > {tol_i:.6g} at {i}: got {got[i]}, "
                             f"want {want[i]:.6g} ({np.count_nonzero(excess > 1e-9)} of "
                             f"{err.size} over)")


class Case(NamedTuple):
    """A built integer node, the arrays of its graph inputs, its float64 reference (real units),
    the tolerance in result LSBs, and where the bound applies (None: everywhere)."""

    node: Node
    args: tuple[np.ndarray, ...]
    ref: np.ndarray
    tol: float | np.ndarray = 1
    where: np.ndarray | None = None


def check(case: Case) -> np.ndarray:
    """Run the case and compare it with its reference in result codes; returns the result."""
    got = run(case.node, *case.args)
    want = want_codes(case.ref, case.node.type.quant, case.node.dtype)
    tol = case.tol if case.where is None else np.where(case.where, case.tol, np.inf)
    assert_close(got, want, tol, case.node.op)
    return got


def node_with_fitted_result(draw: st.DrawFn, op: str, inputs: list[Node], attrs: dict,
                            ref: np.ndarray, dtypes: tuple[DType, ...] = (I8, I16),
                            floor: float = 1e-6) -> Node:
    """Build `op` with a drawn result dtype and parameters fitted to the reference."""
    dtype = draw(st.sampled_from(dtypes))
    return make(op, inputs, {**attrs, "dtype": dtype.value}, None, draw(fit(ref, dtype, floor)))


# -- the float boundary ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [I8, U8, I16, I32], ids=str)
@PROPERTY
@given(data=st.data())
def test_quantize_dequantize_round_trip(dtype: DType, data: st.DataObject) -> None:
    """dequantize(quantize(x)) is within s/2 of x (plus float32 rounding) inside the range; x
    beyond it saturates to the nearest end; NaN gives the zero point, +-inf the ends."""
    quant = data.draw(act_quant(dtype))
    (s,), (zp,) = quant.scale, quant.zero_point
    lo, hi = arith.dtype_range(dtype)
    rng = np.random.default_rng(data.draw(SEEDS))
    inside = rng.uniform(s * (lo - zp), s * (hi - zp), 40)
    outside = np.concatenate([s * (hi - zp) * rng.uniform(1.01, 1e3, 8),
                              s * (lo - zp) * rng.uniform(1.01, 1e3, 8)])
    special = np.array([np.nan, np.inf, -np.inf, 3.0e38, -3.0e38])
    x = np.concatenate([inside, outside, special]).astype(np.float32)
    xin = graph_input("x", TensorType(x.shape, F32))
    q_node = make("quantize", [xin], {"dtype": dtype.value}, None, quant)
    with np.errstate(over="ignore"):  # x / s overflows float32 to inf, which saturates
        q = run(q_node, x).astype(np.int64)
        back = run(make("dequantize", [q_node], {}, None), x).astype(np.float64)
    x64 = x.astype(np.float64)
    fits = np.isfinite(x64) & (x64 / s + zp >= lo - 0.5) & (x64 / s + zp <= hi + 0.5)
    slack = 2.0 ** -21 * (np.abs(x64[fits]) + s)  # float32 division and product
    assert_close(back[fits], x64[fits], s / 2 + slack, f"round trip ({dtype})")
    with np.errstate(invalid="ignore"):
        assert (q[~fits & (x64 > 0)] == hi).all(), q[~fits & (x64 > 0)]
        assert (q[~fits & (x64 < 0)] == lo).all(), q[~fits & (x64 < 0)]
    assert (q[np.isnan(x64)] == zp).all()


# -- rescale ---------------------------------------------------------------------------------------

@st.composite
def rescale_cases(draw: st.DrawFn) -> tuple[Case, int | None, int | None]:
    """8/16/32-bit codes rescaled to 8/16/32 bits, with or without min and max clamps."""
    x, quant = draw(operand(draw(st.sampled_from([(5,), (3, 4), (2, 3, 4)])),
                            (I8, U8, I16, I32)))
    ref = dequant(x, quant)
    dtype = draw(st.sampled_from([I8, U8, I16, I32]))
    out = draw(act_quant(dtype)) if dtype == I32 else draw(fit(ref, dtype))
    lo, hi = arith.dtype_range(dtype)
    bounds = sorted(draw(st.lists(st.integers(lo, hi), min_size=2, max_size=2)))
    cmin = draw(st.sampled_from([None, bounds[0]]))
    cmax = draw(st.sampled_from([None, bounds[1]]))
    node = make("rescale", [int_input("x", x, quant)], {"dtype": dtype.value, "min": cmin,
                                                         "max": cmax}, None, out)
    return Case(node, (x,), ref), cmin, cmax


@PROPERTY
@given(rescale_cases())
def test_rescale(case: tuple[Case, int | None, int | None]) -> None:
    """rescale is the clamp of the unclamped rescale to [min, max], which is within 1 LSB of the
    real value in the result's parameters, for every pair of 8/16/32-bit dtypes."""
    case, cmin, cmax = case
    got = run(case.node, *case.args)
    free = make("rescale", case.node.inputs, {"dtype": case.node.attrs["dtype"]}, None,
                case.node.type.quant)
    unclamped = check(case._replace(node=free))
    assert (got == np.clip(unclamped, cmin, cmax)).all()
    assert cmin is None or got.min() >= cmin
    assert cmax is None or got.max() <= cmax


# -- matrix products -------------------------------------------------------------------------------

@st.composite
def weights(draw: st.DrawFn, shape: tuple[int, ...], axis: int, per_channel: bool = True
            ) -> tuple[np.ndarray, QuantParams]:
    """int8 symmetric weights in [-127, 127], one scale per channel along `axis` (or one)."""
    w = draw(codes(shape, I8, 0, lo=-127, hi=127))
    n = shape[axis] if per_channel else 1
    scales = tuple(draw(st.lists(SCALES, min_size=n, max_size=n)))
    return w, QuantParams(scales, (0,) * n, axis if per_channel else None)


@st.composite
def gemm_case(draw: st.DrawFn, op: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...],
              w_axis: int, attrs: dict, per_channel: bool = True, groups: int = 1) -> Case:
    """`op` (qlinear, qconv, qconv_transpose) on a drawn input, weights and optional int32 bias
    at s_x * s_w, against the float op on the dequantized operands. The output has
    `groups` * w_shape[w_axis] channels."""
    x, xq = draw(operand(x_shape))
    w, wq = draw(weights(w_shape, w_axis, per_channel))
    channels = groups * w_shape[w_axis]
    inputs = [int_input("x", x, xq), const(w, I8, None, wq)]
    w_real = dequant(w, wq)
    bias_real = None
    if draw(st.booleans()):
        b = draw(codes((channels,), I32, 0, lo=-(1 << 24), hi=1 << 24))
        s_acc = xq.scale[0] * np.broadcast_to(np.asarray(wq.scale, np.float64), (channels,))
        inputs.append(const(b, I32, None, QuantParams(tuple(map(float, s_acc)),
                                                      (0,) * channels, 0)))
        bias_real = b * s_acc
    ref = np.asarray(OPS[op[1:]].impl(attrs, dequant(x, xq), w_real, bias_real), np.float64)
    return Case(node_with_fitted_result(draw, op, inputs, attrs, ref), (x,), ref)


@st.composite
def linear_cases(draw: st.DrawFn) -> Case:
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    k, o = draw(st.integers(1, 24)), draw(st.integers(1, 12))
    return draw(gemm_case("qlinear", lead + (k,), (o, k), 0, {}, draw(st.booleans())))


@st.composite
def conv_geometry(draw: st.DrawFn, transpose: bool
                  ) -> tuple[dict, tuple[int, ...], tuple[int, ...]]:
    """Attributes (kernel, stride, dilation, possibly asymmetric padding) and spatial sizes of
    a 1-d or 2-d conv whose output is not empty."""
    nsp = draw(st.integers(1, 2))
    attrs: dict = {"stride": [], "dilation": [], "padding": [], "output_padding": []}
    kernel, sizes = [], []
    for _ in range(nsp):
        k, d, s = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 3))
        span = d * (k - 1) + 1
        if transpose:  # lo + hi <= d (k - 1) keeps the output non-empty
            lo = draw(st.integers(0, span - 1))
            pad = (lo, draw(st.integers(0, span - 1 - lo)))
            attrs["output_padding"].append(draw(st.integers(0, max(s, d) - 1)))
            sizes.append(draw(st.integers(1, 5)))
        else:
            pad = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
            sizes.append(draw(st.integers(max(1, span - sum(pad)), max(1, span - sum(pad)) + 5)))
        kernel.append(k)
        attrs["stride"].append(s)
        attrs["dilation"].append(d)
        attrs["padding"] += pad
    if not transpose:
        del attrs["output_padding"]
    return attrs, tuple(kernel), tuple(sizes)


@st.composite
def conv_cases(draw: st.DrawFn) -> Case:
    """Plain, grouped and depthwise (groups == C) convolutions, strided, dilated and padded."""
    attrs, kernel, sizes = draw(conv_geometry(transpose=False))
    groups = draw(st.integers(1, 3))
    per_group = 1 if draw(st.booleans()) else draw(st.integers(1, 3))  # 1: depthwise
    og = draw(st.integers(1, 3))
    attrs["groups"] = groups
    x_shape = (draw(st.integers(1, 2)), groups * per_group) + sizes
    return draw(gemm_case("qconv", x_shape, (groups * og, per_group) + kernel, 0, attrs))


@st.composite
def conv_transpose_cases(draw: st.DrawFn) -> Case:
    """Transposed convolutions: per-channel weights (axis 1, IOHW) with groups 1, per-tensor
    weights with groups > 1 (one scale per output channel cannot follow groups)."""
    attrs, kernel, sizes = draw(conv_geometry(transpose=True))
    groups = draw(st.integers(1, 2))
    c_in, og = groups * draw(st.integers(1, 3)), draw(st.integers(1, 3))
    attrs["groups"] = groups
    x_shape = (draw(st.integers(1, 2)), c_in) + sizes
    return draw(gemm_case("qconv_transpose", x_shape, (c_in, og) + kernel, 1, attrs,
                          per_channel=groups == 1, groups=groups))


@st.composite
def matmul_cases(draw: st.DrawFn) -> Case:
    """Batched products of two per-tensor activations, batch axes broadcasting."""
    batch = draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=2, max_side=3))
    m, k, n = (draw(st.integers(1, 8)) for _ in range(3))
    a, aq = draw(operand(batch.input_shapes[0] + (m, k)))
    b, bq = draw(operand(batch.input_shapes[1] + (k, n)))
    ref = np.matmul(dequant(a, aq), dequant(b, bq))
    node = node_with_fitted_result(draw, "qmatmul", [int_input("a", a, aq), int_input("b", b, bq)],
                                   {}, ref)
    # int16 x int16 sums can pass int32 from K = 2: those saturate (see the test below)
    acc = np.matmul(a - np.int64(aq.zero_point[0]), b - np.int64(bq.zero_point[0]))
    return Case(node, (a, b), ref, where=np.abs(acc) <= arith.INT32_MAX)


GEMM_CASES = {"qlinear": linear_cases, "qconv": conv_cases,
              "qconv_transpose": conv_transpose_cases, "qmatmul": matmul_cases}


@pytest.mark.parametrize("op", list(GEMM_CASES))
@PROPERTY
@given(data=st.data())
def test_matrix_products_within_one_lsb(op: str, data: st.DataObject) -> None:
    """qlinear, qconv (grouped, depthwise, strided, dilated, padded), qconv_transpose and qmatmul:
    the exact int32 sum (+ bias) requantized per output channel is within 1 LSB of the float
    op."""
    check(data.draw(GEMM_CASES[op]()))


K = 620  # 620 * 32767 * 127 = 2.6e9 > 2**31
CONV1D = {"stride": [1], "padding": [0, 0], "dilation": [1]}
SATURATING = {  # op: (input shape, second operand (weights at scale 2**-7) or None, attributes)
    "qlinear": ((1, K), np.full((1, K), 127, np.int8), {}),
    "qconv": ((1, K, 1), np.full((1, K, 1), 127, np.int8), CONV1D),
    "qconv_transpose": ((1, K, 1), np.full((K, 1, 1), 127, np.int8),
                        {**CONV1D, "output_padding": [0]}),
    "qmatmul": ((1, 3), np.full((3, 1), 32767, np.int16), {}),
    "qsum": ((1, 70000), None, {"axes": [1]}),
}


@pytest.mark.parametrize("sign", [1, -1])
@pytest.mark.parametrize("op", list(SATURATING))
def test_accumulator_saturates_instead_of_wrapping(op: str, sign: int) -> None:
    """int16 operands at +-32767 whose exact int32 sum is beyond int32: the result (multiplier
    2**-17, well inside int16) is requantize(clamp(sum)), not of the wrapped sum (whose sign
    flips)."""
    shape, other, attrs = SATURATING[op]
    x = np.full(shape, sign * 32767, np.int16)
    inputs = [int_input("x", x, qp(1.0))]
    if other is not None:
        inputs.append(const(other, DType.of(other), None, qp(2.0 ** -7)))
    s_out = 2.0 ** (17 if other is None else 10)
    node = make(op, inputs, {**attrs, "dtype": "i16"}, None, qp(s_out))
    acc = sign * 32767 * (int(other.astype(np.int64).sum()) if other is not None else x.size)
    assert abs(acc) > arith.INT32_MAX
    saturated = float(np.clip(acc, arith.INT32_MIN, arith.INT32_MAX)) * 2.0 ** -17
    got = int(run(node, x).reshape(-1)[0])
    assert abs(got - round(saturated)) <= 1, (got, saturated)


# -- elementwise arithmetic ------------------------------------------------------------------------

OPERAND_DTYPES = [(I8, I8), (I16, I16), (I8, I16), (I16, I8)]


@st.composite
def binary_operands(draw: st.DrawFn, dtypes: tuple[DType, DType]
                    ) -> tuple[list[Node], tuple[np.ndarray, ...], list[np.ndarray]]:
    """Two operands of the given dtypes with mutually broadcastable shapes (up to 4-d)."""
    shapes = draw(mutually_broadcastable_shapes(num_shapes=2, max_dims=4, max_side=4))
    nodes, arrays, reals = [], [], []
    for name, shape, dtype in zip("ab", shapes.input_shapes, dtypes, strict=True):
        x, q = draw(operand(shape, (dtype,)))
        nodes.append(int_input(name, x, q))
        arrays.append(x)
        reals.append(dequant(x, q))
    return nodes, tuple(arrays), reals


def add_tolerance(node: Node) -> float:
    """qadd/qsub's bound in result LSBs. Each operand, shifted left by L (20 for two 8-bit
    operands, else 15), is requantized to units u = 2 max(s_a, s_b) / 2**L within 1 unit; the sum
    of the two is then requantized by u / s_out within 1 LSB; the reference rounds within 1/2.
    So |out - want| <= 1.5 + 2 u / s_out, which is at most 1 LSB (an integer below 2) whenever
    max(s_a, s_b) / s_out < 2**(L - 3) (2**12 for 16-bit operands)."""
    left = 20 if max(i.dtype.bits for i in node.inputs) <= 8 else 15
    u = 2 * max(i.type.quant.scale[0] for i in node.inputs) / 2**left
    return math.floor(1.5 + 2 * u / node.type.quant.scale[0])


@pytest.mark.parametrize("op", ["qadd", "qsub", "qmul"])
@PROPERTY
@given(data=st.data())
def test_add_sub_mul(op: str, data: st.DataObject) -> None:
    """qadd, qsub (bound: `add_tolerance`, 1 LSB for every scale drawn here) and qmul (one
    requantization of the exact product: 1 LSB) against the float op, for int8 and int16
    operands in every combination, with broadcasting."""
    inputs, args, (a, b) = data.draw(binary_operands(data.draw(st.sampled_from(OPERAND_DTYPES))))
    ref = {"qadd": np.add, "qsub": np.subtract, "qmul": np.multiply}[op](a, b)
    floor = max(i.type.quant.scale[0] for i in inputs) / 2**10 if op != "qmul" else 1e-6
    node = node_with_fitted_result(data.draw, op, inputs, {}, ref, (I8, U8, I16), floor)
    tol = add_tolerance(node) if op != "qmul" else 1
    assert tol == 1  # every scale drawn is inside the 1 LSB regime
    check(Case(node, args, ref, tol))


@st.composite
def prelu_cases(draw: st.DrawFn) -> Case:
    """x (2-d to 4-d) with one int8 symmetric slope or one per channel (axis 1)."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=2, max_size=4)))
    x, xq = draw(operand(shape))
    channels = draw(st.sampled_from([1, shape[1]]))
    slope, sq = draw(operand((channels,), (I8,)))
    sq = qp(sq.scale[0])  # symmetric, as lowering makes it
    slope = np.clip(slope, -127, 127).astype(np.int8)
    ref = OPS["prelu"].impl({}, dequant(x, xq), dequant(slope, sq))
    node = node_with_fitted_result(draw, "qprelu", [int_input("x", x, xq),
                                                    const(slope, I8, None, sq)], {}, ref)
    return Case(node, (x,), ref)


@PROPERTY
@given(prelu_cases())
def test_qprelu_within_one_lsb(case: Case) -> None:
    """qprelu: each branch is one requantization of an exact product, so within 1 LSB."""
    check(case)


# -- tables ----------------------------------------------------------------------------------------

def lut_node(x: np.ndarray, table: np.ndarray) -> Node:
    return make("lut", [int_input("x", x, None), const(table, DType.of(table))])


@pytest.mark.parametrize("x_dtype", [I8, U8], ids=str)
@PROPERTY
@given(table_dtype=st.sampled_from([I8, I16]), seed=SEEDS)
def test_lut_256_indexes_every_code(x_dtype: DType, table_dtype: DType, seed: int) -> None:
    """A 256-entry table maps every 8-bit code c to table[c - min code], exactly."""
    rng = np.random.default_rng(seed)
    lo, hi = arith.dtype_range(x_dtype)
    x = rng.permutation(np.arange(lo, hi + 1)).astype(x_dtype.numpy).reshape(4, 64)
    table = rng.integers(*arith.dtype_range(table_dtype), size=256, endpoint=True)
    table = table.astype(table_dtype.numpy)
    assert (run(lut_node(x, table), x) == table[x.astype(np.int64) - lo]).all()


@PROPERTY
@given(seed=SEEDS, monotone=st.booleans())
def test_lut_513_interpolates_int16(seed: int, monotone: bool) -> None:
    """A 513-entry table on int16: exact at the grid points -32768 + 128 i; elsewhere within 1/2
    of the linear interpolation between neighbours; a monotone table gives a monotone result."""
    rng = np.random.default_rng(seed)
    table = rng.integers(-32768, 32767, size=513, endpoint=True)
    table = np.sort(table) if monotone else table
    table = table.astype(np.int16)
    grid = -32768 + 128 * np.arange(512)
    x = np.sort(np.concatenate([grid, rng.integers(-32768, 32767, 1000, endpoint=True),
                                [-32767, 32767]])).astype(np.int16)
    got = run(lut_node(x, table), x).astype(np.int64)
    u = x.astype(np.int64) + 32768
    on_grid = u % 128 == 0
    assert (got[on_grid] == table[u[on_grid] // 128]).all()
    t = table.astype(np.float64)
    linear = t[u >> 7] + (t[np.minimum((u >> 7) + 1, 512)] - t[u >> 7]) * (u & 127) / 128
    assert_close(got, linear, 0.5, "lut interpolation")
    if monotone:
        assert (np.diff(got) >= 0).all()


# -- reductions, pooling, resizing -----------------------------------------------------------------

@st.composite
def reduce_cases(draw: st.DrawFn, op: str) -> Case:
    """qmean or qsum over a drawn set of axes (negative ones too), keepdim or not."""
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    x, xq = draw(operand(shape))
    axes = draw(st.lists(st.integers(0, len(shape) - 1), min_size=1, unique=True))
    axes = [a - len(shape) if draw(st.booleans()) else a for a in axes]
    keepdim = draw(st.booleans())
    ref = {"qmean": np.mean, "qsum": np.sum}[op](dequant(x, xq), axis=tuple(axes),
                                                 keepdims=keepdim)
    node = node_with_fitted_result(draw, op, [int_input("x", x, xq)],
                                   {"axes": axes, "keepdim": keepdim}, np.asarray(ref))
    return Case(node, (x,), np.asarray(ref))


@pytest.mark.parametrize("op", ["qmean", "qsum"])
@PROPERTY
@given(data=st.data())
def test_qmean_qsum_within_one_lsb(op: str, data: st.DataObject) -> None:
    """qmean/qsum: the exact sum requantized by s_in (/ n) / s_out, within 1 LSB."""
    check(data.draw(reduce_cases(op)))


def round_half_away(num: int, den: int) -> int:
    magnitude = (2 * abs(num) + den) // (2 * den)
    return magnitude if num >= 0 else -magnitude


def avg_pool_reference(x: np.ndarray, zp: int, attrs: dict, shape: tuple[int, ...]
                       ) -> np.ndarray:
    """zp + round-half-away(sum(x - zp) / count) per window, in Python integers: the window's
    taps start + k * dilation; the sum reads taps inside the input; count is the taps inside the
    explicitly padded input (count_include_pad) or inside the input. `shape`: the result's."""
    k, st_, dil, pad = attrs["kernel"], attrs["stride"], attrs["dilation"], attrs["padding"]
    nsp = len(k)
    out = np.zeros(shape, np.int64)
    for index in np.ndindex(*out.shape):
        (n, c), pos = index[:2], index[2:]
        taps = [[p * st_[i] - pad[2 * i] + j * dil[i] for j in range(k[i])]
                for i, p in enumerate(pos)]
        total = count = 0
        for cell in np.ndindex(*k):
            t = [taps[i][cell[i]] for i in range(nsp)]
            inside = all(0 <= t[i] < x.shape[2 + i] for i in range(nsp))
            padded = all(-pad[2 * i] <= t[i] < x.shape[2 + i] + pad[2 * i + 1]
                         for i in range(nsp))
            if inside:
                total += int(x[(n, c, *t)]) - zp
            count += int(inside or (padded and attrs["count_include_pad"]))
        out[index] = zp + round_half_away(total, count)
    return out


@st.composite
def pool_cases(draw: st.DrawFn) -> tuple[Node, np.ndarray, dict]:
    """1-d or 2-d pools: kernel, stride, dilation, padding up to half the window (PyTorch's
    rule), ceil_mode and count_include_pad either way; the result keeps the operand's params."""
    nsp = draw(st.integers(1, 2))
    attrs: dict = {"kernel": [], "stride": [], "dilation": [], "padding": [],
                   "ceil_mode": draw(st.booleans()), "count_include_pad": draw(st.booleans())}
    sizes = []
    for _ in range(nsp):
        k, d = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        span = d * (k - 1) + 1
        attrs["kernel"].append(k)
        attrs["dilation"].append(d)
        attrs["stride"].append(draw(st.integers(1, 3)))
        attrs["padding"] += [draw(st.integers(0, span // 2)), draw(st.integers(0, span // 2))]
        sizes.append(draw(st.integers(span, span + 5)))
    x, xq = draw(operand((draw(st.integers(1, 2)), draw(st.integers(1, 3)), *sizes),
                         (I8, U8, I16)))
    return make("qavg_pool", [int_input("x", x, xq)], attrs, None, xq), x, attrs


@PROPERTY
@given(pool_cases())
def test_qavg_pool_is_the_rounded_window_mean(case: tuple[Node, np.ndarray, dict]) -> None:
    """qavg_pool == zp + round-half-away(sum(x - zp) / count), computed window by window."""
    node, x, attrs = case
    got = run(node, x)
    assert (got == avg_pool_reference(x, node.type.quant.zero_point[0], attrs, got.shape)).all()


@PROPERTY
@given(data=st.data())
def test_qadaptive_avg_pool_is_the_rounded_window_mean(data: st.DataObject) -> None:
    """qadaptive_avg_pool == zp + round-half-away(sum(x - zp) / count) over PyTorch's windows
    [floor(i*in/out), ceil((i+1)*in/out)), computed cell by cell."""
    sizes = [data.draw(st.integers(1, 7)) for _ in range(data.draw(st.integers(1, 2)))]
    x, xq = data.draw(operand((1, 2, *sizes), (I8, U8, I16)))
    out = [data.draw(st.integers(1, s + 2)) for s in sizes]
    got = run(make("qadaptive_avg_pool", [int_input("x", x, xq)], {"size": out}, None, xq), x)
    zp = xq.zero_point[0]
    for index in np.ndindex(*got.shape):
        window = [slice(o * s // n, -(-(o + 1) * s // n))
                  for o, s, n in zip(index[2:], sizes, out, strict=True)]
        cells = x[(index[0], index[1], *window)].astype(np.int64) - zp
        assert got[index] == zp + round_half_away(int(cells.sum()), cells.size)


@st.composite
def resize_cases(draw: st.DrawFn, mode: str, dtype: DType) -> Case:
    """A 1-d or 2-d resize to drawn sizes, with or without explicit scale factors, align_corners
    either way; the result keeps the operand's parameters."""
    nsp = draw(st.integers(1, 2))
    sizes_in = [draw(st.integers(1, 6)) for _ in range(nsp)]
    x, xq = draw(operand((draw(st.integers(1, 2)), draw(st.integers(1, 2)), *sizes_in),
                         (dtype,)))
    attrs = {"mode": mode, "size": [draw(st.integers(1, 12)) for _ in range(nsp)],
             "scales": [draw(st.sampled_from([0.0, 0.5, 1.5, 2.0, 3.0])) for _ in range(nsp)],
             "align_corners": draw(st.booleans())}
    node = make("qresize", [int_input("x", x, xq)], attrs, None, xq)
    return Case(node, (x,), OPS["resize"].impl(node.attrs, dequant(x, xq)))


@pytest.mark.parametrize("dtype", [I8, U8, I16], ids=str)
@PROPERTY
@given(data=st.data())
def test_qresize_nearest_moves_data_exactly(dtype: DType, data: st.DataObject) -> None:
    """Nearest qresize is pure data movement: the float op applied to the codes."""
    case = data.draw(resize_cases("nearest", dtype))
    got = run(case.node, *case.args)
    assert (got == OPS["resize"].impl(case.node.attrs, case.args[0].astype(np.float64))).all()


@pytest.mark.parametrize("dtype", [I8, U8, I16], ids=str)
@PROPERTY
@given(data=st.data())
def test_qresize_bilinear_within_one_lsb(dtype: DType, data: st.DataObject) -> None:
    """Bilinear qresize is within 1 LSB of float bilinear resampling of the dequantized input
    (the weights' rounding must stay below half a code over the dtype's whole range)."""
    check(data.draw(resize_cases("bilinear", dtype)))


# -- softmax and log-softmax -----------------------------------------------------------------------

SOFTMAX_OUT = {I8: qp(1 / 256, -128), I16: qp(1 / 32768)}
# int16 softmax inputs: ranges from +-3 to +-16000 (an additive -10000 attention mask)
SOFTMAX_SCALES = {I8: SCALES, I16: log_uniform(1e-4, 0.5)}


@st.composite
def softmax_input(draw: st.DrawFn, dtype: DType, masks: bool = False
                  ) -> tuple[np.ndarray, QuantParams, int, Node]:
    """Rows (up to 16 long) along a drawn axis of a 1-d to 3-d input, its exp table, and, with
    `masks`, int16 entries set to -32768 (whole rows sometimes)."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=2)))
    axis = draw(st.integers(0, len(shape)))
    shape = shape[:axis] + (draw(st.integers(1, 16)),) + shape[axis:]
    quant = draw(act_quant(dtype, SOFTMAX_SCALES[dtype]))
    x = draw(codes(shape, dtype, quant.zero_point[0]))
    if masks:
        rng = np.random.default_rng(draw(SEEDS))
        x = np.where(rng.random(shape) < draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])), -32768, x)
        x = x.astype(np.int16)
    table = const(exp_table(Spec(dtype, quant)), I32)
    return x, quant, axis - len(shape) if draw(st.booleans()) else axis, table


def softmax_node(x: np.ndarray, quant: QuantParams, axis: int, table: Node) -> Node:
    out = I8 if x.dtype.itemsize == 1 else I16
    return make("qsoftmax", [int_input("x", x, quant), table], {"axis": axis,
                                                                "dtype": out.value}, None,
                SOFTMAX_OUT[out])


def softmax_tolerance(dtype: DType, n: int) -> float:
    """|p_int - p| for rows of n, in probability. The result rounds e_i / sum(e) once (1/2 LSB)
    or saturates p ~ 1 (1 LSB); the Q16 table entries are within 1/2 of 2**16 exp(-d s) and
    sum(e) >= 2**16, so e_i / sum(e) is within (1/2 + n/2) / 2**16 of p. An int16 operand's
    513-entry table is interpolated: 3 LSB more, "a few" in all. int8 at 1/256 with n <= 16:
    exactly 1/256; int16 at 1/32768: 4.25 to 7.75 LSB."""
    lsb = SOFTMAX_OUT[dtype].scale[0]
    return max(lsb, lsb / 2 + (0.5 + n / 2) / Q16) + (3 * lsb if dtype == I16 else 0)


@pytest.mark.parametrize("dtype", [I8, I16], ids=str)
@PROPERTY
@given(data=st.data())
def test_qsoftmax_matches_float(dtype: DType, data: st.DataObject) -> None:
    """qsoftmax (int8 -> int8 at 1/256, zp -128; int16 -> int16 at 1/32768) with the lowering's
    exp table is within `softmax_tolerance` of float softmax, for every input scale drawn
    (int16 ranges from +-3 to +-16000, as an additive -10000 mask gives)."""
    x, quant, axis, table = data.draw(softmax_input(dtype))
    node = softmax_node(x, quant, axis, table)
    got = dequant(run(node, x), node.type.quant)
    ref = OPS["softmax"].impl(node.attrs, dequant(x, quant))
    assert_close(got, ref, softmax_tolerance(dtype, x.shape[axis]), "qsoftmax")


@pytest.mark.parametrize("dtype", [I8, I16], ids=str)
@PROPERTY
@given(data=st.data())
def test_qsoftmax_rows_sum_to_one_and_masks(dtype: DType, data: st.DataObject) -> None:
    """Every row sums to 1 within n/2 + 1 LSB (each entry rounds e_i / sum(e) once; p ~ 1 may
    saturate), whatever the table's accuracy. int16 entries at -32768 are masked: probability
    exactly 0; a fully masked row gives all zeros (no crash, no NaN)."""
    x, quant, axis, table = data.draw(softmax_input(dtype, masks=dtype == I16))
    node = softmax_node(x, quant, axis, table)
    got = dequant(run(node, x), node.type.quant)
    masked = x == -32768 if dtype == I16 else np.zeros(x.shape, bool)
    assert (got[masked] == 0).all()
    live = ~masked.all(axis=axis)
    lsb = node.type.quant.scale[0]
    sums = got.sum(axis=axis)
    assert_close(sums[live], np.ones(np.count_nonzero(live)), (x.shape[axis] / 2 + 1) * lsb,
                 "row sum")
    assert (sums[~live] == 0).all()


@pytest.mark.parametrize("dtype", [I8, I16], ids=str)
@PROPERTY
@given(data=st.data())
def test_qlog_softmax_matches_float(dtype: DType, data: st.DataObject) -> None:
    """qlog_softmax (int8 or int16 operands, every scale drawn) is within 2 result LSB + 0.01
    of float log_softmax: x - max and log(sum e) are requantized separately (1 LSB each);
    log(sum e) from the top 9 bits of the sum is short by at most ln(1 + 1/256) = 0.0039, and the
    Q16 tables add < 2**-9 for rows up to 16."""
    x, quant, axis, table = data.draw(softmax_input(dtype))
    ref = OPS["log_softmax"].impl({"axis": axis}, dequant(x, quant))
    inputs = [int_input("x", x, quant), table, const(LOG_TABLE, I32)]
    node = node_with_fitted_result(data.draw, "qlog_softmax", inputs, {"axis": axis}, ref)
    got = dequant(run(node, x), node.type.quant)
    s_out, zp = node.type.quant.scale[0], node.type.quant.zero_point[0]
    lo, hi = arith.dtype_range(node.dtype)
    assert_close(got, np.clip(ref, s_out * (lo - zp), s_out * (hi - zp)), 2 * s_out + 0.01,
                 "qlog_softmax")


# -- normalisation ---------------------------------------------------------------------------------

def norm_params(gamma: np.ndarray, beta: np.ndarray, s_out: float) -> list[Node]:
    """The int32 multiplier, shift and bias of gamma and beta, as integer lowering's `_norm`
    builds them: multiplier and shift of |gamma| / (2**16 s_out), gamma's sign on the
    multiplier, bias rint(beta / s_out)."""
    mult, shift = arith.multipliers(np.abs(gamma) / ((1 << quantized.NORM_BITS) * s_out))
    mult = np.where(gamma < 0, -mult, mult)
    bias = np.clip(np.rint(beta / s_out), arith.INT32_MIN, arith.INT32_MAX)
    return [const(v.astype(np.int32), I32) for v in (mult, shift, bias)]


@st.composite
def norm_cases(draw: st.DrawFn, op: str) -> tuple[Case, np.ndarray]:
    """qlayer_norm over the last 1-2 axes, or qgroup_norm of (N, C, spatial...) in groups, with
    drawn gamma (either sign) and beta; returns the case and gamma broadcast to the input."""
    if op == "qlayer_norm":
        shape = tuple(draw(st.lists(st.integers(1, 8), min_size=1, max_size=3)))
        ndim = draw(st.integers(1, len(shape)))
        affine, attrs = shape[-ndim:], {"ndim": ndim}
        gamma_shape = affine
    else:
        groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        spatial = tuple(draw(st.lists(st.integers(1, 4), max_size=2)))
        shape = (draw(st.integers(1, 2)), groups * per_group) + spatial
        affine, attrs = (shape[1],), {"groups": groups}
        gamma_shape = (1, shape[1]) + (1,) * len(spatial)
    attrs["eps"] = draw(st.sampled_from([1e-5, 1e-3]))
    x, xq = draw(operand(shape))
    rng = np.random.default_rng(draw(SEEDS))
    gamma = rng.choice([-1, 1], affine) * np.exp(rng.uniform(np.log(0.1), np.log(3), affine))
    beta = rng.normal(0, draw(st.sampled_from([0.0, 0.5, 2.0])), affine)
    ref = OPS[op[1:]].impl(attrs, dequant(x, xq), gamma, beta)
    dtype = draw(st.sampled_from([I8, I16]))
    quant = draw(fit(ref, dtype))
    node = make(op, [int_input("x", x, xq), *norm_params(gamma, beta, quant.scale[0])],
                {**attrs, "dtype": dtype.value}, None, quant)
    return Case(node, (x,), ref), np.broadcast_to(gamma.reshape(gamma_shape), shape)


def norm_tolerance(case: Case, gamma: np.ndarray) -> np.ndarray:
    """The bound in result LSBs: 2 (the affine requantization 1, beta's rounding 1/2, the
    reference's rounding 1/2) plus a relative term |gamma| / s_out * (1 + |n|) / (128 sigma) for
    the normalised value n, sigma = sqrt(var + eps) in input steps: a standard deviation kept to 8
    fractional bits (Q8) is within 2**-8 / sigma of itself (the 1 in 1 + |n| covers n's Q16
    rounding). No term is a fixed fraction of an input step, which would be a large error in the
    result's units whenever the input spans few codes: the mean and variance must keep fractional
    bits (exact integer statistics, n x - sum(x) and n sum(x^2) - sum(x)^2, meet this bound)."""
    x, xq = case.args[0], case.node.inputs[0].type.quant
    real = dequant(x, xq)
    normalised = OPS[case.node.op[1:]].impl(case.node.attrs, real)  # gamma 1, beta 0
    if case.node.op == "qlayer_norm":
        rows = real.reshape(real.shape[:x.ndim - case.node.attrs["ndim"]] + (-1,))
    else:
        rows = real.reshape(x.shape[0], case.node.attrs["groups"], -1)
    var = rows.var(axis=-1, keepdims=True) + case.node.attrs["eps"]
    sigma = np.broadcast_to(np.sqrt(var) / xq.scale[0], rows.shape).reshape(x.shape)
    return 2 + np.abs(gamma) / case.node.type.quant.scale[0] * (1 + np.abs(normalised)) / (
        128 * sigma)


@pytest.mark.parametrize("op", ["qlayer_norm", "qgroup_norm"])
@PROPERTY
@given(data=st.data())
def test_norms_match_float(op: str, data: st.DataObject) -> None:
    """qlayer_norm / qgroup_norm, with gamma and beta as integer lowering builds them, are within
    `norm_tolerance` of float layer/group norm of the dequantized input."""
    case, gamma = data.draw(norm_cases(op))
    check(case._replace(tol=norm_tolerance(case, gamma)))


# -- minimal reproductions ---------------------------------------------------------------------

def _edge(op: str, x: np.ndarray, x_quant: QuantParams | None, attrs: dict,
          out_quant: QuantParams, *constants: Node, ref: list[float] | None = None,
          tol: float = 1) -> Case:
    """A case on operand x; the reference is the float op of the dequantized x unless given."""
    node = make(op, [int_input("x", x, x_quant), *constants], attrs, None, out_quant)
    if ref is None:
        ref = OPS[op[1:]].impl(node.attrs, dequant(x, x_quant))
    return Case(node, (x,), np.asarray(ref, np.float64), tol)


def _layer_norm_of_two_codes() -> Case:
    """[1, 0] (one step apart) normalises to [1, -1], whatever the step."""
    x, gamma = np.array([1, 0], np.int8), np.ones(2)
    case = _edge("qlayer_norm", x, qp(0.1), {"dtype": "i8"}, qp(1 / 127),
                 *norm_params(gamma, np.zeros(2), 1 / 127))
    return case._replace(tol=norm_tolerance(case, gamma))


EDGE_CASES = {
    # float32(2**31 - 1) is 2**31: the clamp must not let it wrap to INT32_MIN
    "quantize i32 of 3e9 and +inf": lambda: _edge(
        "quantize", np.array([3e9, np.inf], np.float32), None, {"dtype": "i32"}, qp(1.0),
        ref=[3e9, np.inf]),
    # an identity rescale of int32 values beyond 2**30 (multiplier 2**30, shift 1)
    "rescale i32 identity": lambda: _edge(
        "rescale", np.array([1_500_000_000, -1_500_000_000], np.int32), qp(1.0),
        {"dtype": "i32"}, qp(1.0), ref=[1.5e9, -1.5e9]),
    # int16 bilinear between -32767 and 32767
    "qresize i16 bilinear": lambda: _edge(
        "qresize", np.array([[[[-32767, 32767]]]], np.int16), qp(1.0),
        {"mode": "bilinear", "size": [1, 7], "scales": [0.0, 0.0]}, qp(1.0)),
    # int16 softmax of [0, -1] at scale 0.01 (d = 100 falls between table points 0 and 128)
    "qsoftmax i16 at scale 0.01": lambda: _edge(
        "qsoftmax", np.array([0, -100], np.int16), qp(0.01), {"axis": 0, "dtype": "i16"},
        SOFTMAX_OUT[I16], const(exp_table(Spec(I16, qp(0.01))), I32),
        tol=softmax_tolerance(I16, 2) * 32768),
    "qlayer_norm of two codes": _layer_norm_of_two_codes,
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_edge_cases(name: str) -> None:
    """Hand-picked operands, each the minimal form of a failure the properties above can find,
    with the same reference and bound."""
    check(EDGE_CASES[name]())


# -- coverage --------------------------------------------------------------------------------------

TESTED = {"quantize", "dequantize", "rescale", "qlinear", "qconv", "qconv_transpose", "qmatmul",
          "qadd", "qsub", "qmul", "qprelu", "lut", "qmean", "qsum", "qavg_pool", "qresize",
          "qadaptive_avg_pool",
          "qsoftmax", "qlog_softmax", "qlayer_norm", "qgroup_norm"}


def test_every_integer_op_has_a_property_test() -> None:
    """Each op defined in npuc.ops.quantized is exercised above (a new one needs a test)."""
    defined = {name for name, d in OPS.items() if d.impl.__module__ == quantized.__name__}
    assert defined == TESTED
