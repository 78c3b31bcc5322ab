"""Compute cycles of a GEMM on a systolic MAC array, the way SCALE-Sim counts them.

A conv is an im2col GEMM: M output pixels, K = window size (kh * kw * channels per group) and
N filters. Each dataflow keeps one operand in the array and streams another (Samajdar et al.,
"A Systematic Methodology for Characterizing Scalability of DNN Accelerators using SCALE-Sim",
ISPASS 2020, section III):

    dataflow   rows hold (S_R)   columns hold (S_C)   streamed for T cycles
    ws         K                 N                    M      (weights stay)
    os         M                 N                    K      (outputs stay)
    is         K                 M                    N      (inputs stay)

The operand is folded over the R x C array, ceil(S_R / R) * ceil(S_C / C) times, and each fold
takes 2R + C + T - 2 cycles: filling R rows, streaming T vectors, draining through R + C - 2 PEs.
"""

from __future__ import annotations

import math

MAPPING = {"ws": "KNM", "os": "MNK", "is": "KMN"}


def gemm_cycles(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    """Compute cycles of an (M x K) @ (K x N) GEMM on a rows x cols array with `dataflow`."""
    if dataflow not in MAPPING:
        raise ValueError(f"dataflow must be one of {', '.join(MAPPING)}, got {dataflow!r}")
    dims = {"M": m, "K": k, "N": n}
    s_r, s_c, t = (dims[d] for d in MAPPING[dataflow])
    folds = math.ceil(s_r / rows) * math.ceil(s_c / cols)
    return folds * (2 * rows + cols + t - 2)


def utilization(m: int, k: int, n: int, rows: int, cols: int, cycles: int) -> float:
    """MACs done over MACs the array could have done in `cycles`."""
    return m * k * n / (rows * cols * cycles) if cycles else 0.0
