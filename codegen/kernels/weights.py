"""C decoders of compressed weight constants (`npuc.quant.constants`): the stored bytes in, the
logical int8 values out, bit for bit as `npuc.quant.weights.decode`.

`decode_kernel(node, out, ctx)` is what `Context.weight` renders into a layer's prelude. The
payload (LUT rows first for ternary and palette weights, then the packed codes) becomes one
uint8 array plus a zero byte, so a decoder may read one byte past the last code. Decoding runs
in two passes over `out`:

1. unpack: b-bit fields from the LSB-first bit stream, eight at a time (8 fields of b bits are
   exactly b bytes) with a per-field tail; "int<b>" sign-extends two's complement fields
   ((code ^ 2^(b-1)) - 2^(b-1)), LUT formats keep the unsigned code;
2. lookup (ternary and palette only): out[i] = lut[row of i's channel][code], channels taken
   along the weight's quantization axis and split into the LUT's rows as contiguous groups.

"sparse" weights decode in one pass instead: element i is the next stored nonzero value when
bit i of the bitmap is set, else 0. "nm<n>:<m>" weights too, after zeroing `out`: slot s of row
r (rows along the input-channel axis, see `npuc.quant.weights`) puts its nonzero value at input
channel (s / n % groups) * m + position, read from the slot's LSB-first position field (a
zero-valued slot, such as one in a partial last group's padding, writes nothing).
"""

from __future__ import annotations

import math

import numpy as np

from npuc.errors import UnsupportedError
from npuc.ir import Node
from npuc.quant.constants import encoding_of, split_payload
from npuc.quant.weights import nm_axis

from ..view import Context, Kernel


def decode_kernel(node: Node, out: str, ctx: Context) -> Kernel:
    """The `decode` template writing the int8 values of encoded const `node` to `out`."""
    enc, lut, codes = split_payload(node)
    count = math.prod(node.shape)
    payload = np.asarray(node.attrs["data"], dtype=np.uint8).ravel()
    if enc.kind == "sparse":
        stored = ctx.array(payload, "npuc_u8", f"{node.loc or 'weight'}: sparse ({count} values)")
        return Kernel("decode", {"out": out, "payload": stored, "count": count,
                                 "sparse": {"values_at": -(-count // 8)}, "lut": None,
                                 "nm": None})
    if enc.kind == "nm":
        return _nm_kernel(node, out, ctx, payload)
    if enc.kind not in ("int", "ternary", "palette"):
        raise UnsupportedError(f"no C decoder for {enc} weights", op=node.op, loc=node.loc,
                               stage="emit-c")
    stored = ctx.array(np.concatenate([payload, np.zeros(1, np.uint8)]), "npuc_u8",
                       f"{node.loc or 'weight'}: {enc} ({count} values)")
    params = {
        "out": out, "payload": stored, "codes_at": payload.size - codes.size, "bits": enc.bits,
        "mask": (1 << enc.bits) - 1, "half": 1 << (enc.bits - 1), "signed": enc.kind == "int",
        "groups": count // 8, "count": count, "lut": None, "sparse": None, "nm": None,
    }
    if lut is not None:
        quant = node.type.quant
        axis = quant.axis if quant is not None and quant.axis is not None else 0
        channels = node.shape[axis]
        rows = lut.shape[0]
        if lut.shape[1] != enc.lut_width or channels % rows:
            raise UnsupportedError(f"{enc} weight of shape {node.shape}: bad LUT "
                                   f"{lut.shape}", op=node.op, loc=node.loc, stage="emit-c")
        params["lut"] = {"outer": math.prod(node.shape[:axis]), "channels": channels,
                         "inner": math.prod(node.shape[axis + 1:]),
                         "per": channels // rows, "width": lut.shape[1]}
    return Kernel("decode", params)


def _nm_kernel(node: Node, out: str, ctx: Context, payload: np.ndarray) -> Kernel:
    """The nm decoder's parameters: the weight as (outer, R, inner) around its input-channel
    axis R, and where the positions start in the payload."""
    enc = encoding_of(node)
    quant = node.type.quant
    raxis = nm_axis(len(node.shape), quant.axis if quant and quant.axis is not None else 0)
    count, length = math.prod(node.shape), node.shape[raxis]
    inner = math.prod(node.shape[raxis + 1:])
    groups = -(-length // enc.m)
    rows = count // length
    stored = ctx.array(np.concatenate([payload, np.zeros(1, np.uint8)]), "npuc_u8",
                       f"{node.loc or 'weight'}: {enc} ({count} values)")
    nm = {"rows": rows, "inner": inner, "length": length, "groups": groups, "n": enc.n,
          "m": enc.m, "bits": enc.index_bits, "mask": (1 << enc.index_bits) - 1,
          "slots_at": rows * groups * enc.n}
    return Kernel("decode", {"out": out, "payload": stored, "count": count, "nm": nm,
                             "sparse": None, "lut": None})
