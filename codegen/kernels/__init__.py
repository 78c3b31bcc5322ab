"""Kernel lowerings: one function per op kind turning a node into the body of its C layer.

    @kernel("qadd", "qsub")
    def _(node: Node, ctx: Context) -> Kernel: ...   # Kernel(template, literal parameters)

The template `templates/ops/<template>.c.j2` renders the body from the parameters `k`; the
lowering computes every literal (shapes, strides, multipliers, zero points) in Python and may add
constant arrays through `ctx`. `lower` renders a node, or raises UnsupportedError naming the op
and module path when no kernel exists for it.
"""

from __future__ import annotations

from collections.abc import Callable

from npuc.errors import UnsupportedError
from npuc.ir import Node

from ..view import Context, Kernel

Lowering = Callable[[Node, Context], Kernel]
KERNELS: dict[str, Lowering] = {}


def kernel(*ops: str) -> Callable[[Lowering], Lowering]:
    """Register a lowering for `ops`."""
    def register(fn: Lowering) -> Lowering:
        for op in ops:
            if op in KERNELS:
                raise ValueError(f"two C kernels for {op}")
            KERNELS[op] = fn
        return fn

    return register


def lower(node: Node, ctx: Context) -> str:
    """The C statements computing `node` (see the module docstring)."""
    from ..render import render_kernel

    if node.op not in KERNELS:
        raise UnsupportedError(
            f"no C kernel for {node.op}", op=node.op, loc=node.loc, stage="emit-c",
            hint=f"C kernels exist for: {', '.join(sorted(KERNELS))}; keep this op out of the "
                 "model, or add a kernel in npuc/codegen/kernels/")
    return render_kernel(KERNELS[node.op](node, ctx))


def decode_weight(node: Node, out: str, ctx: Context) -> str:
    """C statements decoding encoded weight `node` into the int8 array at `out`."""
    from ..render import render_kernel
    from .weights import decode_kernel

    return render_kernel(decode_kernel(node, out, ctx))


from . import elementwise  # noqa: E402,F401,I001  (registers its kernels)
from . import gemm  # noqa: E402,F401
from . import pool, reduce  # noqa: E402,F401
