"""The simulator: SCALE-Sim's fold formula on hand-computed cases, the cost model's monotonicity
and accounting properties, the memory plan's invariants, and every zoo model on every target."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import npuc
from npuc.simulator import simulate
from npuc.simulator.cost import op_cost, supports
from npuc.simulator.memory import plan_memory
from npuc.simulator.systolic import gemm_cycles
from npuc.simulator.tiling import ACC_BYTES, gemm_traffic, stream_traffic
from tests.models import ZOO

dims = st.integers(1, 300)
arrays = st.sampled_from([(8, 8), (32, 32), (16, 64), (128, 128)])
dataflows = st.sampled_from(["ws", "os", "is"])


def test_fold_formula_by_hand() -> None:
    # ws on 2x2: K=3 rows fold twice, N=2 columns once; each fold 2*2 + 2 + M(4) - 2 = 8 cycles,
    # and the last drain cycle overlaps: 2 * 8 - 1
    assert gemm_cycles(4, 3, 2, 2, 2, "ws") == 15
    # os: M=4 over 2 rows (2 folds), N=2 over 2 columns; T = K = 3: 2 * (2 + 2 + 3 - 2) - 1
    assert gemm_cycles(4, 3, 2, 2, 2, "os") == 9
    # is: K=3 over rows (2 folds), M=4 over columns (2 folds), T = N = 2: 4 * 6 - 1
    assert gemm_cycles(4, 3, 2, 2, 2, "is") == 23
    with pytest.raises(ValueError, match="dataflow"):
        gemm_cycles(1, 1, 1, 2, 2, "rs")


SCALESIM = Path(__file__).resolve().parents[2] / "bench" / "scalesim"


@pytest.mark.parametrize("csv_path", sorted(SCALESIM.glob("*.csv")), ids=lambda p: p.stem)
def test_matches_scalesim_runs(csv_path: Path) -> None:
    """Every layer SCALE-Sim 3.0.0 simulated (bench/scalesim_ref.py caches its results): npuc's
    compute cycles equal SCALE-Sim's."""
    flow, shape = csv_path.stem.split("_")
    rows, cols = map(int, shape.split("x"))
    layers = list(csv.DictReader(csv_path.open()))
    assert layers
    for layer in layers:
        m, k, n = int(layer["m"]), int(layer["k"]), int(layer["n"])
        assert gemm_cycles(m, k, n, rows, cols, flow) == int(layer["compute_cycles"]), layer


@given(dims, dims, dims, arrays, dataflows, st.sampled_from(["m", "k", "n"]))
def test_more_macs_never_fewer_cycles(m: int, k: int, n: int, array: tuple, flow: str,
                                      grow: str) -> None:
    bigger = {"m": (m + 1, k, n), "k": (m, k + 1, n), "n": (m, k, n + 1)}[grow]
    assert gemm_cycles(*bigger, *array, flow) >= gemm_cycles(m, k, n, *array, flow)


@given(dims, dims, dims, arrays, dataflows)
def test_cycles_bound_the_array(m: int, k: int, n: int, array: tuple, flow: str) -> None:
    """No GEMM beats the array's peak: cycles >= MACs / PEs."""
    assert gemm_cycles(m, k, n, *array, flow) * array[0] * array[1] >= m * k * n


def test_gemm_tiling_by_hand() -> None:
    # 256^3 int8 GEMM, 64 KiB each operand and result. 1 MiB of SRAM holds it all: only the
    # weights come from DRAM.
    fits = gemm_traffic(256, 256, 256, 65536, 65536, 65536, True, 1, 1, 1 << 20)
    assert (fits.dram_bytes, fits.sram_bytes, fits.tile) == (65536, 3 * 65536, None)
    # 64 KiB: the best blocks are 128 x 64 output tiles (128 x 128 int32 accumulators alone
    # would fill it) with K in chunks of 64: 2 * (128*64 + 64*64) + 4 * 128*64 = 57344 bytes.
    # Weights are re-read 256/128 = 2 times, inputs 256/64 = 4 times, or the other way round:
    # 65536 * (2 + 4) reads plus the 65536-byte result written once.
    tight = gemm_traffic(256, 256, 256, 65536, 65536, 65536, True, 1, 1, 65536)
    assert tight.dram_bytes == 65536 * 7
    mt, kt, nt = tight.tile
    assert {mt, nt} == {64, 128} and kt == 64
    assert 2 * (mt * kt + kt * nt) + ACC_BYTES * mt * nt <= 65536


def test_streaming_ops_by_hand() -> None:
    assert stream_traffic(100, 1000, 4096).dram_bytes == 100  # resident: the table only
    assert stream_traffic(100, 5000, 4096).dram_bytes == 5100  # streamed once
    assert stream_traffic(3000, 2100, 4096).dram_bytes == 5100  # the table takes half


gemm_dims = st.integers(1, 2000)


@given(gemm_dims, gemm_dims, gemm_dims, st.booleans(), st.sampled_from([0.5, 1, 2]),
       st.integers(6, 22))
def test_gemm_tiles_fit_and_more_sram_never_costs_more(m: int, k: int, n: int, constant: bool,
                                                       width: float, log_sram: int) -> None:
    sizes = (int(m * k * width), int(k * n * width), m * n)
    small = gemm_traffic(m, k, n, *sizes, constant, width, width, 1 << log_sram)
    large = gemm_traffic(m, k, n, *sizes, constant, width, width, 2 << log_sram)
    assert large.dram_bytes <= small.dram_bytes
    assert small.dram_bytes >= (sizes[1] if constant else 0)  # weights come in at least once
    if small.tile and small.tile != (1, 1, 1):
        mt, kt, nt = small.tile
        assert 2 * (mt * kt + kt * nt) * width + ACC_BYTES * mt * nt <= 1 << log_sram


@pytest.fixture(scope="module")
def resnet():  # noqa: ANN201 - a CompiledModel
    model, inputs = ZOO["resnet_basic"]()
    return npuc.compile(model, inputs, target="npu-int8")


@given(st.integers(10, 24))
def test_more_sram_never_more_dram_traffic(resnet, log_sram: int) -> None:  # noqa: ANN001
    target = npuc.targets.get("npu-int8")
    small = dataclasses.replace(target, memory=dataclasses.replace(target.memory,
                                                                  sram_bytes=1 << log_sram))
    large = dataclasses.replace(target, memory=dataclasses.replace(target.memory,
                                                                  sram_bytes=2 << log_sram))
    for node in resnet.ir.nodes:
        if node.is_const or node.op == "input":
            continue
        for engine in ("npu", "dsp", "cpu"):
            if supports(engine, node) is None:
                assert (op_cost(engine, node, large).dram_bytes
                        <= op_cost(engine, node, small).dram_bytes)


def test_energy_is_the_sum_of_its_parts(resnet) -> None:  # noqa: ANN001
    target = npuc.targets.get("npu-int8")
    report = resnet.simulate(sparsity="none")  # every MAC paid (gating: see test_sparsity)
    e = target.energy
    assert report.energy_j == pytest.approx(sum(r.energy_j for r in report.rows)
                                            + e.static_w * report.latency_s
                                            + 2 * report.transfer_bytes * e.sram_byte_pj * 1e-12,
                                            rel=1e-12)
    for r in report.rows:
        bound = (r.macs * max(e.mac_i8_pj, e.mac_i16_pj, e.mac_f32_pj)
                 + r.sram_bytes * e.sram_byte_pj + r.dram_bytes * e.dram_byte_pj) * 1e-12
        floor = (r.macs * min(e.mac_i8_pj, e.mac_i16_pj)
                 + r.sram_bytes * e.sram_byte_pj + r.dram_bytes * e.dram_byte_pj) * 1e-12
        assert floor * (1 - 1e-12) <= r.energy_j <= bound * (1 + 1e-12)


@pytest.mark.parametrize("name", ["resnet_basic", "attention_block", "unet_small",
                                  "lstm_classifier"])
def test_memory_plan_never_overlaps_live_tensors(name: str) -> None:
    model, inputs = ZOO[name]()
    graph = npuc.compile(model, inputs).ir
    order = [n for n in graph.nodes if not n.is_const]
    plan = plan_memory(graph, order)
    assert plan.arena_bytes >= plan.lower_bound > 0
    buffers = plan.buffers
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.start <= b.end and b.start <= a.end and a.size and b.size:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset


NOT_ON_NPU = re.compile(r"\((npu: .+|npu (busy|slower|waits for operands): finishes [\d.]+ [un]s "
                        r"earlier on (dsp|cpu))\)$")


@pytest.mark.parametrize("target", npuc.targets.names())
@pytest.mark.parametrize("name", [n for n in ZOO if n != "minilm"])
def test_every_zoo_model_on_every_target(name: str, target: str) -> None:
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs, target=target)
    start = time.perf_counter()
    report = cm.simulate()
    assert time.perf_counter() - start < 1.0
    assert report.total_cycles > 0 and report.latency_s > 0 and report.energy_j > 0
    t = npuc.targets.get(target)
    order = [n for n in cm.ir.nodes if not n.is_const]
    for row in report.rows:
        assert supports(row.engine, order[int(row.name)], t) is None  # so the target has it
        assert row.bound in ("compute", "memory") and 0 <= row.utilization <= 1
        if t.npu is not None and row.engine != "npu" and row.op != "reshape":
            assert NOT_ON_NPU.search(row.note), row  # says why not on the NPU (a view: free)
    if t.npu is not None:
        gemms = [r for r in report.rows if r.op in ("qconv", "qlinear", "qmatmul")]
        assert all(r.engine in ("npu", "dsp") for r in gemms)
    assert json.loads(report.to_json())["target"] == target
    assert "total:" in str(report)


@pytest.mark.parametrize("name", ["attention_block", "unet_small", "conformer_conv"])
def test_list_schedule_respects_dependencies_and_engines(name: str) -> None:
    model, inputs = ZOO[name]()
    graph = npuc.compile(model, inputs).ir
    report = simulate(graph, "npu-int8")
    order = [n for n in graph.nodes if not n.is_const]
    row = {order[int(r.name)]: r for r in report.rows}
    for node, r in row.items():
        for i in node.inputs:
            if i in row:  # operands finish (and cross engines) before their reader starts
                assert r.start_s >= row[i].start_s + row[i].seconds - 1e-15
    by_engine: dict[str, list] = {}
    for r in report.rows:
        if r.seconds > 0:  # a view occupies no engine
            by_engine.setdefault(r.engine, []).append((r.start_s, r.start_s + r.seconds))
    for spans in by_engine.values():  # an engine runs one op at a time
        spans.sort()
        assert all(a[1] <= b[0] + 1e-15 for a, b in zip(spans, spans[1:], strict=False))
    sequential = sum(r.seconds for r in report.rows)
    longest_engine = max(sum(e - s for s, e in spans) for spans in by_engine.values())
    assert longest_engine <= report.latency_s + 1e-15
    assert report.latency_s <= sequential + 2 * report.transfer_bytes / 1e6 + 1e-12


def test_plot_writes_a_figure(resnet, tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "report.png"
    resnet.simulate().plot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_int4_weights_double_the_array_throughput() -> None:
    model, inputs = ZOO["resnet_basic"]()
    int8 = npuc.compile(model, inputs, target="npu-int8").simulate()
    int4 = npuc.compile(model, inputs, target="npu-w4a8").simulate()
    npu8 = sum(r.compute_cycles for r in int8.rows if r.engine == "npu")
    npu4 = sum(r.compute_cycles for r in int4.rows if r.engine == "npu")
    assert npu4 == pytest.approx(npu8 / 2, rel=0.01)


def test_simulating_a_target_without_hardware_says_so() -> None:
    model, inputs = ZOO["mlp"]()
    graph = npuc.compile(model, inputs).ir
    bare = dataclasses.replace(npuc.targets.get("npu-int8"), npu=None, dsp=None, cpu=None)
    with pytest.raises(ValueError, match="no engines"):
        simulate(graph, bare)
