"""Weight formats for integer-only quantization: int2..int8, sparse, ternary and palettized.

Every format turns a float weight `w` into a *logical* int8 tensor `values` of w's shape and a
symmetric per-output-channel `scale` (channels along `axis`), real weight ~ values * scale, so the
integer kernels only ever see int8 weights with zero point 0. A format changes how the values are
chosen and how they are stored; `decode` rebuilds `values` from the stored bytes, bit for bit.

Storage (a C decoder must reproduce `decode` exactly; only integer ops, no rounding, are involved):
- packing: the tensor is flattened in C (row-major) order and element i occupies bits
  [i*b, (i+1)*b) of a little-endian bit stream (stream bit j is bit j % 8 of byte j // 8, LSB
  first), so int4 puts element 2k in the low nibble of byte k. The last byte is padded with zero
  bits: a payload of `count` elements is ceil(count*b/8) bytes. The LUT is stored separately.
- "dense" (int8): the payload is the int8 values' bytes, values in [-127, 127].
- "int2".."int7": b-bit two's complement values in [-(2^(b-1)-1), 2^(b-1)-1], packed.
- "sparse": int8 values, compressed: a bitmap of the nonzero elements (1 bit each, packed as
  above: ceil(count/8) bytes), then the nonzero values' bytes in C order. Pruned weights (most
  values zero) take about 1/8 + density bytes per weight.
- "nm<n>:<m>" (e.g. "nm2:4"): int8 values with at most n nonzeros in every group of m consecutive
  weights along the input-channel axis (axis 1 when the channels are axis 0, as for conv and
  linear; axis 0 for conv_transpose, whose channels are axis 1). The weight is cut into rows
  along that axis (the axis moved last, rows in C order of the other axes: for a conv, one row
  per output channel and kernel tap, OHWI order), each row into ceil(R/m) groups of m (the last
  one zero-padded when m does not divide R). Every group stores n slots: the positions of its
  nonzeros, then of its first zeros to fill n, ascending, and their values. The payload is every
  slot's int8 value in group order, then every slot's position as a ceil(log2 m)-bit field,
  packed as above: 2:4 is 2 bytes + 4 bits per 4 weights, 0.625 bytes per weight.
- "ternary": 2-bit codes 0/1/2 for T = -1/0/+1, packed; lut int8 (C, 4) with row c =
  [round((gamma_c-alpha_c)/s_c), round(gamma_c/s_c), round((gamma_c+alpha_c)/s_c), 0] and
  s_c = (alpha_c+|gamma_c|)/127; the value of an element of channel c is lut[c, code].
- "palette<b>": unsigned b-bit codes, packed; lut int8 (G, 2^b), each row its used entries in
  ascending order then zeros; channels split into G contiguous groups of C/G channels, and the
  value of an element of channel c is lut[c // (C/G), code].

Bytes per int8 weight at density d (`stored_nbytes` is the formula, checked against the
payloads): dense 1; sparse 1/8 + d (0.625 at 50%); nm n/m * (1 + ceil(log2 m)/8) whatever the
zeros (2:4 0.625, 1:4 0.3125, 4:8 0.6875). CSR with one-byte column indices (2d) would beat the
bitmap only below d = 1/8, so npuc has no CSR format.

How the values are fitted (rounding here is numpy's round-half-to-even; it never reaches decode):
- int b: per channel, the clip threshold is the best of a grid of ratios of |w|max (int8 and
  sparse: |w|max).
- ternary: TernaryLLM's dual learnable ternarization w_c ~ alpha_c*T + gamma_c, alternating
  nearest-level T and least-squares (alpha, gamma); with calibration inputs X, (alpha, gamma) are
  refitted on the layer outputs X(alpha*T + gamma) ~ X w_c (T kept).
- palette: 1-D k-means per group (LBG splitting + Lloyd), centroids rounded onto the group's int8
  grid; with calibration inputs, also fitted with each weight weighted by its input column's mean
  square (eDKM-like importance).
With calibration inputs, a channel (ternary) or group (palette) keeps the plain weight fit unless
the calibrated one lowers its error on the outputs X w_c, so calibrating never makes them worse.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np

ACCEPTED_FORMATS = ("int2..int8, sparse (int8, zeros compressed), nm<n>:<m> (int8 N:M-sparse "
                    "along the input channels, e.g. nm2:4), auto-sparse (int8, each layer "
                    "stored in the smallest of dense, sparse and nm), ternary, "
                    "palette1..palette8, or palette<b>:g<N> (N contiguous groups of channels, "
                    "one LUT each)")
_SPEC = re.compile(r"int(?P<int>[2-8])|ternary|sparse|auto-sparse"
                   r"|nm(?P<n>[1-9]\d*):(?P<m>[1-9]\d*)"
                   r"|palette(?P<palette>[1-8])(?::g(?P<groups>[1-9]\d*))?")
_BITS = {"int": (2, 8), "sparse": (8, 8), "nm": (8, 8), "auto": (8, 8), "ternary": (2, 2),
         "palette": (1, 8)}
NM_MAX_M = 64  # the largest group an nm format takes (6-bit positions)
# the N:M group sizes "auto-sparse" tries: those hardware ships (2:4 in Ampere's sparse tensor
# cores and Ethos-U85; 1:4 and 4:8 as the levels)
AUTO_NM_GROUPS = (4, 8)

# int b < 8: clip thresholds tried, as fractions of each channel's |w|max; they reach down to 0.2
# because the MSE-optimal clip of a Gaussian channel at 2-3 bits sits near 0.3-0.5 of its max
_CLIP_RATIOS = np.linspace(1.0, 0.2, 33)
_TERNARY_ITERATIONS = 20
_LLOYD_ITERATIONS = 100


@dataclass(frozen=True)
class WeightFormat:
    """How one layer's weights are quantized and stored; `str()` gives the spec back.

    kind "int": bits 2..8; "sparse": bits 8 (int8 values, zeros compressed); "nm": bits 8, at
    most `n` nonzeros in every `m` weights along the input channels; "auto": bits 8, stored as
    the smallest of dense, sparse and nm (`prefer_nm`: nm wherever the values are N:M, for an
    NPU that skips N:M natively); "ternary": bits 2 (the storage width of a code); "palette":
    bits 1..8 (2**bits centroids), with `groups` contiguous channel groups sharing one LUT each.
    """

    kind: str
    bits: int
    groups: int = 1
    n: int = 0
    m: int = 0
    prefer_nm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _BITS:
            raise ValueError(f"weight format kind {self.kind!r}: expected int, sparse, ternary or "
                             "palette")
        lo, hi = _BITS[self.kind]
        if not isinstance(self.bits, int) or not lo <= self.bits <= hi:
            raise ValueError(f"weight format {self.kind}: bits={self.bits!r}, expected {lo}..{hi}")
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ValueError(f"weight format {self.kind}: groups={self.groups!r}, expected >= 1")
        if self.groups != 1 and self.kind != "palette":
            raise ValueError(f"weight format {self.kind}: only palette formats take groups")
        if self.kind == "nm":
            check_nm(self.n, self.m)
        elif self.n or self.m:
            raise ValueError(f"weight format {self.kind}: only nm formats take n and m")

    def __str__(self) -> str:
        if self.kind in ("ternary", "sparse"):
            return self.kind
        if self.kind == "nm":
            return f"nm{self.n}:{self.m}"
        if self.kind == "auto":
            return "auto-sparse"
        return f"{self.kind}{self.bits}" + (f":g{self.groups}" if self.groups > 1 else "")

    @property
    def encoding(self) -> str:
        """The `EncodedWeight.encoding` this format produces ("auto": the one it picks per
        layer, so none of its own)."""
        if self.kind in ("nm", "auto"):
            return str(self)
        return "dense" if (self.kind, self.bits) == ("int", 8) else str(self).split(":")[0]


def check_nm(n: int, m: int) -> None:
    """ValueError unless 1 <= n < m <= NM_MAX_M (n = m would be dense, n = 0 all zeros)."""
    if not (isinstance(n, int) and isinstance(m, int) and 1 <= n < m <= NM_MAX_M):
        raise ValueError(f"nm format {n}:{m}: expected 1 <= n < m <= {NM_MAX_M} (e.g. nm2:4)")


@dataclass(frozen=True)
class Encoding:
    """How a constant is stored: the `encoding` attribute of a const node, parsed once
    (`parse_encoding`); `str()` gives the attribute back.

    kind "dense" (the values' own bytes), "int" (bits 2..7, packed), "sparse" (bitmap + nonzero
    int8 values), "nm" (n of every m int8 values along the input channels, with their positions),
    "ternary" (2-bit codes) or "palette" (bits 1..8 codes); `lut_rows` is the number
    of LUT rows stored before the codes of a LUT format (0 when the attribute names none, as an
    `EncodedWeight` does before it becomes a constant).
    """

    kind: str
    bits: int = 8
    lut_rows: int = 0
    n: int = 0
    m: int = 0

    @property
    def name(self) -> str:
        """The format without its LUT rows: "dense", "int4", "sparse", "nm2:4", "ternary",
        "palette4"."""
        if self.kind == "nm":
            return f"nm{self.n}:{self.m}"
        return self.kind + (str(self.bits) if self.kind in ("int", "palette") else "")

    @property
    def index_bits(self) -> int:
        """Bits of one stored position of an nm encoding: ceil(log2 m)."""
        return (self.m - 1).bit_length()

    @property
    def is_dense(self) -> bool:
        return self.kind == "dense"

    @property
    def is_lut(self) -> bool:
        """Codes looked up in a LUT (ternary, palette) rather than the values themselves."""
        return self.kind in ("ternary", "palette")

    @property
    def lut_width(self) -> int:
        """Entries per LUT row: 4 for ternary (one unused), 2**bits for a palette."""
        return 4 if self.kind == "ternary" else 1 << self.bits

    def __str__(self) -> str:
        return self.name + (f":g{self.lut_rows}" if self.lut_rows else "")


_STORED = re.compile(r"(?P<name>dense|int(?P<int>[2-7])|ternary|sparse|palette(?P<palette>[1-8])"
                     r"|nm(?P<n>[1-9]\d*):(?P<m>[1-9]\d*))(?::g(?P<rows>[1-9]\d*))?")


@functools.lru_cache(maxsize=256)
def parse_encoding(text: str | Encoding) -> Encoding:
    """The Encoding of an `encoding` attribute ("dense", "int4", "sparse", "nm2:4",
    "palette4:g8", "ternary:g64"); ValueError naming the accepted forms for anything else."""
    if isinstance(text, Encoding):
        return text
    match = _STORED.fullmatch(text) if isinstance(text, str) else None
    if match is None or (match["rows"] and match["name"] != "ternary" and not match["palette"]):
        raise ValueError(f"unknown weight encoding {text!r}: expected dense, int2..int7, sparse, "
                         "nm<n>:<m>, ternary[:g<rows>] or palette1..palette8[:g<rows>]")
    if match["n"]:
        n, m = int(match["n"]), int(match["m"])
        try:
            check_nm(n, m)
        except ValueError as e:
            raise ValueError(f"unknown weight encoding {text!r}: {e}") from None
        return Encoding("nm", 8, 0, n, m)
    rows = int(match["rows"] or 0)
    if match["int"]:
        return Encoding("int", int(match["int"]))
    if match["palette"]:
        return Encoding("palette", int(match["palette"]), rows)
    return Encoding("ternary", 2, rows) if match["name"] == "ternary" else Encoding(match["name"])


def parse_weight_format(spec: str | WeightFormat) -> WeightFormat:
    """"int4", "ternary", "palette4", "palette4:g8", "nm2:4", "auto-sparse", ... as a
    WeightFormat (one passes through)."""
    if isinstance(spec, WeightFormat):
        return spec
    match = _SPEC.fullmatch(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(f"unknown weight format {spec!r}: expected {ACCEPTED_FORMATS}")
    if match["int"]:
        return WeightFormat("int", int(match["int"]))
    if match["palette"]:
        return WeightFormat("palette", int(match["palette"]), int(match["groups"] or 1))
    if match["n"]:
        try:
            return WeightFormat("nm", 8, n=int(match["n"]), m=int(match["m"]))
        except ValueError as e:
            raise ValueError(f"weight format {spec!r}: {e}") from None
    kinds = {"sparse": ("sparse", 8), "auto-sparse": ("auto", 8), "ternary": ("ternary", 2)}
    return WeightFormat(*kinds[spec])


@dataclass(frozen=True, eq=False)
class EncodedWeight:
    """A quantized weight: logical int8 `values` (w's shape), real ~ values * scale along `axis`,
    and the stored form (`encoding`, `payload`, `lut`) that `decode` turns back into `values`."""

    values: np.ndarray  # int8, the float weight's shape
    scale: np.ndarray  # float64 (C,), > 0 and finite
    encoding: str  # "dense", "int2".."int7", "sparse", "nm<n>:<m>", "ternary", "palette1".."8"
    payload: np.ndarray  # uint8 1-d: the bytes stored in the model
    lut: np.ndarray | None  # int8 (G, 2**bits) for palette, (C, 4) for ternary, else None
    axis: int = 0  # the channel axis, non-negative

    def dequantize(self) -> np.ndarray:
        """values * scale (float64), the weight the integer kernels effectively apply."""
        return self.values * _along(self.scale, self.values.ndim, self.axis)

    def error(self, w: np.ndarray) -> float:
        """Relative Frobenius error ||values*scale - w|| / ||w|| (the absolute error if w is 0)."""
        w = np.asarray(w, np.float64)
        diff, norm = np.linalg.norm(self.dequantize() - w), np.linalg.norm(w)
        return float(diff / norm if norm > 0 else diff)

    @property
    def nbytes(self) -> int:
        """Bytes stored for the weight: payload and LUT (the per-channel scales not counted)."""
        return self.payload.nbytes + (0 if self.lut is None else self.lut.nbytes)


# ------------------------------------------------------------------ bit packing


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack integers of b bits (signed two's complement or unsigned) into a uint8 payload of
    ceil(n*b/8) bytes, in the module's layout (C order, LSB-first bit stream, zero padding)."""
    _check_bits(bits)
    v = np.asarray(values).ravel()
    if v.dtype.kind not in "iub":
        raise TypeError(f"pack_bits: integer values expected, got {v.dtype}")
    v = v.astype(np.int64)
    if v.size and (v.min() < -(1 << (bits - 1)) or v.max() >= 1 << bits):
        raise ValueError(f"pack_bits: values span [{v.min()}, {v.max()}], which does not fit in "
                         f"{bits} bits (signed or unsigned)")
    codes = (v & ((1 << bits) - 1)).astype(np.uint8)
    if bits == 8:
        return codes
    stream = np.unpackbits(codes[:, None], axis=1, bitorder="little")[:, :bits]
    return np.packbits(stream.ravel(), bitorder="little")


def unpack_bits(payload: np.ndarray, bits: int, count: int, signed: bool) -> np.ndarray:
    """The `count` b-bit fields of a payload: int8 (sign-extended two's complement) when
    `signed`, else uint8 codes. The payload must be exactly ceil(count*b/8) bytes."""
    _check_bits(bits)
    payload = np.asarray(payload)
    need = -(-count * bits // 8)
    if payload.dtype != np.uint8 or payload.shape != (need,):
        raise ValueError(f"unpack_bits: {count} fields of {bits} bits need a uint8 payload of "
                         f"shape ({need},), got {payload.dtype} {payload.shape}")
    stream = np.unpackbits(payload, bitorder="little")[: count * bits].reshape(count, bits)
    codes = np.packbits(stream, axis=1, bitorder="little").reshape(count)  # zero high bits
    if not signed:
        return codes
    wide = codes.astype(np.int16)
    return np.where(wide >= 1 << (bits - 1), wide - (1 << bits), wide).astype(np.int8)


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int | np.integer) or not 1 <= bits <= 8:
        raise ValueError(f"bit width {bits!r}: expected 1..8")


# ------------------------------------------------------------------ decode


def decode(encoding: str | Encoding, payload: np.ndarray, lut: np.ndarray | None,
           shape: tuple[int, ...], axis: int = 0) -> np.ndarray:
    """The int8 logical values of a stored weight of `shape` (channels along `axis`)."""
    shape = tuple(int(d) for d in shape)
    axis = _normalise_axis(axis, len(shape))
    count = math.prod(shape)
    enc = parse_encoding(encoding)
    if enc.kind in ("dense", "int"):
        return unpack_bits(payload, enc.bits, count, signed=True).reshape(shape)
    if enc.kind == "sparse":
        return _unsparse(np.asarray(payload), count).reshape(shape)
    if enc.kind == "nm":
        return _un_nm(np.asarray(payload), enc, shape, axis)
    codes = unpack_bits(payload, enc.bits, count, signed=False)
    channels = shape[axis]
    lut = np.asarray(lut)
    if enc.kind == "ternary":
        ok = lut.shape == (channels, 4)
    else:
        ok = lut.ndim == 2 and lut.shape[1] == enc.lut_width and _divides(lut.shape[0], channels)
    if lut.dtype != np.int8 or not ok:
        raise ValueError(f"{enc.name} weight of shape {shape} (axis {axis}): bad lut "
                         f"{lut.dtype} {lut.shape}; expected int8 "
                         + ("(C, 4)" if enc.kind == "ternary" else f"(G, {enc.lut_width}), "
                                                                    "C % G == 0"))
    return _lookup(lut, codes, shape, axis)


def sparse_payload(values: np.ndarray) -> np.ndarray:
    """The "sparse" storage of int8 values: the packed nonzero bitmap, then the nonzero values."""
    flat = np.asarray(values, np.int8).ravel()
    bitmap = np.packbits(flat != 0, bitorder="little")
    return np.concatenate([bitmap, flat[flat != 0].view(np.uint8)])


def _unsparse(payload: np.ndarray, count: int) -> np.ndarray:
    bitmap_bytes = -(-count // 8)
    if payload.dtype != np.uint8 or payload.ndim != 1 or payload.size < bitmap_bytes:
        raise ValueError(f"sparse weight of {count} values: a uint8 payload of at least "
                         f"{bitmap_bytes} bytes expected, got {payload.dtype} {payload.shape}")
    keep = np.unpackbits(payload[:bitmap_bytes], bitorder="little")[:count].astype(bool)
    nonzero = payload[bitmap_bytes:]
    if nonzero.size != keep.sum():
        raise ValueError(f"sparse weight: the bitmap marks {int(keep.sum())} nonzero values, the "
                         f"payload holds {nonzero.size}")
    out = np.zeros(count, np.int8)
    out[keep] = nonzero.view(np.int8)
    return out


# ------------------------------------------------------------------ N:M


def nm_axis(ndim: int, axis: int) -> int:
    """The input-channel axis an nm weight's groups run along: 1 for channels along axis 0
    (conv, linear), else 0 (conv_transpose's channels are axis 1)."""
    if ndim < 2:
        raise ValueError(f"an nm weight needs an input-channel axis; a {ndim}-d weight has none")
    return 1 if axis == 0 else 0


def _nm_runs(values: np.ndarray, axis: int, m: int) -> np.ndarray:
    """(rows, groups, m): the weight's rows along its input-channel axis, cut into groups of m
    (the last zero-padded)."""
    moved = np.moveaxis(values, nm_axis(values.ndim, axis), -1)
    rows = moved.reshape(-1, moved.shape[-1])
    length = rows.shape[1]
    groups = -(-length // m)
    padded = np.zeros((rows.shape[0], groups * m), rows.dtype)
    padded[:, :length] = rows
    return padded.reshape(rows.shape[0], groups, m)


def nm_violation(values: np.ndarray, axis: int, n: int, m: int) -> str | None:
    """None when every group of m weights along the input-channel axis of `values` holds at most
    n nonzeros, else where the first group that does not is and how many it holds."""
    runs = _nm_runs(np.asarray(values), axis, m)
    counts = np.count_nonzero(runs, axis=2)
    if counts.size == 0 or counts.max() <= n:
        return None
    row, group = np.unravel_index(int(np.argmax(counts > n)), counts.shape)
    raxis = nm_axis(values.ndim, axis)
    others = [d for k, d in enumerate(values.shape) if k != raxis]
    index: list[str] = [str(i) for i in np.unravel_index(row, others)]
    first = group * m
    index.insert(raxis, f"{first}:{min(first + m, values.shape[raxis])}")
    return (f"weight[{', '.join(index)}] holds {counts[row, group]} nonzero values, more than "
            f"{n} of {m} along the input channels (axis {raxis})")


def nm_payload(values: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """The "nm<n>:<m>" storage of int8 values that are N:M (`nm_violation` is None): every
    group's n slot values, then their positions, packed (see the module docstring)."""
    runs = _nm_runs(np.asarray(values, np.int8), axis, m)
    # nonzeros first, then zeros, each in position order; the first n, ascending
    order = np.argsort(runs == 0, axis=2, kind="stable")[:, :, :n]
    slots = np.sort(order, axis=2)
    kept = np.take_along_axis(runs, slots, axis=2)
    bits = Encoding("nm", 8, 0, n, m).index_bits
    return np.concatenate([kept.ravel().view(np.uint8), pack_bits(slots.ravel(), bits)])


def _un_nm(payload: np.ndarray, enc: Encoding, shape: tuple[int, ...], axis: int) -> np.ndarray:
    raxis = nm_axis(len(shape), axis)
    length = shape[raxis]
    count = math.prod(shape)
    rows, groups = count // length if length else 0, -(-length // enc.m)
    slots = rows * groups * enc.n
    need = slots + -(-slots * enc.index_bits // 8)
    if payload.dtype != np.uint8 or payload.shape != (need,):
        raise ValueError(f"{enc} weight of shape {shape} (axis {axis}): a uint8 payload of "
                         f"{need} bytes expected, got {payload.dtype} {payload.shape}")
    values = payload[:slots].view(np.int8).reshape(rows, groups, enc.n)
    where = unpack_bits(payload[slots:], enc.index_bits, slots, signed=False).reshape(
        rows, groups, enc.n).astype(np.intp)
    if (where >= enc.m).any() or (np.diff(where, axis=2) <= 0).any():
        raise ValueError(f"{enc} weight: the positions of a group must ascend below {enc.m}")
    runs = np.zeros((rows, groups, enc.m), np.int8)
    np.put_along_axis(runs, where, values, axis=2)
    flat = runs.reshape(rows, groups * enc.m)
    if flat[:, length:].any():
        raise ValueError(f"{enc} weight: a nonzero value sits past the input channels' end")
    moved = tuple(d for k, d in enumerate(shape) if k != raxis) + (length,)
    return np.ascontiguousarray(np.moveaxis(flat[:, :length].reshape(moved), -1, raxis))


def stored_nbytes(fmt: WeightFormat | str, values: np.ndarray, axis: int = 0) -> int:
    """Bytes the int8 `values` take stored as `fmt` (int8, sparse or nm; the formula the
    payloads of this module match): dense count, sparse ceil(count/8) + nonzeros, nm<n>:<m>
    slots + ceil(slots * ceil(log2 m) / 8) with slots = n per group of m."""
    fmt = parse_weight_format(fmt)
    values = np.asarray(values)
    if fmt.kind == "sparse":
        return -(-values.size // 8) + int(np.count_nonzero(values))
    if fmt.kind == "nm":
        raxis = nm_axis(values.ndim, axis)
        slots = values.size // values.shape[raxis] * -(-values.shape[raxis] // fmt.m) * fmt.n
        return slots + -(-slots * Encoding("nm", 8, 0, fmt.n, fmt.m).index_bits // 8)
    if (fmt.kind, fmt.bits) == ("int", 8):
        return values.size
    raise ValueError(f"stored_nbytes: {fmt} is not an int8 format (int8, sparse, nm<n>:<m>)")


def auto_sparse_format(values: np.ndarray, axis: int, prefer_nm: bool = False) -> WeightFormat:
    """The int8 format "auto-sparse" stores `values` in: the smallest of int8, sparse and the
    N:M patterns the values hold (m in AUTO_NM_GROUPS, n the most nonzeros of any group), ties
    to nm, then sparse; with `prefer_nm` the smallest N:M pattern of at most half nonzeros
    (2:4 and finer, what N:M hardware skips) whenever the values hold one: an NPU that skips N:M
    natively needs the nm layout, even where a bitmap is smaller."""
    values = np.asarray(values)
    patterns = []
    if values.ndim >= 2:
        for m in AUTO_NM_GROUPS:
            n = int(np.count_nonzero(_nm_runs(values, axis, m), axis=2).max(initial=0))
            if n < m:
                patterns.append(WeightFormat("nm", 8, n=max(n, 1), m=m))
    skipped = [f for f in patterns if 2 * f.n <= f.m]
    others = [] if prefer_nm and skipped else [WeightFormat("sparse", 8), WeightFormat("int", 8)]
    patterns = skipped if prefer_nm and skipped else patterns
    return min(patterns + others, key=lambda f: stored_nbytes(f, values, axis))


def _lookup(lut: np.ndarray, codes: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """lut[group of the element's channel, code]: channels split into len(lut) contiguous groups."""
    channels = shape[axis]
    group = np.arange(channels) // (channels // lut.shape[0])
    return lut[_along(group, len(shape), axis), codes.reshape(shape)]


def _divides(groups: int, channels: int) -> bool:
    return groups > 0 and channels % groups == 0


# ------------------------------------------------------------------ quantize


def quantize_weight(w: np.ndarray, fmt: WeightFormat | str, *, axis: int = 0,
                    inputs: np.ndarray | None = None, min_scale: np.ndarray | None = None,
                    seed: int = 0) -> EncodedWeight:
    """Quantize float weight `w` (output channels along `axis`) to `fmt`.

    "nm<n>:<m>" is refused (ValueError naming the first group with more than n nonzero values)
    unless the int8 values are N:M; "auto-sparse" picks int8, sparse or nm per weight
    (`auto_sparse_format`), so the result's `encoding` says which.
    `inputs` are calibration activations, (samples, K) rows matching w's channels flattened to
    (C, K): ternary refits its scale and shift on the layer outputs, palette weights its k-means
    by each input column's mean square, each only where that lowers the output error; int
    ignores them. `min_scale` (C,) floors the channels' scales (a layer's bias must fit int32
    at s_in * s_w): a channel below it is re-rounded onto the coarser grid (its LUT row, for LUT
    formats). Every fit is deterministic; `seed` is accepted for interface stability only.
    """
    del seed  # the k-means is LBG-initialised: nothing random to seed
    fmt = parse_weight_format(fmt)
    w = np.asarray(w)
    if w.dtype.kind not in "fiu" or w.ndim == 0 or w.size == 0:
        raise ValueError(f"quantize_weight: expected a non-empty real array with at least one "
                         f"axis, got {w.dtype} {w.shape}")
    w = w.astype(np.float64)
    if not np.isfinite(w).all():
        raise ValueError(f"quantize_weight: the {w.shape} weight has "
                         f"{int(np.size(w) - np.isfinite(w).sum())} non-finite elements")
    axis = _normalise_axis(axis, w.ndim)
    rows = _rows(w, axis)
    x = None if inputs is None else _check_inputs(inputs, rows.shape[1])
    floor = None if min_scale is None else np.broadcast_to(
        np.asarray(min_scale, np.float64), (len(rows),))
    if fmt.kind in ("int", "sparse", "nm", "auto"):
        values, scale = _fit_int(rows, fmt.bits)
        if floor is not None:
            values, scale = _coarsen(values, scale, floor, (1 << (fmt.bits - 1)) - 1)
        values = _unrows(values, w.shape, axis)
        if fmt.kind == "auto":
            fmt = auto_sparse_format(values, axis, fmt.prefer_nm)
        if fmt.kind == "nm":
            where = nm_violation(values, axis, fmt.n, fmt.m)
            if where is not None:
                raise ValueError(f"not {fmt.n}:{fmt.m} sparse: {where}; prune it first "
                                 f"(prune_nm with n={fmt.n}, m={fmt.m}) or store it sparse")
            payload = nm_payload(values, axis, fmt.n, fmt.m)
        elif fmt.kind == "sparse":
            payload = sparse_payload(values)
        else:
            payload = pack_bits(values, fmt.bits)
        return EncodedWeight(values, scale, fmt.encoding, payload, None, axis)
    if fmt.kind == "ternary":
        codes, lut, scale = _fit_ternary(rows, x)
    else:
        codes, lut, scale = _fit_palette(rows, fmt.bits, fmt.groups, x)
    if floor is not None:  # LUT rows serve contiguous groups of channels that share a scale
        per = len(rows) // len(lut)
        group_floor = floor.reshape(len(lut), per).max(axis=1)
        lut, group_scale = _coarsen(lut, scale[::per], group_floor, 127)
        scale = np.repeat(group_scale, per)
    codes = _unrows(codes, w.shape, axis)
    values = _lookup(lut, codes, w.shape, axis)
    return EncodedWeight(values, scale, fmt.encoding, pack_bits(codes, fmt.bits), lut, axis)


def _normalise_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for a {ndim}-d weight")
    return axis % ndim


def _check_inputs(inputs: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(inputs, np.float64)
    if x.ndim != 2 or x.shape[1] != k or x.shape[0] == 0:
        raise ValueError(f"calibration inputs must be (samples, {k}) to match the weight's "
                         f"channels flattened to (C, {k}), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("calibration inputs contain non-finite values")
    return x


def _rows(w: np.ndarray, axis: int) -> np.ndarray:
    """(C, K): row c holds channel c's elements in C order of the other axes."""
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def _unrows(rows: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """The inverse of _rows, as a C-contiguous array of `shape`."""
    moved = (shape[axis],) + shape[:axis] + shape[axis + 1:]
    return np.ascontiguousarray(np.moveaxis(rows.reshape(moved), 0, axis))


def _along(vector: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A per-channel vector shaped to broadcast along `axis` of an ndim-d tensor."""
    return vector.reshape([-1 if i == axis else 1 for i in range(ndim)])


def _grid(real: np.ndarray, scale: np.ndarray, qmax: int) -> np.ndarray:
    """Symmetric rounding of per-row reals onto the int grid of `scale`, clipped to +-qmax."""
    return np.clip(np.rint(real / scale[:, None]), -qmax, qmax)


def _scale_or_one(scale: np.ndarray) -> np.ndarray:
    """All-zero (or underflowing) channels get scale 1.0 and values 0, never 0 or NaN."""
    return np.where(scale > 0, scale, 1.0)


# ------------------------------------------------------------------ int b


def _coarsen(values: np.ndarray, scale: np.ndarray, floor: np.ndarray, qmax: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Rows of int values at `scale` re-rounded onto the grid of `floor` where that is coarser."""
    raise_ = floor > scale
    if not raise_.any():
        return values, scale
    new = np.where(raise_, floor, scale)
    coarse = _grid(values * scale[:, None], new, qmax).astype(values.dtype)
    return np.where(raise_[:, None], coarse, values), new


def _fit_int(rows: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 values in [-qmax, qmax] and scales, the clip ratio searched per row."""
    qmax = (1 << (bits - 1)) - 1
    absmax = np.abs(rows).max(axis=1)
    unit = rows / _scale_or_one(absmax)[:, None]  # every row in [-1, 1]: errors cannot overflow
    best_ratio, best_err = np.ones(len(rows)), np.full(len(rows), np.inf)
    for ratio in _CLIP_RATIOS if bits < 8 else (1.0,):  # a loop over ratios, not elements
        step = np.full(len(rows), ratio / qmax)
        err = ((_grid(unit, step, qmax) * step[:, None] - unit) ** 2).sum(axis=1)
        better = err < best_err  # strict: ties keep the larger ratio (less clipping)
        best_ratio[better], best_err[better] = ratio, err[better]
    values = _grid(unit, best_ratio / qmax, qmax).astype(np.int8)
    scale = best_ratio * absmax / qmax
    values[scale <= 0] = 0
    return values, _scale_or_one(scale)


# ------------------------------------------------------------------ ternary


def _fit_ternary(rows: np.ndarray, x: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dual learnable ternarization per row: codes (T+1), the (C, 4) LUT and the scales."""
    t, alpha, gamma = _ternary_weight_fit(rows)
    codes, lut, scale = _ternary_lut(t, alpha, gamma)
    if x is None:
        return codes, lut, scale
    # refit (alpha, gamma) on the outputs X(alpha*T + gamma) ~ X w_c, T kept from the weight fit
    xt = x.T
    alpha_o, gamma_o = _affine_fit(t @ xt, x.sum(axis=1)[None, :], rows @ xt)
    t_o, alpha_o = _orient(t, alpha_o)
    codes_o, lut_o, scale_o = _ternary_lut(t_o, alpha_o, gamma_o)

    def real(codes: np.ndarray, lut: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.take_along_axis(lut, codes.astype(np.intp), axis=1) * scale[:, None]

    # NOTE: rounding the LUT to int8 can undo a tiny output gain; such rows keep the weight fit
    use = (_output_sse(real(codes_o, lut_o, scale_o), rows, xt)
           <= _output_sse(real(codes, lut, scale), rows, xt))
    return (np.where(use[:, None], codes_o, codes), np.where(use[:, None], lut_o, lut),
            np.where(use, scale_o, scale))


def _ternary_weight_fit(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T in {-1, 0, 1}, alpha >= 0, gamma per row minimising ||alpha*T + gamma - w||, by
    alternating from two starts: TWN around the row mean (the shift TernaryLLM learns) and plain
    TWN (gamma = 0); each row keeps the better, so the fit is never worse than TWN."""
    n = len(rows)
    both = np.concatenate([rows, rows])
    centre = np.concatenate([rows.mean(axis=1), np.zeros(n)])
    dev = both - centre[:, None]
    t = np.sign(dev) * (np.abs(dev) > 0.7 * np.abs(dev).mean(axis=1, keepdims=True))
    ones = np.ones((1, rows.shape[1]))
    for _ in range(_TERNARY_ITERATIONS):  # each half-step can only lower the error
        alpha, gamma = _affine_fit(t, ones, both)
        t, alpha = _orient(t, alpha)
        dev = both - gamma[:, None]
        nearest = np.sign(dev) * (np.abs(dev) > alpha[:, None] / 2)
        if np.array_equal(nearest, t):
            break
        t = nearest
    alpha, gamma = _affine_fit(t, ones, both)
    t, alpha = _orient(t, alpha)
    err = ((alpha[:, None] * t + gamma[:, None] - both) ** 2).sum(axis=1)
    pick = np.where(err[n:] < err[:n], np.arange(n) + n, np.arange(n))
    return t[pick], alpha[pick], gamma[pick]


def _affine_fit(u: np.ndarray, v: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row least squares y ~ a*u + g*v (v broadcasts). A relative ridge of 1e-12 keeps
    degenerate rows (u = 0, or u parallel to v) finite with the minimum-norm solution."""
    uu, uv, vv = (u * u).sum(axis=1), (u * v).sum(axis=1), (v * v).sum(axis=1)
    uy, vy = (u * y).sum(axis=1), (v * y).sum(axis=1)
    ridge = 1e-12 * (uu + vv) + np.finfo(np.float64).tiny
    uu, vv = uu + ridge, vv + ridge
    det = uu * vv - uv * uv
    return (vv * uy - uv * vy) / det, (uu * vy - uv * uy) / det


def _output_sse(real: np.ndarray, rows: np.ndarray, xt: np.ndarray) -> np.ndarray:
    """Per row, the squared error that `real` instead of `rows` makes on the outputs rows @ xt."""
    return (((real - rows) @ xt) ** 2).sum(axis=1)


def _orient(t: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha*T with alpha >= 0 (flip T where the fit made alpha negative)."""
    sign = np.where(alpha < 0, -1.0, 1.0)
    return t * sign[:, None], alpha * sign


def _ternary_lut(t: np.ndarray, alpha: np.ndarray, gamma: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = _scale_or_one((alpha + np.abs(gamma)) / 127)
    levels = np.stack([gamma - alpha, gamma, gamma + alpha, np.zeros_like(gamma)], axis=1)
    lut = _grid(levels, scale, 127).astype(np.int8)  # |gamma +- alpha| <= 127*scale: no clip
    return (t + 1).astype(np.uint8), lut, scale


# ------------------------------------------------------------------ palette


def _fit_palette(rows: np.ndarray, bits: int, groups: int, x: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group of rows: k-means codes, the (G, 2^b) int8 LUT, and the group's scale per row."""
    channels = len(rows)
    if not _divides(groups, channels):
        raise ValueError(f"palette{bits}:g{groups}: {channels} channels do not split into "
                         f"{groups} equal groups (C % G must be 0)")
    per = channels // groups
    importance, xt = None, None if x is None else x.T
    if x is not None:  # eDKM-like: a weight matters as much as its input column's energy
        energy = (x * x).mean(axis=0)
        if energy.max() > 0:
            importance = np.tile(np.maximum(energy, 1e-6 * energy.max()), per)
    codes = np.empty(rows.shape, np.uint8)
    lut = np.zeros((groups, 1 << bits), np.int8)
    scale = np.empty(channels)
    for g in range(groups):  # one LUT per group; the fit within a group is vectorised
        part = rows[g * per:(g + 1) * per]
        code, table, step = _palette_group(part, 1 << bits, None)
        if importance is not None:
            # NOTE: the importance ignores cross terms between input columns, so it keeps the
            # weighted fit only where that really lowers the group's error on the outputs
            alt = _palette_group(part, 1 << bits, importance)
            if (_output_sse(alt[1][alt[0]] * alt[2], part, xt).sum()
                    < _output_sse(table[code] * step, part, xt).sum()):
                code, table, step = alt
        codes[g * per:(g + 1) * per] = code
        lut[g, :table.size] = table
        scale[g * per:(g + 1) * per] = step
    return codes, lut, scale


def _palette_group(part: np.ndarray, k: int, weight: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray, float]:
    """One group's codes (part's shape), its ascending int8 table (<= k entries) and scale."""
    centroids = _kmeans_1d(part.ravel(), weight, k)
    step = _scale_or_one(np.abs(centroids).max(keepdims=True) / 127)
    table = np.unique(_grid(centroids[None], step, 127))  # ascending, duplicates merged
    # assign each weight to the nearest *rounded* centroid: never worse than the float codes
    code = np.searchsorted((table[:-1] + table[1:]) / 2, part / step[0]).astype(np.uint8)
    return code, table.astype(np.int8), float(step[0])


def _kmeans_1d(values: np.ndarray, weight: np.ndarray | None, k: int) -> np.ndarray:
    """At most k ascending centroids of 1-D (weighted) data.

    LBG: start from the mean; at level l = 1, 2, ..., log2(k) split clusters at their centroid
    (the largest squared error first, until 2^l centroids or nothing is left to split), then run
    Lloyd. Splitting and Lloyd steps never raise the error, and the k centroids start from the
    k/2 ones, so the error never grows with bits. Sorted data and cumulative sums make a Lloyd
    step O(k log n).
    """
    order = np.argsort(values, kind="stable")
    xs = values[order]
    distinct = np.unique(xs)
    if distinct.size <= k:
        return distinct  # every distinct weight gets its own centroid
    ws = np.ones_like(xs) if weight is None else weight[order]
    cum = [np.concatenate([[0.0], np.cumsum(a)]) for a in (ws, ws * xs, ws * xs * xs)]

    def means(edges: np.ndarray) -> np.ndarray:
        """Weighted means of the non-empty segments xs[edges[i]:edges[i+1]]."""
        mass = cum[0][edges[1:]] - cum[0][edges[:-1]]
        keep = edges[1:] > edges[:-1]
        return (cum[1][edges[1:]] - cum[1][edges[:-1]])[keep] / mass[keep]

    def lloyd(centroids: np.ndarray) -> np.ndarray:
        for _ in range(_LLOYD_ITERATIONS):
            cuts = np.searchsorted(xs, (centroids[:-1] + centroids[1:]) / 2, side="right")
            updated = means(np.concatenate([[0], cuts, [xs.size]]))
            if np.array_equal(updated, centroids):
                break
            centroids = updated
        return centroids

    centroids = means(np.array([0, xs.size]))
    for level in range(1, k.bit_length()):
        while centroids.size < 1 << level:
            cuts = np.searchsorted(xs, (centroids[:-1] + centroids[1:]) / 2, side="right")
            edges = np.concatenate([[0], cuts, [xs.size]])
            lo, hi = edges[:-1], edges[1:]
            splittable = xs[np.maximum(hi - 1, lo)] > xs[lo]
            if not splittable.any():
                break
            sse = (cum[2][hi] - cum[2][lo]) - (cum[1][hi] - cum[1][lo]) ** 2 / np.maximum(
                cum[0][hi] - cum[0][lo], np.finfo(np.float64).tiny)
            sse[~splittable] = -np.inf
            chosen = np.argsort(-sse, kind="stable")[: min((1 << level) - centroids.size,
                                                           int(splittable.sum()))]
            middle = np.clip(np.searchsorted(xs, centroids[chosen], side="right"),
                             lo[chosen], hi[chosen])
            before = centroids.size
            centroids = lloyd(means(np.unique(np.concatenate([edges, middle]))))
            if centroids.size <= before:
                break
    return centroids
