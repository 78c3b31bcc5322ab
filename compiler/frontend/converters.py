"""ATen op -> IR converters, one small function per ATen op (or family), in one registry.

A converter receives the converted operands (IR nodes, Python scalars, lists) in ATen's argument
order and returns an IR node, or a list for multi-result ATen ops. `ctx` knows the fx node (its
recorded result shape and dtype) and the module path for provenance. Ops whose operands are all
constant never get here: the importer evaluates them with torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import UnsupportedError
from ..ir import DType, Node, const
from ..ops import make

Converter = Callable[..., Any]
CONVERTERS: dict[str, Converter] = {}

_INT_MAX = 2**62


def register_converter(*names: str) -> Callable[[Converter], Converter]:
    """Register a converter for ATen ops by their printed names, e.g. "aten.relu.default"."""

    def deco(fn: Converter) -> Converter:
        for name in names:
            CONVERTERS[name] = fn
        return fn

    return deco


@dataclass(frozen=True)
class Context:
    fx_node: torch.fx.Node
    loc: str
    const_value: Callable[[Node], np.ndarray | None]

    @property
    def val(self) -> Any:
        return self.fx_node.meta.get("val")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.val.shape)

    @property
    def dtype(self) -> DType:
        from .fx_import import npuc_dtype

        return npuc_dtype(self.val.dtype, self.loc)

    def make(self, op: str, inputs: list[Node] | tuple[Node, ...], **attrs: Any) -> Node:
        return make(op, inputs, attrs, self.loc)

    def operand(self, value: Any, dtype: DType) -> Node:
        """An IR value of `dtype`: Python scalars become 0-d constants, others are cast."""
        if isinstance(value, Node):
            return value if value.dtype == dtype else self.make("cast", [value], dtype=dtype.value)
        if isinstance(value, bool | int | float):
            return const(np.array(value, dtype=dtype.numpy), dtype, self.loc)
        raise UnsupportedError(f"operand {value!r} is not a tensor or scalar", loc=self.loc)

    def unsupported(self, what: str, hint: str) -> UnsupportedError:
        return UnsupportedError(what, op=str(self.fx_node.target), loc=self.loc, hint=hint)


def _compute_dtype(ctx: Context, *operands: Any) -> DType:
    """The dtype torch computes a binary op in (type promotion over tensors and scalars)."""
    from .fx_import import npuc_dtype

    # 0-d tensors stand for tensor operands: result_type then promotes as torch does
    probes = [torch.from_numpy(np.zeros((), v.dtype.numpy)) if isinstance(v, Node) else v
              for v in operands]
    return npuc_dtype(torch.result_type(*probes), ctx.loc)


# --- elementwise -----------------------------------------------------------------------------

def _unary(op: str, **attrs: Any) -> Converter:
    return lambda ctx, x, *rest, **kw: ctx.make(op, [x], **attrs)


for _name, _op in [("relu", "relu"), ("sigmoid", "sigmoid"), ("tanh", "tanh"), ("silu", "silu"),
                   ("hardswish", "hardswish"), ("hardsigmoid", "hardsigmoid"), ("exp", "exp"),
                   ("log", "log"), ("sqrt", "sqrt"), ("rsqrt", "rsqrt"), ("neg", "neg"),
                   ("abs", "abs"), ("erf", "erf"), ("reciprocal", "reciprocal"),
                   ("log1p", "log1p"), ("expm1", "expm1"), ("sin", "sin"), ("cos", "cos"),
                   ("logical_not", "logical_not")]:
    register_converter(f"aten.{_name}.default")(_unary(_op))


@register_converter("aten.gelu.default")
def _gelu(ctx: Context, x: Node, approximate: str = "none") -> Node:
    return ctx.make("gelu", [x], approximate=approximate)


@register_converter("aten.elu.default")
def _elu(ctx: Context, x: Node, alpha: float = 1.0, scale: float = 1.0,
         input_scale: float = 1.0) -> Node:
    return ctx.make("elu", [x], alpha=float(alpha), scale=float(scale),
                    input_scale=float(input_scale))


@register_converter("aten.leaky_relu.default")
def _leaky_relu(ctx: Context, x: Node, negative_slope: float = 0.01) -> Node:
    return ctx.make("leaky_relu", [x], alpha=float(negative_slope))


@register_converter("aten.hardtanh.default")
def _hardtanh(ctx: Context, x: Node, min_val: float = -1.0, max_val: float = 1.0) -> Node:
    return ctx.make("clamp", [x], min=float(min_val), max=float(max_val))


@register_converter("aten.clamp.default", "aten.clamp_min.default", "aten.clamp_max.default")
def _clamp(ctx: Context, x: Node, lo: float | None = None, hi: float | None = None) -> Node:
    name = str(ctx.fx_node.target)
    if "clamp_max" in name:
        lo, hi = None, lo
    if isinstance(lo, Node) or isinstance(hi, Node):
        raise ctx.unsupported("clamp with tensor bounds", "use scalar bounds")
    lo = -np.inf if lo is None else float(lo)
    hi = np.inf if hi is None else float(hi)
    if lo == 0.0 and hi == np.inf:
        return ctx.make("relu", [x])
    return ctx.make("clamp", [x], min=lo, max=hi)


@register_converter("aten.prelu.default", "aten._prelu_kernel.default")
def _prelu(ctx: Context, x: Node, weight: Node) -> Node:
    return ctx.make("prelu", [x, ctx.operand(weight, x.dtype)])


@register_converter("aten._to_copy.default", "aten.to.dtype")
def _to_copy(ctx: Context, x: Node, *args: Any, **kwargs: Any) -> Node:
    return ctx.operand(x, ctx.dtype)


@register_converter("aten.clone.default", "aten.alias.default", "aten.detach.default",
                    "aten.lift_fresh_copy.default", "aten.contiguous.default",
                    "aten.dropout.default", "aten.native_dropout.default")
def _identity(ctx: Context, x: Node, *args: Any, **kwargs: Any) -> Any:
    if "native_dropout" in str(ctx.fx_node.target):
        raise ctx.unsupported("dropout in training mode", "call model.eval() before capture")
    return x


_BINARY = {"add": "add", "sub": "sub", "mul": "mul", "div": "div", "pow": "pow",
           "maximum": "maximum", "minimum": "minimum", "eq": "eq", "ne": "ne", "lt": "lt",
           "le": "le", "gt": "gt", "ge": "ge", "logical_and": "logical_and",
           "logical_or": "logical_or", "bitwise_and": "logical_and", "bitwise_or": "logical_or"}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge"}


def _binary(op: str, reverse: bool = False) -> Converter:
    def convert(ctx: Context, a: Any, b: Any, *, alpha: Any = 1, rounding_mode: Any = None) -> Node:
        if reverse:
            a, b = b, a
        if rounding_mode is not None:
            raise ctx.unsupported(f"division with rounding_mode={rounding_mode!r}",
                                  "use true division")
        if op.startswith("logical") and ctx.dtype != DType.BOOL:
            raise ctx.unsupported("bitwise ops on integers", "use bool tensors")
        dtype = _compute_dtype(ctx, a, b) if op in _COMPARE or op.startswith("logical") \
            else ctx.dtype
        if alpha != 1:
            b = ctx.make("mul", [ctx.operand(b, dtype), ctx.operand(alpha, dtype)])
        return ctx.make(op, [ctx.operand(a, dtype), ctx.operand(b, dtype)])

    return convert


for _name, _op in _BINARY.items():
    for _overload in ("Tensor", "Scalar", "default", "Tensor_Scalar", "Scalar_Tensor",
                      "Tensor_Tensor"):
        register_converter(f"aten.{_name}.{_overload}")(_binary(_op))
register_converter("aten.rsub.Scalar", "aten.rsub.Tensor")(_binary("sub", reverse=True))
register_converter("aten.div.Tensor_mode")(_binary("div"))


@register_converter("aten.where.self", "aten.where.ScalarSelf", "aten.where.ScalarOther",
                    "aten.where.Scalar")
def _where(ctx: Context, cond: Node, a: Any, b: Any) -> Node:
    return ctx.make("where", [cond, ctx.operand(a, ctx.dtype), ctx.operand(b, ctx.dtype)])


# --- nn --------------------------------------------------------------------------------------

def _pairs(padding: list[int]) -> tuple[int, ...]:
    return tuple(p for v in padding for p in (v, v))


@register_converter("aten.convolution.default")
def _convolution(ctx: Context, x: Node, w: Node, b: Node | None, stride: list[int],
                 padding: list[int], dilation: list[int], transposed: bool,
                 output_padding: list[int], groups: int) -> Node:
    nsp = len(w.shape) - 2
    expand = (lambda v: list(v) * nsp if len(v) == 1 else list(v))  # noqa: E731
    inputs = [x, w] if b is None else [x, w, b]
    attrs = dict(stride=expand(stride), padding=_pairs(expand(padding)),
                 dilation=expand(dilation), groups=groups)
    if transposed:
        return ctx.make("conv_transpose", inputs, output_padding=expand(output_padding), **attrs)
    return ctx.make("conv", inputs, **attrs)


@register_converter("aten.linear.default")
def _linear(ctx: Context, x: Node, w: Node, b: Node | None = None) -> Node:
    return ctx.make("linear", [x, w] if b is None else [x, w, b])


@register_converter("aten.mm.default", "aten.bmm.default", "aten.matmul.default")
def _matmul(ctx: Context, a: Node, b: Node) -> Node:
    return ctx.make("matmul", [a, b])


@register_converter("aten.addmm.default")
def _addmm(ctx: Context, bias: Node, a: Node, m: Node, *, beta: float = 1,
           alpha: float = 1) -> Node:
    """bias + a @ m; with a constant m this is a linear layer with weight m.T (as nn.Linear)."""
    if beta != 1 or alpha != 1:
        raise ctx.unsupported("addmm with alpha/beta", "use plain matmul and add")
    weight = ctx.const_value(m)
    if weight is not None and bias.shape == (m.shape[1],):
        w = const(np.ascontiguousarray(weight.T), m.dtype, m.loc)
        return ctx.make("linear", [a, w, bias])
    return ctx.make("add", [ctx.make("matmul", [a, m]), bias])


def _affine(ctx: Context, x: Node, w: Node | None, b: Node | None,
            shape: tuple[int, ...]) -> list[Node]:
    w = w if w is not None else const(np.ones(shape, x.dtype.numpy), x.dtype, ctx.loc)
    b = b if b is not None else const(np.zeros(shape, x.dtype.numpy), x.dtype, ctx.loc)
    return [w, b]


@register_converter("aten._native_batch_norm_legit_no_training.default")
def _batch_norm(ctx: Context, x: Node, w: Node | None, b: Node | None, mean: Node, var: Node,
                momentum: float, eps: float) -> list[Any]:
    w, b = _affine(ctx, x, w, b, (x.shape[1],))
    return [ctx.make("batch_norm", [x, w, b, mean, var], eps=float(eps)), None, None]


@register_converter("aten.native_layer_norm.default")
def _layer_norm(ctx: Context, x: Node, shape: list[int], w: Node | None, b: Node | None,
                eps: float) -> list[Any]:
    inputs = [x] + _affine(ctx, x, w, b, tuple(shape))
    return [ctx.make("layer_norm", inputs, ndim=len(shape), eps=float(eps)), None, None]


@register_converter("aten.native_group_norm.default")
def _group_norm(ctx: Context, x: Node, w: Node | None, b: Node | None, n: int, c: int,
                hw: int, groups: int, eps: float) -> list[Any]:
    inputs = [x] + _affine(ctx, x, w, b, (x.shape[1],))
    return [ctx.make("group_norm", inputs, groups=groups, eps=float(eps)), None, None]


@register_converter("aten._softmax.default", "aten.softmax.int")
def _softmax(ctx: Context, x: Node, dim: int, *rest: Any) -> Node:
    return ctx.make("softmax", [x], axis=dim % len(x.shape))


@register_converter("aten._log_softmax.default", "aten.log_softmax.int")
def _log_softmax(ctx: Context, x: Node, dim: int, *rest: Any) -> Node:
    return ctx.make("log_softmax", [x], axis=dim % len(x.shape))


@register_converter("aten.glu.default")
def _glu(ctx: Context, x: Node, dim: int = -1) -> Node:
    return ctx.make("glu", [x], axis=dim % len(x.shape))


def _pool_args(kernel: list[int], stride: list[int], padding: list[int],
               dilation: list[int] | None = None) -> dict[str, Any]:
    nsp = len(kernel)
    full = (lambda v, d: (list(v) * nsp if len(v) == 1 else list(v)) if v else d)  # noqa: E731
    stride = full(stride, list(kernel))
    return dict(kernel=list(kernel), stride=stride, padding=_pairs(full(padding, [0] * nsp)),
                dilation=full(dilation, [1] * nsp))


@register_converter("aten.max_pool2d_with_indices.default", "aten.max_pool2d.default",
                    "aten.max_pool1d.default")
def _max_pool(ctx: Context, x: Node, kernel: list[int], stride: list[int] = (),
              padding: list[int] = (0,), dilation: list[int] = (1,),
              ceil_mode: bool = False) -> Any:
    pooled = ctx.make("max_pool", [x], ceil_mode=ceil_mode,
                      **_pool_args(kernel, stride, padding, dilation))
    return [pooled, None] if "with_indices" in str(ctx.fx_node.target) else pooled


@register_converter("aten.avg_pool2d.default", "aten.avg_pool1d.default")
def _avg_pool(ctx: Context, x: Node, kernel: list[int], stride: list[int] = (),
              padding: list[int] = (0,), ceil_mode: bool = False, count_include_pad: bool = True,
              divisor_override: int | None = None) -> Node:
    if divisor_override is not None:
        raise ctx.unsupported("avg_pool with divisor_override", "drop divisor_override")
    return ctx.make("avg_pool", [x], ceil_mode=ceil_mode, count_include_pad=count_include_pad,
                    **_pool_args(kernel, stride, padding))


@register_converter("aten.adaptive_avg_pool2d.default", "aten._adaptive_avg_pool2d.default",
                    "aten.adaptive_avg_pool1d.default")
def _adaptive_avg_pool(ctx: Context, x: Node, size: list[int]) -> Node:
    return ctx.make("adaptive_avg_pool", [x], size=list(ctx.shape[2:]))


@register_converter("aten.upsample_nearest2d.vec", "aten.upsample_nearest1d.vec",
                    "aten.upsample_bilinear2d.vec")
def _upsample(ctx: Context, x: Node, size: Any, *args: Any) -> Node:
    bilinear = "bilinear" in str(ctx.fx_node.target)
    align_corners = bool(args[0]) if bilinear else False
    scales = args[-1] if args else None
    nsp = len(x.shape) - 2
    return ctx.make("resize", [x], size=list(ctx.shape[2:]),
                    mode="bilinear" if bilinear else "nearest", align_corners=align_corners,
                    scales=[float(s) for s in scales] if scales else [0.0] * nsp)


@register_converter("aten.pixel_shuffle.default")
def _pixel_shuffle(ctx: Context, x: Node, factor: int) -> Node:
    return ctx.make("pixel_shuffle", [x], factor=factor)


@register_converter("aten.flip.default")
def _flip(ctx: Context, x: Node, dims: list[int]) -> Node:
    return ctx.make("flip", [x], axes=[d % len(x.shape) for d in dims])


@register_converter("aten.index_select.default")
def _index_select(ctx: Context, x: Node, dim: int, ids: Node) -> Node:
    return ctx.make("gather", [x, ids], axis=dim % len(x.shape))


@register_converter("aten.embedding.default")
def _embedding(ctx: Context, table: Node, ids: Node, *args: Any) -> Node:
    return ctx.make("gather", [table, ids], axis=0)


# --- reductions ------------------------------------------------------------------------------

def _reduce(op: str) -> Converter:
    def convert(ctx: Context, x: Node, dims: int | list[int] | None = None,
                keepdim: bool = False, *, dtype: Any = None) -> Node:
        dims = [dims] if isinstance(dims, int) else dims
        axes = list(range(len(x.shape))) if not dims else [d % len(x.shape) for d in dims]
        return ctx.make(op, [x], axes=axes, keepdim=bool(keepdim))

    return convert


register_converter("aten.mean.dim", "aten.mean.default")(_reduce("mean"))
register_converter("aten.sum.dim_IntList", "aten.sum.default")(_reduce("sum"))
register_converter("aten.amax.default", "aten.any.dim", "aten.any.dims")(_reduce("amax"))
register_converter("aten.amin.default", "aten.all.dim")(_reduce("amin"))


@register_converter("aten.var.correction")
def _var(ctx: Context, x: Node, dims: list[int] | None = None, *, correction: float = 1,
         keepdim: bool = False) -> Node:
    """sum((x - mean)^2) / (n - correction), from mean, sub, mul, sum and div."""
    axes = list(range(len(x.shape))) if not dims else [d % len(x.shape) for d in dims]
    centred = ctx.make("sub", [x, ctx.make("mean", [x], axes=axes, keepdim=True)])
    total = ctx.make("sum", [ctx.make("mul", [centred, centred])], axes=axes, keepdim=keepdim)
    count = int(np.prod([x.shape[a] for a in axes])) - (correction or 0)
    return ctx.make("div", [total, ctx.operand(float(count), x.dtype)])


@register_converter("aten.linalg_vector_norm.default")
def _vector_norm(ctx: Context, x: Node, ord: float = 2, dims: list[int] | None = None,
                 keepdim: bool = False, *, dtype: Any = None) -> Node:
    if ord != 2:
        raise ctx.unsupported(f"vector norm of order {ord}", "use the 2-norm")
    axes = list(range(len(x.shape))) if not dims else [d % len(x.shape) for d in dims]
    squares = ctx.make("sum", [ctx.make("mul", [x, x])], axes=axes, keepdim=keepdim)
    return ctx.make("sqrt", [squares])


# --- data movement ---------------------------------------------------------------------------

@register_converter("aten.view.default", "aten._unsafe_view.default", "aten.reshape.default",
                    "aten.unsqueeze.default", "aten.squeeze.dims", "aten.squeeze.dim",
                    "aten.squeeze.default", "aten.flatten.using_ints")
def _reshape(ctx: Context, x: Node, *args: Any) -> Node:
    return x if x.shape == ctx.shape else ctx.make("reshape", [x], shape=list(ctx.shape))


@register_converter("aten.permute.default")
def _permute(ctx: Context, x: Node, dims: list[int]) -> Node:
    return ctx.make("permute", [x], perm=[d % len(x.shape) for d in dims])


@register_converter("aten.t.default", "aten.transpose.int")
def _transpose(ctx: Context, x: Node, d0: int = 0, d1: int = 1) -> Node:
    perm = list(range(len(x.shape)))
    if len(perm) < 2:
        return x
    d0, d1 = d0 % len(perm), d1 % len(perm)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return ctx.make("permute", [x], perm=perm)


@register_converter("aten.expand.default")
def _expand(ctx: Context, x: Node, *args: Any, **kwargs: Any) -> Node:
    return x if x.shape == ctx.shape else ctx.make("expand", [x], shape=list(ctx.shape))


def _clamp_index(i: int | None, size: int, default: int) -> int:
    if i is None:
        return default
    return max(-size, min(int(i), size)) if abs(int(i)) < _INT_MAX else (size if i > 0 else 0)


@register_converter("aten.slice.Tensor")
def _slice(ctx: Context, x: Node, dim: int = 0, start: int | None = None, end: int | None = None,
           step: int = 1) -> Node:
    dim %= len(x.shape)
    size = x.shape[dim]
    start, end = _clamp_index(start, size, 0), _clamp_index(end, size, size)
    if (start in (0, -size) and end == size and step == 1):
        return x
    return ctx.make("slice", [x], axis=dim, start=start, end=end, step=step)


@register_converter("aten.select.int")
def _select(ctx: Context, x: Node, dim: int, index: int) -> Node:
    dim %= len(x.shape)
    index %= x.shape[dim]
    piece = ctx.make("slice", [x], axis=dim, start=index, end=index + 1, step=1)
    return ctx.make("reshape", [piece], shape=list(ctx.shape))


@register_converter("aten.cat.default", "aten.concat.default")
def _cat(ctx: Context, tensors: list[Node], dim: int = 0) -> Node:
    parts = [t for t in tensors if isinstance(t, Node) and t.type.size > 0]
    if len(parts) == 1:
        return parts[0]
    return ctx.make("concat", parts, axis=dim % len(ctx.shape))


@register_converter("aten.split_with_sizes.default", "aten.split.Tensor", "aten.chunk.default")
def _split(ctx: Context, x: Node, sizes: int | list[int], dim: int = 0) -> list[Node]:
    dim %= len(x.shape)
    pieces, start = [], 0
    for val in ctx.val:
        size = int(val.shape[dim])
        pieces.append(ctx.make("slice", [x], axis=dim, start=start, end=start + size, step=1))
        start += size
    return pieces


@register_converter("aten.unbind.int")
def _unbind(ctx: Context, x: Node, dim: int = 0) -> list[Node]:
    dim %= len(x.shape)
    return [ctx.make("reshape", [ctx.make("slice", [x], axis=dim, start=i, end=i + 1, step=1)],
                     shape=list(v.shape)) for i, v in enumerate(ctx.val)]


@register_converter("aten.constant_pad_nd.default")
def _pad(ctx: Context, x: Node, pad: list[int], value: float = 0.0) -> Node:
    rank = len(x.shape)
    pads = [0] * (2 * rank)
    for i in range(len(pad) // 2):  # torch lists (lo, hi) pairs from the last axis backwards
        axis = rank - 1 - i
        pads[2 * axis], pads[2 * axis + 1] = pad[2 * i], pad[2 * i + 1]
    return ctx.make("pad", [x], pads=pads, value=float(value))


@register_converter("aten.index.Tensor")
def _index(ctx: Context, x: Node, indices: list[Node | None]) -> Node:
    """x[..., i0, i1, ...] with index tensors on adjacent axes: one gather on the flattened axes
    (constant indices are combined at capture time with ravel_multi_index)."""
    used = [i for i, idx in enumerate(indices) if idx is not None]
    first, last = used[0], used[-1]
    if used != list(range(first, last + 1)):
        raise ctx.unsupported("indexing with tensors on non-adjacent axes",
                              "index one axis at a time")
    if len(used) == 1:
        ids = indices[first]
    else:
        arrays = [ctx.const_value(indices[i]) for i in used]
        if any(a is None for a in arrays):
            raise ctx.unsupported("indexing several axes with computed index tensors",
                                  "index one axis at a time")
        dims = x.shape[first:last + 1]
        flat = np.ravel_multi_index(tuple(np.broadcast_arrays(*(a % d for a, d in
                                                                zip(arrays, dims, strict=True)))),
                                    dims)
        x = ctx.make("reshape", [x], shape=list(x.shape[:first]) + [int(np.prod(dims))]
                     + list(x.shape[last + 1:]))
        ids = const(flat.astype(np.int64), DType.I64, ctx.loc)
    data = ctx.const_value(ids)
    if data is not None and (data < 0).any():
        ids = const(data % x.shape[first], ids.dtype, ctx.loc)
    return ctx.make("gather", [x, ids], axis=first)
