"""Compute cycles of a GEMM on a systolic MAC array, exactly as SCALE-Sim 3.0.0 counts them.

A conv is an im2col GEMM: M output pixels, K = window size (kh * kw * channels per group) and
N filters. Each dataflow keeps one operand in the array and streams another (Samajdar et al.,
"A Systematic Methodology for Characterizing Scalability of DNN Accelerators using SCALE-Sim",
ISPASS 2020):

    dataflow   rows hold (S_R)   columns hold (S_C)   streamed (T)   fill
    ws         K                 N                    M              2R (weights, then skew)
    os         M                 N                    K              R
    is         K                 M                    N              2R (inputs, then skew)

The operand is folded over the R x C array, ceil(S_R / R) * ceil(S_C / C) times; each fold takes
fill + C + T - 2 cycles, and the last fold's final drain cycle overlaps (the -1). This matches
SCALE-Sim's reported compute cycles exactly on ResNet-18's convs and BERT-base's GEMMs
(bench/scalesim_ref.py derives it from SCALE-Sim's source and checks it on its runs;
tests/simulator compares with the cached SCALE-Sim results in bench/scalesim/).
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
    fill = rows if dataflow == "os" else 2 * rows
    return folds * (fill + cols + t - 2) - 1


def utilization(m: int, k: int, n: int, rows: int, cols: int, cycles: int) -> float:
    """MACs done over MACs the array could have done in `cycles`."""
    return m * k * n / (rows * cols * cycles) if cycles else 0.0
