"""npuc.compile, the command line, and the golden dumps of two small models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import npuc
from npuc.printer import print_graph
from tests.conftest import rel_error
from tests.models import ZOO

ROOT = Path(__file__).resolve().parents[1]


def test_compile_keeps_every_stage() -> None:
    model, inputs = ZOO["attention_block"]()
    cm = npuc.compile(model, inputs, target="npu-int8", debug=True)
    assert list(cm.stages) == ["captured", "fold_constants", "fold_batchnorm", "merge_branches",
                               "merge_linear", "remove_noops", "fold_norms", "cse", "dce",
                               "smoothquant", "quantize", "cse#2", "dce#2", "lowered"]
    assert cm.ir is cm.stages["lowered"]
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = cm.run(*inputs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert rel_error(got, want) <= 0.05
    assert rel_error(npuc.interpret(cm.stages["dce"], *inputs)[0], want) <= 1e-5
    assert cm.dump("captured") == str(cm.stages["captured"])
    folded = cm.stages["dce"]
    assert len(folded.nodes) < len(cm.stages["captured"].nodes)  # cse + remove_noops did work
    summary = cm.summary()
    assert summary.ops["qlinear"] == sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert summary.macs > 0
    assert "remove_noops" in cm.report()
    with pytest.raises(KeyError, match="stages: captured"):
        cm.dump("quantized")


def test_compile_from_calibration_and_custom_passes() -> None:
    model, (x,) = ZOO["mlp"]()
    cm = npuc.compile(model, calibration=[(x,), (x * 2,)], passes="cse,cse")
    assert list(cm.stages) == ["captured", "cse", "cse#2", "lowered"]
    target = npuc.targets.get("cpu-fp32")
    assert npuc.compile(model, (x,), target=target).target is target


class DictHeads(torch.nn.Module):
    """A model whose forward returns a dict (as HuggingFace models do), one value nested."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict:
        hidden = torch.relu(self.body(x))
        return {"logits": self.head(hidden), "hidden": hidden,
                "extra": (hidden.mean(1), {"norm": hidden.sum(1)})}


@pytest.mark.parametrize("target", ["npu-int8", "cpu-fp32"])
def test_dict_outputs_come_back_as_dicts(target: str) -> None:
    torch.manual_seed(0)
    model, x = DictHeads().eval(), torch.randn(4, 8)
    cm = npuc.compile(model, (x,), target=target)
    assert cm.stages["captured"].meta["output_structure"] == {
        "logits": 0, "hidden": 1, "extra": [2, {"norm": 3}]}
    got = cm.run(x)
    with torch.no_grad():
        want = model(x)
    assert list(got) == ["logits", "hidden", "extra"]
    assert isinstance(got["extra"], tuple) and list(got["extra"][1]) == ["norm"]
    bound = 0.05 if target == "npu-int8" else 1e-5
    for g, w in [(got["logits"], want["logits"]), (got["hidden"], want["hidden"]),
                 (got["extra"][0], want["extra"][0]), (got["extra"][1]["norm"],
                                                       want["extra"][1]["norm"])]:
        assert g.shape == tuple(w.shape) and rel_error(g, w.numpy()) <= bound
    raw = cm.run(x, raw=True)
    assert list(raw) == ["logits", "hidden", "extra"]
    # the names are part of the IR: they survive the dump
    text = print_graph(cm.ir)
    assert 'meta output_structure = {logits = 0, hidden = 1, extra = [2, {norm = 3}]}' in text
    assert npuc.ir.parse(text).meta["output_structure"] == {
        "logits": 0, "hidden": 1, "extra": (2, {"norm": 3})}


def test_non_finite_inputs_to_a_quantized_graph_warn() -> None:
    import warnings

    model, (x,) = ZOO["mlp"]()
    cm = npuc.compile(model, (x,), target="npu-int8")
    name = cm.ir.inputs[0].attrs["name"]
    bad = x.clone()
    bad[0, 0], bad[1, 2], bad[2, 3] = float("nan"), float("inf"), -float("inf")
    with pytest.warns(RuntimeWarning, match=rf"input '{name}' holds 1 NaN and 2 infinite"):
        out = cm.run(bad)
    assert np.isfinite(out).all()  # what the warning is about: finite, and wrong
    with pytest.warns(RuntimeWarning, match=name):
        cm.run(bad.numpy(), raw=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cm.run(x)  # finite inputs: no warning
    floats = npuc.compile(model, (x,), target="cpu-fp32")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert np.isnan(floats.run(bad)).any()  # a float graph shows the NaN itself
    assert not [w for w in seen if "holds 1 NaN" in str(w.message)]


def test_compare_says_when_the_float_reference_is_not_finite() -> None:
    import warnings

    model, (x,) = ZOO["mlp"]()
    cm = npuc.compile(model, (x,), target="npu-int8")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the NaN input's own warning
        report = cm.compare(torch.full_like(x, float("nan")))
        partly = x.clone()
        partly[0, 0] = float("nan")
        some = cm.compare(partly)
    text = str(report)
    assert "inf dB" not in text and "relative error 0.0000" not in text
    assert "the output's float reference is not finite (40 NaN/Inf values)" in text
    assert "check the inputs for NaN/Inf" in text
    assert all(np.isnan(r.sqnr_db) and np.isnan(r.rel_error) and r.nonfinite for r in report.rows)
    # one NaN in the input poisons a row of the output: no SQNR is claimed for it either
    assert some.rows[-1].nonfinite == 10 and np.isnan(some.rows[-1].sqnr_db)
    assert some.worst(1)[0].nonfinite
    clean = cm.compare(x)
    assert all(np.isfinite(r.sqnr_db) and not r.nonfinite for r in clean.rows)
    assert "not finite" not in str(clean)


def test_target_files_are_validated(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndescription = "y"\n[compile]\npipelin = ["cse"]\n')
    with pytest.raises(npuc.targets.TargetError, match="bad.toml: unknown key 'compile.pipelin'"):
        npuc.targets.load(bad)
    bad.write_text('name = "x"\ndescription = "y"\n[compile]\npipeline = ["csx"]\n')
    with pytest.raises(npuc.targets.TargetError, match="unknown pass 'csx'"):
        npuc.targets.load(bad)
    for line, message in [('weights = "int9"', "quantize.weights': unknown weight format"),
                          ('observer = "median"', "quantize.observer' must be one of minmax"),
                          ('int16 = ["sofmax"]', r"unknown op\(s\) \['sofmax'\]"),
                          ('activations = "int4"', "quantize.activations' must be 'int8' or")]:
        bad.write_text(f'name = "x"\ndescription = "y"\n[quantize]\n{line}\n')
        with pytest.raises(npuc.targets.TargetError, match=message):
            npuc.targets.load(bad)
    npu = 'rows = 32\ncols = 32\ndataflow = "ws"\nclock_hz = 1e9\n'
    for table, message in [
            (npu.replace("rows = 32\n", ""), "missing field 'npu.rows'"),
            (npu.replace("rows = 32", "rows = 0"), "'npu.rows' must be >= 1, got 0"),
            (npu.replace('"ws"', '"xs"'), "'npu.dataflow' must be one of .'ws', 'os', 'is'."),
            (npu.replace("1e9", '"fast"'), "'npu.clock_hz' must be float, got 'fast'"),
            (npu + "colz = 4\n", "unknown key 'npu.colz'")]:
        bad.write_text(f'name = "x"\ndescription = "y"\n[npu]\n{table}')
        with pytest.raises(npuc.targets.TargetError, match=message):
            npuc.targets.load(bad)
    assert {"npu-int8", "npu-w4a8", "cpu-fp32", "dsp-int16"} <= set(npuc.targets.names())
    npu_int8 = npuc.targets.get("npu-int8")
    assert (npu_int8.npu.rows, npu_int8.npu.dataflow, npu_int8.memory.sram_bytes) == \
        (32, "ws", 1 << 20)
    assert npuc.targets.get("npu-w4a8").quantize["weights"] == "int4"
    dsp = npuc.targets.get("dsp-int16")
    assert dsp.npu is None and dsp.dsp.lanes == 128 and dsp.quantize["activations"] == "int16"


@pytest.mark.parametrize("line, field", [
    ("mac_i8_pj = 0.23", "energy.mac_i8_pj"),
    ("dram_bytes_per_s = 17.0e9", "memory.dram_bytes_per_s"),
    ("sram_bytes_per_cycle = 128.0", "memory.sram_bytes_per_cycle"),
    ("clock_hz = 1.0e9", "npu.clock_hz"), ("static_w = 0.05", "energy.static_w")])
@pytest.mark.parametrize("number", ["nan", "inf", "-inf", "+nan"])
def test_target_files_reject_non_finite_numbers(tmp_path: Path, line: str, field: str,
                                                number: str) -> None:
    text = (ROOT / "targets" / "npu-int8.toml").read_text()
    assert line in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(line, f"{line.split(' = ')[0]} = {number}", 1))
    with pytest.raises(npuc.targets.TargetError,
                       match=rf"mine.toml: '{field}' must be a finite number"):
        npuc.targets.load(path)


def npuc_cli(*args: str, cwd: Path, subprocess_: bool = False) -> subprocess.CompletedProcess:
    """`npuc *args` in `cwd`: in this process (a new one costs seconds of imports), or as
    `python -m npuc` when `subprocess_`. A model file's pass registrations and sys.path entries
    are undone afterwards so that they do not leak into other tests."""
    if subprocess_:
        return subprocess.run([sys.executable, "-m", "npuc", *args], cwd=cwd,
                              capture_output=True, text=True, timeout=300)
    import contextlib
    import io
    import os

    from npuc.cli import main
    from npuc.pipeline import REGISTRY

    passes, path, here = dict(REGISTRY), list(sys.path), os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(list(args))
            except SystemExit as e:  # what the interpreter would make of it
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                status = e.code if isinstance(e.code, int) else 1
    finally:
        os.chdir(here)
        sys.path[:] = path
        REGISTRY.clear()
        REGISTRY.update(passes)
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                              nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
        return model.eval(), (torch.randn(2, 3, 6, 6),)

    def broken():
        class FFT(nn.Module):
            def forward(self, x):
                return torch.fft.rfft(x).abs()
        return FFT(), (torch.randn(4, 8),)

    def dict_heads():
        torch.manual_seed(0)
        class Heads(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Linear(8, 16)
            def forward(self, x):
                h = self.body(x)
                return {"logits": h.relu(), "hidden": h}
        return Heads().eval(), (torch.randn(2, 8),)

    def sparse():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
        with torch.no_grad():
            for m in (model[0], model[2]):
                m.weight[torch.rand_like(m.weight) < 0.75] = 0
        return model.eval(), (torch.randn(16, 64),)

    from npuc.passes import register_pass

    @register_pass("explode")
    def explode(graph, ctx):
        '''A pass with a bug in it.'''
        return [][0]
""")


def test_cli_compile_writes_stages_and_checks(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    result = npuc_cli("compile", "net.py:build", "--out", "dumps", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "MACs: " in result.stdout and "qconv 1" in result.stdout
    assert "OK" in result.stdout.splitlines()[-1]
    dumps = sorted(p.name for p in (tmp_path / "dumps").iterdir())
    assert dumps[0] == "00_captured.ir" and dumps[-1] == "13_lowered.ir"
    text = (tmp_path / "dumps" / "00_captured.ir").read_text()
    assert str(npuc.ir.parse(text)) == text
    lowered = (tmp_path / "dumps" / "13_lowered.ir").read_text()
    assert "batch_norm" in text and "batch_norm" not in lowered and "qconv" in lowered
    heads = npuc_cli("compile", "net.py:dict_heads", "--check", cwd=tmp_path)
    assert heads.returncode == 0, heads.stderr
    assert "OK" in heads.stdout.splitlines()[-1]


def test_cli_compare_lists_the_lossiest_ops(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    result = npuc_cli("compare", "net.py:build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SQNR dB" in result.stdout and "largest loss at the op itself" in result.stdout
    assert "linear" in result.stdout and "i16" in result.stdout  # the int16 logits
    float_only = npuc_cli("compare", "net.py:build", "--target", "cpu-fp32", cwd=tmp_path)
    assert float_only.returncode != 0 and "not quantized" in float_only.stderr


def test_cli_simulate_prints_the_report(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    result = npuc_cli("simulate", "net.py:build", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "qconv" in result.stdout and "npu" in result.stdout and "total:" in result.stdout


def test_cli_simulate_sparsity_overrides_the_targets_mode(tmp_path: Path) -> None:
    import json

    (tmp_path / "net.py").write_text(FACTORY)
    reports = {}
    for mode in ["ideal", "gating"]:
        result = npuc_cli("simulate", "net.py:sparse", "--sparsity", mode, "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        reports[mode] = json.loads(result.stdout[result.stdout.index("{"):])
        assert reports[mode]["sparsity"] == mode
    ideal, gating = reports["ideal"], reports["gating"]
    assert ideal["total_cycles"] < gating["total_cycles"]  # 75% zeros: skipped only when ideal
    assert ideal["by_sparsity"]["ideal"]["cycles"] == ideal["total_cycles"]
    assert gating["by_sparsity"]["gating"]["cycles"] == gating["total_cycles"]
    shown = npuc_cli("simulate", "net.py:sparse", "--sparsity", "nm", cwd=tmp_path)
    assert any(line.startswith("nm *") for line in shown.stdout.splitlines()), shown.stdout
    bad = npuc_cli("simulate", "net.py:sparse", "--sparsity", "zero_skipping", cwd=tmp_path)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_cli_runs_as_a_module(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    result = npuc_cli("simulate", "net.py:sparse", cwd=tmp_path, subprocess_=True)
    assert result.returncode == 0, result.stderr
    assert "total:" in result.stdout and "Traceback" not in result.stderr


def test_cli_reports_unsupported_ops(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    result = npuc_cli("compile", "net.py:broken", cwd=tmp_path)
    assert result.returncode == 2
    assert "aten.fft_r2c" in result.stderr or "fft" in result.stderr
    assert "what to do" in result.stderr


def test_cli_errors_inside_a_pass_are_one_message(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    result = npuc_cli("compile", "net.py:build", "--passes", "mobilequant", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("npuc: error: pass mobilequant failed: UnsupportedError")
    assert "op:     conv" in result.stderr and "what to do:" in result.stderr
    assert len(result.stderr.splitlines()) <= 6
    bug = npuc_cli("simulate", "net.py:build", "--passes", "cse,explode", cwd=tmp_path)
    assert bug.returncode == 1 and "Traceback" not in bug.stderr
    assert "pass explode failed: IndexError" in bug.stderr and "passes run before it: cse" in \
        bug.stderr and "internal error of npuc: rerun with --debug" in bug.stderr
    debug = npuc_cli("compile", "net.py:build", "--passes", "mobilequant", "--debug", cwd=tmp_path,
                     subprocess_=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_target_takes_a_file(tmp_path: Path) -> None:
    (tmp_path / "net.py").write_text(FACTORY)
    text = (ROOT / "targets" / "npu-int8.toml").read_text()
    (tmp_path / "mine.toml").write_text(text.replace('name = "npu-int8"', 'name = "my-npu"'))
    result = npuc_cli("compile", "net.py:build", "--target", "mine.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "target my-npu:" in result.stdout
    shown = npuc_cli("targets", "mine.toml", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.startswith("my-npu:")
    missing = npuc_cli("simulate", "net.py:build", "--target", "gone.toml", cwd=tmp_path)
    assert missing.returncode == 2 and "gone.toml" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert npuc.targets.get(tmp_path / "mine.toml").name == "my-npu"


def test_cli_compiles_a_pt2_file(tmp_path: Path) -> None:
    model, inputs = ZOO["sr_net"]()
    torch.export.save(torch.export.export(model, inputs), tmp_path / "sr.pt2")
    result = npuc_cli("compile", "sr.pt2", "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "pixel_shuffle 1" in result.stdout


def test_cli_lists_targets_and_passes(tmp_path: Path) -> None:
    targets = npuc_cli("targets", cwd=tmp_path)
    assert targets.returncode == 0 and "npu-int8" in targets.stdout
    listed = npuc_cli("passes", cwd=tmp_path)
    assert "fold_constants" in listed.stdout and "max_bytes" in listed.stdout


@pytest.mark.parametrize("name", ["cnn_bn", "attention_block"])
def test_golden_dump(name: str, golden) -> None:
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs)
    golden(f"{name}.captured.ir", print_graph(cm.stages["captured"]))
    golden(f"{name}.lowered.ir", print_graph(cm.ir), digests=False)


def test_golden_comparison_tolerates_only_float_rounding() -> None:
    from tests.conftest import same_dump

    dump = "%6 = qconv(%3) {pad = [1, 1]} : tensor<2x16xi8, q<0.0032234539:-128>>"
    assert same_dump(dump.replace("0.0032234539", "0.0032234543"), dump)
    assert not same_dump(dump.replace("0.0032234539", "0.0032334539"), dump)
    assert not same_dump(dump.replace("-128", "-127"), dump)
    assert not same_dump(dump.replace("2x16", "2x17"), dump)
    digest = 'const {digest = "1602e22589c1"} : tensor<16xf32>  loc("4.bias")'
    assert same_dump(digest, digest)
    assert not same_dump(digest.replace("1602e22589c1", "1602e22589c2"), digest)
    number_like = 'const {digest = "889864e74359"} : tensor<16xi32>'  # no float: reads as inf
    assert same_dump(number_like, number_like)
    assert not same_dump(number_like.replace("74359", "74358"), number_like)
