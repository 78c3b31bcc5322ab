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
from .weights import EncodedWeight, decode


def encoded_const(encoded: EncodedWeight, quant: QuantParams, loc: str | None = None) -> Node:
    """The const node storing `encoded` (dense int8 stays an ordinary int8 constant)."""
    if encoded.encoding == "dense":
        return const(encoded.values, DType.I8, loc, quant)
    encoding, parts = encoded.encoding, [encoded.payload.astype(np.uint8).ravel()]
    if encoded.lut is not None:
        encoding += f":g{encoded.lut.shape[0]}"
        parts.insert(0, encoded.lut.astype(np.int8).view(np.uint8).ravel())
    payload = np.concatenate(parts)
    attrs = Attrs({"data": payload, "digest": digest(payload), "encoding": encoding})
    return Node("const", (), attrs, TensorType(encoded.values.shape, DType.I8, quant), loc)


def lut_width(encoding: str) -> int:
    """Entries per LUT row: 4 for ternary (one unused), 2**bits for "palette<bits>"."""
    return 4 if encoding == "ternary" else 1 << int(encoding.removeprefix("palette"))


def split_payload(node: Node) -> tuple[str, np.ndarray | None, np.ndarray]:
    """(format name, LUT rows or None, packed codes) of an encoded constant."""
    name, _, rows = node.attrs["encoding"].partition(":g")
    payload = node.attrs["data"]
    if not rows:
        return name, None, payload
    size = int(rows) * lut_width(name)
    return name, payload[:size].view(np.int8).reshape(int(rows), -1), payload[size:]


def decode_const(node: Node) -> np.ndarray:
    """The logical int8 values of an encoded constant."""
    name, lut, codes = split_payload(node)
    axis = node.type.quant.axis if node.type.quant and node.type.quant.axis is not None else 0
    return decode(name, codes, lut, node.shape, axis)
