"""Tiling an op's working set to the on-chip SRAM, and the DRAM traffic that costs.

Activations stay in SRAM from op to op while an op's activation operands and result fit beside
a double-buffered tile of its constants (`resident`); constants (weights, tables) stream from
DRAM once whatever the SRAM holds. An op whose activations do not fit goes through DRAM:

- a GEMM ((M x K) @ (K x N), per group) is blocked into Mt x Nt output tiles, the reduction in
  Kt chunks, so that its double-buffered operand tiles (2 * (Mt*Kt + Kt*Nt) elements) and its
  int32 accumulator tile (Mt * Nt) fit; each right-hand (weight) byte is then read once per row
  block, ceil(M / Mt) times, each left-hand (input) byte once per column block, ceil(N / Nt),
  and the result written once. The blocks are searched over a fixed set (the powers of two
  below each extent and the extent itself) and the least traffic that fits is taken, so more
  SRAM never costs more DRAM traffic; with no block fitting, 1 x 1 x 1 is charged.
- any other op streams: its operands read and its result written once.

SRAM traffic is what the engine reads from and writes to SRAM: each operand byte as often as it
is (re)fetched, the result once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACC_BYTES = 4  # an int32 accumulator


@dataclass(frozen=True)
class Traffic:
    dram_bytes: int
    sram_bytes: int
    tile: tuple[int, int, int] | None = None  # (Mt, Kt, Nt) of a GEMM that had to be blocked

    def describe(self) -> str:
        """"tile MtxKtxNt" for a blocked GEMM, else ""."""
        return "tile {}x{}x{}".format(*self.tile) if self.tile else ""


def resident(activation_bytes: int, constant_bytes: int, sram_bytes: int) -> bool:
    """Whether the activations fit in SRAM beside a double-buffered constant stream (which takes
    all the constants if they are small, at most half the SRAM)."""
    return activation_bytes <= sram_bytes - min(constant_bytes, sram_bytes // 2)


def stream_traffic(constant_bytes: int, activation_bytes: int, sram_bytes: int) -> Traffic:
    """Traffic of an op that is not a GEMM (see the module docstring)."""
    spill = 0 if resident(activation_bytes, constant_bytes, sram_bytes) else activation_bytes
    return Traffic(constant_bytes + spill, constant_bytes + activation_bytes)


def _candidates(extent: int) -> np.ndarray:
    powers = [1 << i for i in range(max(extent - 1, 0).bit_length()) if 1 << i < extent]
    return np.array(powers + [extent], dtype=np.int64)


def gemm_traffic(m: int, k: int, n: int, lhs_bytes: int, rhs_bytes: int, out_bytes: int,
                 rhs_constant: bool, lhs_element: float, rhs_element: float,
                 sram_bytes: int) -> Traffic:
    """Traffic of a GEMM (M x K) @ (K x N), or of each group of a grouped one: `lhs_bytes` and
    `rhs_bytes` are the operands as they sit in memory, over all groups (a conv's input image,
    not its im2col rows; weights as stored), the element sizes what one element of each takes
    in a tile."""
    activations = lhs_bytes + out_bytes + (0 if rhs_constant else rhs_bytes)
    if resident(activations, rhs_bytes if rhs_constant else 0, sram_bytes):
        dram = rhs_bytes if rhs_constant else 0
        return Traffic(dram, lhs_bytes + rhs_bytes + out_bytes)
    mt, kt, nt = np.meshgrid(_candidates(m), _candidates(k), _candidates(n), indexing="ij")
    footprint = 2 * (mt * kt * lhs_element + kt * nt * rhs_element) + mt * nt * ACC_BYTES
    reads = (rhs_bytes * -(-m // mt) + lhs_bytes * -(-n // nt)).astype(np.float64)
    reads = np.where(footprint <= sram_bytes, reads, np.inf)
    # the least traffic; among equals the largest tiles (fewest blocks), then the first
    best = np.lexsort(((-mt * nt * kt).ravel(), reads.ravel()))[0]
    if math.isinf(reads.ravel()[best]):
        tile = (1, 1, 1)
        fetched = rhs_bytes * m + lhs_bytes * n
    else:
        tile = (int(mt.ravel()[best]), int(kt.ravel()[best]), int(nt.ravel()[best]))
        fetched = int(reads.ravel()[best])
    return Traffic(fetched + out_bytes, fetched + out_bytes, tile)
