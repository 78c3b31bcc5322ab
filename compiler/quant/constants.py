"""Weight constants in their stored encodings.

A compressed constant is one `const` node whose type is the logical int8 weight (shape, per-channel
quantization) and whose `data` is the bytes a device stores: for palettized and ternary weights the
LUT rows (int8) first, then the packed codes; for sub-byte integers just the packed values; for
"sparse" the nonzero bitmap, then the nonzero values (see `npuc.quant.weights` for the
layouts). The `encoding` attribute names the format and, for LUT formats, the number of LUT rows:
"int4", "sparse", "palette4:g8", "ternary:g64". `node.data` decodes.
"""

from __future__ import annotations

import numpy as np

from ..ir import Attrs, DType, Node, QuantParams, TensorType, const, digest
from .weights import EncodedWeight, Encoding, decode, parse_encoding


def encoded_const(encoded: EncodedWeight, quant: QuantParams, loc: str | None = None) -> Node:
    """The const node storing `encoded` (dense int8 stays an ordinary int8 constant)."""
    if encoded.encoding == "dense":
        return const(encoded.values, DType.I8, loc, quant)
    enc, parts = parse_encoding(encoded.encoding), [encoded.payload.astype(np.uint8).ravel()]
    if encoded.lut is not None:
        enc = Encoding(enc.kind, enc.bits, encoded.lut.shape[0])
        parts.insert(0, encoded.lut.astype(np.int8).view(np.uint8).ravel())
    payload = np.concatenate(parts)
    attrs = Attrs({"data": payload, "digest": digest(payload), "encoding": str(enc)})
    return Node("const", (), attrs, TensorType(encoded.values.shape, DType.I8, quant), loc)


def encoding_of(node: Node) -> Encoding:
    """The parsed `encoding` of a const node (dense for any other node)."""
    return parse_encoding(node.attrs.get("encoding", "dense") if node.is_const else "dense")


def split_payload(node: Node) -> tuple[Encoding, np.ndarray | None, np.ndarray]:
    """(encoding, LUT rows or None, packed codes) of an encoded constant."""
    enc = encoding_of(node)
    payload = node.attrs["data"]
    if not enc.lut_rows:
        return enc, None, payload
    size = enc.lut_rows * enc.lut_width
    return enc, payload[:size].view(np.int8).reshape(enc.lut_rows, -1), payload[size:]


def decode_const(node: Node) -> np.ndarray:
    """The logical int8 values of an encoded constant."""
    enc, lut, codes = split_payload(node)
    axis = node.type.quant.axis if node.type.quant and node.type.quant.axis is not None else 0
    return decode(enc, codes, lut, node.shape, axis)
