"""SCALE-Sim as the reference for npuc's systolic-array compute cycles (issue 5, bench).

Runs the public cycle-accurate simulator SCALE-Sim (PyPI `scalesim`, pinned below) on ResNet-18's
20 conv layers and BERT-base's GEMMs, caches its per-layer cycles in `bench/scalesim/<config>.csv`,
and checks them against `scalesim_formula`, the closed form that SCALE-Sim's cycle count reduces
to. npuc's own cost model (simulator/) must reproduce that formula.

    /work/venv/bin/python -m bench.scalesim_ref            # cached configs are not rerun
    /work/venv/bin/python -m bench.scalesim_ref --force    # rerun SCALE-Sim (minutes)

**Its own venv.** scalesim 3.0.0 fails with numpy >= 2.3, and it is an optional bench dependency
that neither the package nor the tests need, so `ensure_venv()` makes `bench/.scalesim-venv` with
`scalesim==3.0.0` and `numpy<2.3`, and SCALE-Sim only ever runs there, in a subprocess.

**How it is run.** `python -m scalesim.scale -c CFG -t TOPO -p OUT [-i gemm]` is its CLI, but in
3.0.0 that CLI always saves every SRAM/DRAM trace (its `-s N` flag is parsed and then ignored),
gigabytes for a ResNet-18. So the subprocess runs the CLI's own three lines with traces off:
`scalesim.scale_sim.scalesim(save_disk_space=True, verbose=False, config=, topology=, layout=,
input_type_gemm=).run_scale(top_path=OUT)`, and this module reads `OUT/<run_name>/
COMPUTE_REPORT.csv`. The config runs in `InterfaceBandwidth = CALC` mode, where SCALE-Sim's read
buffers are stall free by construction (`read_buffer_estimate_bw.service_reads` returns
`incoming_cycles + hit_latency`): memory never changes the compute cycles. SRAM sizes do not
matter in that mode; they are kept moderate (huge ones make its final prefetch pad the trace to
the SRAM size and take minutes). The write buffer could still stall; every run checks that its
stall column is 0.

**Which column is "compute cycles".** COMPUTE_REPORT.csv has `Total Cycles (incl. prefetch)`
(from the first DRAM read to the last DRAM write: memory, not the array), `Total Cycles`,
`Stall Cycles`, `Overall Util %` (MACs / (R*C * Total Cycles)), `Mapping Efficiency %` and
`Compute Util %`. `Total Cycles` is what SCALE-Sim prints as "Compute cycles" on stdout
(`simulator.py`: `comp_cycles = comp_items[1]`); it is `double_buffered_scratchpad.total_cycles
= max(ofmap_serviced_cycles)`, the cycle at which the last row of the OFMAP demand matrix is
served, and it includes stalls (0 here). That is `compute_cycles` below.

**Convs: no padding, a ceil output size.** SCALE-Sim's output size is
`ofmap = ceil((ifmap - filt + stride) / stride)` (`topology_utils.topo_calc_hyperparams`), i.e.
`ceil((H - R) / S) + 1`, while PyTorch's is `floor((H + 2P - R) / S) + 1`. Feeding the padded
size H + 2P gives one more output row/column whenever (H + 2P - R) is not a multiple of S (the
7x7/2 stem: 113 for 112; the 3x3/2 and 1x1/2 ResNet convs: 29 for 28). So SCALE-Sim gets the
input extent the conv actually reads, `H' = (E - 1) * S + R` with E PyTorch's output size: then
`ceil((E - 1) * S / S) + 1 = E` exactly. The CSV conv row has one stride column (SCALE-Sim
copies it to the width), so stride_h must equal stride_w; a layer whose name contains "DP" is
taken for a depthwise conv and split per channel, so such names are refused.

**GEMMs.** SCALE-Sim's GEMM topology format (`-i gemm`, `input_type_gemm=True`) has rows
`name, M, N, K,` and `topology_utils.load_arrays_gemm` turns each into the conv
`ifmap M x K, filter 1 x K, 1 channel, N filters, stride 1`: ofmap M x 1, window K, N filters,
which is exactly the (M x K) @ (K x N) GEMM. BERT's GEMMs use that format (a separate run).

**Operand matrices.** For every layer SCALE-Sim builds ifmap M x K (M = output pixels Eh*Ew,
K = filter_h * filter_w * channels), filter K x N (N = filters) and ofmap M x N
(`operand_matrix.set_params`), then per dataflow maps two dimensions onto the R x C array
(S_R x S_C) and streams the third (T):

    dataflow   S_R (rows)   S_C (cols)   T (streamed)   per-fold OFMAP demand rows
    ws         K            N            M              (2R - 1) + T + (C - 1)
    os         M            N            K              (T - 1) + R + (C - 1)
    is         K            M            N              (2R - 1) + T + (C - 1)

There are ceil(S_R / R) * ceil(S_C / C) folds, run back to back with no overlap; the demand
matrices of all folds are concatenated, the memory model serves one row per cycle from cycle 0,
and `total_cycles` is the index of the last row. Hence the closed form (`scalesim_formula`):

    ws: ceil(K/R) * ceil(N/C) * (2R + C + M - 2) - 1
    os: ceil(M/R) * ceil(N/C) * ( R + C + K - 2) - 1
    is: ceil(K/R) * ceil(M/C) * (2R + C + N - 2) - 1

Source (scalesim 3.0.0, site-packages/scalesim/):
- `compute/systolic_compute_ws.py`, `set_params`: `Sr = ifmap_op_mat.shape[1]` (K),
  `Sc = filter_op_mat.shape[1]` (N), `T = ifmap_op_mat.shape[0]` (M), `row_fold =
  ceil(Sr / arr_row)`, `col_fold = ceil(Sc / arr_col)`. `create_ofmap_demand_mat`, for each of
  the col_fold x row_fold folds: the T x arr_col output rows after `inter_fold_gap_prefix =
  2 * arr_row - 1` empty rows, then `skew_matrix`, which makes `rows + cols - 1` rows: per fold
  2R - 1 + M + C - 1. (The IFMAP demand, prefix `arr_row` + T + suffix `arr_col - 1` skewed by
  arr_row - 1, and the filter demand, arr_row rows + suffix `arr_row + arr_col + T - 2`, have
  the same length.)
- `compute/systolic_compute_os.py`, `set_params`: `Sr = ifmap_op_mat.shape[0]` (M), `Sc =
  filter_op_mat.shape[1]` (N), `T = ifmap_op_mat.shape[1]` (K); `create_ofmap_demand_mat`:
  `inter_fold_gap_prefix = T - 1` empty rows, then the arr_row x arr_col output block, then
  the skew (+ arr_col - 1): per fold K - 1 + R + C - 1.
- `compute/systolic_compute_is.py`, `set_params`: `Sr = ifmap_op_mat.shape[1]` (K), `Sc =
  ifmap_op_mat.shape[0]` (M), `T = filter_op_mat.shape[1]` (N); `create_ofmap_demand_mat` is
  shaped as in ws: per fold 2R - 1 + N + C - 1.
- `memory/double_buffered_scratchpad_mem.py`, `service_memory_requests`: one loop over the
  OFMAP demand rows, row i requested at `cycle_arr = i + self.stall_cycles`, and
  `self.total_cycles = int(max(ofmap_serviced_cycles))`: the last row's index, hence "- 1".
  `single_layer_sim.calc_report_data`: `self.total_cycles =
  self.memory_system.get_total_compute_cycles()`, the report's `Total Cycles`.
Note the asymmetry: os has one R per fold, ws and is have 2R (R cycles to preload the
stationary operand, then R - 1 of skew before the first result leaves).

**Checked.** Exact (0 cycles of difference, 0 stalls) on all 28 layers here for ws 32x32,
os 32x32, is 32x32 and ws 128x128, and `--random N` runs SCALE-Sim on N random small GEMMs and
strided, padded convs on non-square arrays (R != C, so R and C cannot be confused) in each
dataflow and checks the formula on each (exact on all 40 of `--random 40 --seed 3` and all 200
of `--random 200 --seed 11`).

**Wall time** (`wall_s`, per network and configuration, in the CSVs and meta.json) is measured
inside the venv's interpreter around SCALE-Sim's own `scalesim(...)` + `run_scale()`, without
the interpreter's start-up; SCALE-Sim is single-threaded, so it is close to its CPU time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".scalesim-venv"
CACHE = BENCH / "scalesim"
SCALESIM_VERSION = "3.0.0"
REQUIREMENTS = (f"scalesim=={SCALESIM_VERSION}", "numpy<2.3")
DATAFLOWS = ("ws", "os", "is")
# (rows, cols, dataflow): the three configurations issue 5 compares, then input stationary
CONFIGS: tuple[tuple[int, int, str], ...] = ((32, 32, "ws"), (32, 32, "os"), (128, 128, "ws"))
EXTRA_CONFIGS: tuple[tuple[int, int, str], ...] = ((32, 32, "is"),)
SRAM_KB = 2048  # per operand; irrelevant to compute cycles in CALC mode (see the docstring)


# --------------------------------------------------------------------------------------------
# layers


@dataclass(frozen=True)
class Layer:
    """A conv in PyTorch's terms (NCHW input, padding, floor output size), or a GEMM.

    A GEMM (M x K) @ (K x N) is `Layer.gemm(name, m, k, n)`: kind "gemm", with M in ifmap_h,
    K in channels and N in num_filters.
    """

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filters: int
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    kind: str = "conv"

    @classmethod
    def gemm(cls, name: str, m: int, k: int, n: int) -> Layer:
        return cls(name, m, 1, 1, 1, k, n, kind="gemm")

    @property
    def out_h(self) -> int:
        """PyTorch's output height: floor((H + 2P - R) / S) + 1."""
        return (self.ifmap_h + 2 * self.pad_h - self.filter_h) // self.stride_h + 1

    @property
    def out_w(self) -> int:
        return (self.ifmap_w + 2 * self.pad_w - self.filter_w) // self.stride_w + 1

    @property
    def m(self) -> int:
        """GEMM rows: output pixels (Eh * Ew) of a conv, M of a GEMM."""
        return self.out_h * self.out_w

    @property
    def k(self) -> int:
        """GEMM depth: the filter window filter_h * filter_w * channels."""
        return self.filter_h * self.filter_w * self.channels

    @property
    def n(self) -> int:
        """GEMM columns: the number of filters."""
        return self.num_filters

    @property
    def macs(self) -> int:
        return self.m * self.k * self.n

    def scalesim_ifmap(self) -> tuple[int, int]:
        """The unpadded input size for which SCALE-Sim's ceil((H - R + S) / S) output equals
        PyTorch's output size: the extent the conv reads, (E - 1) * S + R."""
        return (
            (self.out_h - 1) * self.stride_h + self.filter_h,
            (self.out_w - 1) * self.stride_w + self.filter_w,
        )

    def scalesim_row(self) -> list[str | int]:
        """This layer's row in SCALE-Sim's topology CSV (its conv or its GEMM format)."""
        if "," in self.name or "DP" in self.name:
            raise ValueError(f"{self.name!r}: SCALE-Sim splits on ',' and reads 'DP' as depthwise")
        if self.kind == "gemm":
            return [self.name, self.m, self.n, self.k]  # its GEMM format: name, M, N, K
        if self.stride_h != self.stride_w:
            raise ValueError(f"{self.name}: SCALE-Sim's conv CSV has a single stride")
        h, w = self.scalesim_ifmap()
        row = [self.name, h, w, self.filter_h, self.filter_w, self.channels, self.num_filters]
        return [*row, self.stride_h]


def _scalesim_out(h: int, r: int, s: int) -> int:
    """SCALE-Sim's output size (topology_utils.topo_calc_hyperparams)."""
    return int(math.ceil((h - r + s) / s))


def resnet18_convs(size: int = 224) -> list[Layer]:
    """torchvision ResNet-18's 20 convs at size x size: the 7x7/2 stem, 16 3x3 convs in four
    stages (the first conv of stages 2-4 with stride 2) and three 1x1/2 downsample convs."""
    layers = [Layer("conv1", size, size, 7, 7, 3, 64, 2, 2, 3, 3)]
    h = (size + 2 * 3 - 7) // 2 + 1
    h = (h + 2 * 1 - 3) // 2 + 1  # the 3x3/2 max pool
    c_in = 64
    for stage, c in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            s = 2 if stage > 1 and block == 0 else 1
            p = f"layer{stage}.{block}"
            layers.append(Layer(f"{p}.conv1", h, h, 3, 3, c_in, c, s, s, 1, 1))
            h_out = (h + 2 - 3) // s + 1
            layers.append(Layer(f"{p}.conv2", h_out, h_out, 3, 3, c, c, 1, 1, 1, 1))
            if s != 1 or c_in != c:
                layers.append(Layer(f"{p}.downsample", h, h, 1, 1, c_in, c, s, s, 0, 0))
            h, c_in = h_out, c
    return layers


def bert_base_gemms(
    seq: int = 128, hidden: int = 768, heads: int = 12, ffn: int = 3072
) -> list[Layer]:
    """The GEMMs of one BERT-base encoder layer for one sequence; the per-head attention GEMMs
    (scores Q K^T and context P V) are one head's GEMM each."""
    d = hidden // heads
    return [
        Layer.gemm("attn.query", seq, hidden, hidden),
        Layer.gemm("attn.key", seq, hidden, hidden),
        Layer.gemm("attn.value", seq, hidden, hidden),
        Layer.gemm("attn.scores_head", seq, d, seq),
        Layer.gemm("attn.context_head", seq, seq, d),
        Layer.gemm("attn.output", seq, hidden, hidden),
        Layer.gemm("ffn.intermediate", seq, hidden, ffn),
        Layer.gemm("ffn.output", seq, ffn, hidden),
    ]


NETWORKS = {"resnet18": resnet18_convs, "bert_base": bert_base_gemms}


# --------------------------------------------------------------------------------------------
# the closed form


def scalesim_formula(m: int, k: int, n: int, rows: int, cols: int, dataflow: str) -> int:
    """SCALE-Sim 3.0.0's compute cycles ("Total Cycles", stall free) of an (M x K) @ (K x N)
    GEMM on a rows x cols array; for a conv M = Eh * Ew, K = filter_h * filter_w * channels,
    N = filters. See the module docstring for the derivation and the source lines."""
    r, c = rows, cols
    if dataflow == "ws":
        return math.ceil(k / r) * math.ceil(n / c) * (2 * r + c + m - 2) - 1
    if dataflow == "os":
        return math.ceil(m / r) * math.ceil(n / c) * (r + c + k - 2) - 1
    if dataflow == "is":
        return math.ceil(k / r) * math.ceil(m / c) * (2 * r + c + n - 2) - 1
    raise ValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, got {dataflow!r}")


# --------------------------------------------------------------------------------------------
# the venv and the runs


def _venv_python() -> Path:
    return VENV / "bin" / "python"


def _venv_ok() -> bool:
    py = _venv_python()
    if not py.exists():
        return False
    check = (
        "import importlib.metadata as m, numpy, scalesim.scale_sim;"
        f"assert m.version('scalesim') == {SCALESIM_VERSION!r};"
        "assert tuple(map(int, numpy.__version__.split('.')[:2])) < (2, 3)"
    )
    return subprocess.run([str(py), "-c", check], capture_output=True).returncode == 0


def ensure_venv() -> Path:
    """Create bench/.scalesim-venv with scalesim==3.0.0 and numpy<2.3 unless it is already
    there and right; return its python."""
    if _venv_ok():
        return _venv_python()
    if VENV.exists():
        shutil.rmtree(VENV)
    subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(_venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, *REQUIREMENTS], check=True)
    if not _venv_ok():
        raise RuntimeError(f"{VENV}: scalesim {SCALESIM_VERSION} with numpy<2.3 did not install")
    return _venv_python()


def versions() -> dict[str, str]:
    """Versions of python, scalesim and numpy inside the venv."""
    code = (
        "import importlib.metadata as m, json, platform;"
        "print(json.dumps({'python': platform.python_version(),"
        " 'scalesim': m.version('scalesim'), 'numpy': m.version('numpy')}))"
    )
    out = subprocess.run([str(ensure_venv()), "-c", code], capture_output=True, text=True)
    return json.loads(out.stdout)


def config_name(rows: int, cols: int, dataflow: str) -> str:
    return f"{dataflow}_{rows}x{cols}"


def scalesim_config(rows: int, cols: int, dataflow: str, sram_kb: int = SRAM_KB) -> str:
    """A SCALE-Sim 3.0.0 .cfg: every section and key its read_conf_file requires."""
    if dataflow not in DATAFLOWS:
        raise ValueError(f"dataflow must be one of {', '.join(DATAFLOWS)}, got {dataflow!r}")
    return f"""\
[general]
run_name = run

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {sram_kb}
FilterSramSzkB = {sram_kb}
OfmapSramSzkB = {sram_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Bandwidth = 10
Dataflow = {dataflow}
MemoryBanks = 1
ReadRequestBuffer = 512
WriteRequestBuffer = 512

[layout]
IfmapCustomLayout = False
FilterCustomLayout = False
IfmapSRAMBankBandwidth = 10
IfmapSRAMBankNum = 10
IfmapSRAMBankPort = 2
FilterSRAMBankBandwidth = 10
FilterSRAMBankNum = 10
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false

[run_presets]
InterfaceBandwidth = CALC
UseRamulatorTrace = False
"""


# The CLI's own steps (scalesim/scale.py) with traces off, for each job: (cfg, topology, out,
# gemm); prints each job's wall time in seconds.
_DRIVER = """\
import contextlib, io, json, sys, time
from scalesim.scale_sim import scalesim
for cfg, topo, out, gemm in json.load(open(sys.argv[1])):
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo,
                     layout="layout.csv", input_type_gemm=gemm)
        s.run_scale(top_path=out)
    print(time.perf_counter() - t0, flush=True)
"""

REPORT_COLUMNS = (
    "total_cycles_incl_prefetch",
    "compute_cycles",
    "stall_cycles",
    "overall_util_pct",
    "mapping_eff_pct",
    "compute_util_pct",
)

_CONV_HEADER = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter,"
    " Strides,"
)


def _run_jobs(jobs: list[tuple[list[Layer], int, int, str]]) -> list[tuple[list[dict], float]]:
    """Run SCALE-Sim once per job (layers, rows, cols, dataflow), all in one subprocess in the
    venv; per job, the COMPUTE_REPORT rows as dicts and the job's wall time in seconds (from
    reading the inputs to writing the reports, without the interpreter's start-up)."""
    py = ensure_venv()
    with tempfile.TemporaryDirectory(prefix="scalesim-") as tmp:
        d = Path(tmp)
        (d / "layout.csv").write_text("Layer name,\n")  # a required file; custom layouts are off
        (d / "driver.py").write_text(_DRIVER)
        spec = []
        for i, (layers, rows, cols, dataflow) in enumerate(jobs):
            kinds = {layer.kind for layer in layers}
            if len(kinds) != 1:
                raise ValueError("one SCALE-Sim run takes only convs or only GEMMs")
            gemm = kinds == {"gemm"}
            (d / f"{i}.cfg").write_text(scalesim_config(rows, cols, dataflow))
            lines = ["Layer, M, N, K," if gemm else _CONV_HEADER]
            lines += [", ".join(map(str, x.scalesim_row())) + "," for x in layers]
            (d / f"{i}.csv").write_text("\n".join(lines) + "\n")
            spec.append((f"{i}.cfg", f"{i}.csv", f"out{i}", gemm))
        (d / "jobs.json").write_text(json.dumps(spec))
        proc = subprocess.run(
            [str(py), "driver.py", "jobs.json"], cwd=d, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(f"SCALE-Sim failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        walls = [float(x) for x in proc.stdout.split()]
        out = []
        for i, (layers, *_) in enumerate(jobs):
            report = (d / f"out{i}" / "run" / "COMPUTE_REPORT.csv").read_text().splitlines()[1:]
            recs = []
            for line in report:
                vals = [x.strip() for x in line.split(",")][1:7]
                recs.append(
                    {
                        key: int(v) if "cycles" in key else float(v)
                        for key, v in zip(REPORT_COLUMNS, vals, strict=True)
                    }
                )
            if len(recs) != len(layers):
                raise RuntimeError(f"SCALE-Sim reported {len(recs)} layers for {len(layers)}")
            out.append((recs, walls[i]))
    return out


def run_scalesim(layers: list[Layer], rows: int, cols: int, dataflow: str) -> list[dict]:
    """Run SCALE-Sim on `layers` (all convs or all GEMMs) and return one dict per layer:
    name, m, k, n, compute_cycles (its "Total Cycles"), stall_cycles,
    total_cycles_incl_prefetch, utilization (MACs / (R*C*compute_cycles)), the report's
    percentages, and wall_s, the wall time of the whole SCALE-Sim run (same for every row)."""
    ((recs, wall),) = _run_jobs([(layers, rows, cols, dataflow)])
    results = []
    for layer, rep in zip(layers, recs, strict=True):
        rec: dict = {"name": layer.name, "m": layer.m, "k": layer.k, "n": layer.n, **rep}
        rec["utilization"] = layer.macs / (rows * cols * rec["compute_cycles"])
        rec["wall_s"] = wall
        results.append(rec)
    return results


def verify_random(count: int = 40, seed: int = 0) -> list[dict]:
    """Run SCALE-Sim on `count` random small layers, alternately a GEMM and a strided, padded
    conv, each on its own random non-square array (2..12 x 2..12) and dataflow, and return per
    layer the config, m, k, n, SCALE-Sim's compute and stall cycles and the formula's."""
    rng = random.Random(seed)
    jobs = []
    for i in range(count):
        rows, cols, df = rng.randint(2, 12), rng.randint(2, 12), rng.choice(DATAFLOWS)
        if i % 2 == 0:
            layer = Layer.gemm(f"g{i}", *(rng.randint(1, 60) for _ in range(3)))
        else:
            f, s, p = rng.randint(1, 5), rng.randint(1, 3), rng.randint(0, 2)
            h, w = rng.randint(f, 16), rng.randint(f, 16)
            layer = Layer(f"c{i}", h, w, f, f, rng.randint(1, 6), rng.randint(1, 24), s, s, p, p)
        jobs.append(([layer], rows, cols, df))
    out = []
    for ([layer], rows, cols, df), ([rep], _) in zip(jobs, _run_jobs(jobs), strict=True):
        out.append(
            {
                "config": config_name(rows, cols, df),
                "name": layer.name,
                "m": layer.m,
                "k": layer.k,
                "n": layer.n,
                "compute_cycles": rep["compute_cycles"],
                "stall_cycles": rep["stall_cycles"],
                "formula": scalesim_formula(layer.m, layer.k, layer.n, rows, cols, df),
            }
        )
    return out


# --------------------------------------------------------------------------------------------
# the cache and the table


CSV_FIELDS = ("network", "name", "m", "k", "n", *REPORT_COLUMNS, "utilization", "wall_s")
_INT_FIELDS = {"m", "k", "n", "total_cycles_incl_prefetch", "compute_cycles", "stall_cycles"}


def cache_path(rows: int, cols: int, dataflow: str) -> Path:
    return CACHE / f"{config_name(rows, cols, dataflow)}.csv"


def load_cached(rows: int, cols: int, dataflow: str) -> list[dict] | None:
    """SCALE-Sim's cached per-layer results for one configuration (network, name, m, k, n,
    compute_cycles, ..., wall_s per network run), or None when not cached."""
    path = cache_path(rows, cols, dataflow)
    if not path.exists():
        return None
    with path.open(newline="") as f:
        out = []
        for rec in csv.DictReader(f):
            for key in CSV_FIELDS[2:]:
                rec[key] = int(rec[key]) if key in _INT_FIELDS else float(rec[key])
            out.append(rec)
    return out


def _cache_matches(cached: list[dict] | None) -> bool:
    if cached is None:
        return False
    want = [(net, x.name, x.m, x.k, x.n) for net, make in NETWORKS.items() for x in make()]
    have = [(r["network"], r["name"], r["m"], r["k"], r["n"]) for r in cached]
    return want == have


def run_config(rows: int, cols: int, dataflow: str, force: bool = False) -> list[dict]:
    """SCALE-Sim's results for every network on one configuration, from the cache when it
    holds exactly these layers (unless `force`), else from fresh runs that are then cached."""
    cached = load_cached(rows, cols, dataflow)
    if not force and _cache_matches(cached):
        return cached  # type: ignore[return-value]
    out = []
    for net, make in NETWORKS.items():
        print(f"  SCALE-Sim {config_name(rows, cols, dataflow)} {net} ...", flush=True)
        for rec in run_scalesim(make(), rows, cols, dataflow):
            out.append({"network": net, **rec})
    CACHE.mkdir(exist_ok=True)
    with cache_path(rows, cols, dataflow).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, lineterminator="\n")
        w.writeheader()
        for rec in out:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in rec.items()})
    _record_run(rows, cols, dataflow, out)
    return out


def _record_run(rows: int, cols: int, dataflow: str, results: list[dict]) -> None:
    """Merge this configuration's run facts into bench/scalesim/meta.json."""
    path = CACHE / "meta.json"
    meta = json.loads(path.read_text()) if path.exists() else {}
    meta["install"] = "pip install " + " ".join(f"'{r}'" for r in REQUIREMENTS)
    meta["mode"] = f"InterfaceBandwidth CALC, {SRAM_KB} kB per SRAM, traces off"
    runs = meta.setdefault("runs", {})
    runs[config_name(rows, cols, dataflow)] = {
        "date": time.strftime("%Y-%m-%d"),
        "versions": versions(),
        "cores": os.cpu_count(),
        "wall_s": {r["network"]: round(r["wall_s"], 1) for r in results},
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    meta["runs"] = dict(sorted(runs.items()))
    path.write_text(json.dumps(meta, indent=2) + "\n")


def table(rows: int, cols: int, dataflow: str, results: list[dict]) -> tuple[str, bool]:
    """The comparison table of one configuration, and whether every layer matches exactly."""
    lines = [
        f"## {config_name(rows, cols, dataflow)}",
        f"{'network':<10} {'layer':<22} {'M':>6} {'K':>5} {'N':>5} {'SCALE-Sim':>10} "
        f"{'formula':>10} {'diff %':>7} {'stall':>5} {'util':>6}",
    ]
    exact = True
    for r in results:
        f = scalesim_formula(r["m"], r["k"], r["n"], rows, cols, dataflow)
        diff = 100.0 * (f - r["compute_cycles"]) / r["compute_cycles"]
        exact &= f == r["compute_cycles"]
        lines.append(
            f"{r['network']:<10} {r['name']:<22} {r['m']:>6} {r['k']:>5} {r['n']:>5} "
            f"{r['compute_cycles']:>10} {f:>10} {diff:>7.3f} {r['stall_cycles']:>5} "
            f"{r['utilization']:>6.1%}"
        )
    walls = {}
    for r in results:
        walls[r["network"]] = r["wall_s"]
    lines.append(
        "SCALE-Sim wall time: "
        + ", ".join(f"{net} {s:.1f} s" for net, s in walls.items())
        + f"; every layer {'matches the formula exactly' if exact else 'does NOT match'}"
    )
    return "\n".join(lines), exact


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true", help="rerun SCALE-Sim even when cached")
    p.add_argument("--no-is", action="store_true", help="skip the 32x32 input-stationary run")
    p.add_argument(
        "--only", default="", help="comma-separated configs to run, e.g. ws_32x32,os_32x32"
    )
    p.add_argument(
        "--random",
        type=int,
        default=0,
        metavar="N",
        help="only check the formula on N random small layers and non-square arrays",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random")
    args = p.parse_args(argv)
    if args.random:
        recs = verify_random(args.random, args.seed)
        bad = [r for r in recs if r["compute_cycles"] != r["formula"] or r["stall_cycles"]]
        for r in bad:
            print("MISMATCH", r)
        print(f"{len(recs) - len(bad)} of {len(recs)} random layers match the formula exactly")
        return 1 if bad else 0
    configs = list(CONFIGS) + ([] if args.no_is else list(EXTRA_CONFIGS))
    if args.only:
        wanted = set(args.only.split(","))
        configs = [c for c in configs if config_name(*c) in wanted]
    all_exact = True
    for cfg in configs:
        results = run_config(*cfg, force=args.force)
        text, exact = table(*cfg, results)
        all_exact &= exact
        print(text, end="\n\n", flush=True)
    return 0 if all_exact else 1


if __name__ == "__main__":
    raise SystemExit(main())
