"""The pass API as promised: `apply` / `run_pipeline` take `calibration=` and `target=`, passes
declare what they read, and options, calibration data and pipeline shapes are checked with
errors that say what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import npuc
from npuc import passes
from npuc.ir import DType
from npuc.pipeline import REGISTRY, CalibrationError, PassContext
from npuc.printer import print_graph
from tests.conftest import required_options


class NormFanout(nn.Module):
    """LayerNorm -> two linears, with one outlier channel: something for smoothquant to do."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm = nn.LayerNorm(8)
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)
        with torch.no_grad():
            self.norm.weight[3] = 30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.norm(x)
        return self.q(n) + self.k(n)


@pytest.fixture(scope="module")
def fanout() -> tuple[npuc.ir.Graph, list[tuple[np.ndarray]]]:
    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(4, 8)).astype(np.float32),) for _ in range(3)]
    return npuc.capture(NormFanout().eval(), (torch.from_numpy(data[0][0]),)), data


def data_passes() -> list[str]:
    return sorted(name for name, info in REGISTRY.items() if info.needs_calibration)


def test_data_reading_passes_declare_it() -> None:
    assert {"smoothquant", "quantize"} <= set(data_passes())
    assert REGISTRY["quantize"].reads_target
    assert not REGISTRY["cse"].needs_calibration and not REGISTRY["cse"].reads_target


@pytest.mark.parametrize("name", data_passes())
def test_apply_takes_calibration(fanout: tuple, name: str) -> None:
    """Every pass that declares it needs data runs through apply(..., calibration=) exactly as
    through a hand-built PassContext, and is refused without it, naming the pass."""
    graph, data = fanout
    options = required_options(name)
    by_keyword = passes.apply(graph, name, calibration=data, **options)
    by_ctx = passes.apply(graph, name, ctx=PassContext(calibration=data), **options)
    assert print_graph(by_keyword, constants=True) == print_graph(by_ctx, constants=True)
    with pytest.raises(CalibrationError, match=f"pass {name} needs calibration.*calibration="):
        passes.apply(graph, name, **options)


def test_smoothquant_through_apply_changes_the_graph(fanout: tuple) -> None:
    graph, data = fanout
    ctx = PassContext()
    smooth = passes.apply(graph, "smoothquant", ctx=ctx, calibration=(d for d in data))
    assert not npuc.ir.structurally_equal(smooth, graph)
    assert ctx.notes and "smoothquant" in ctx.notes[0]  # notes still go to the given ctx
    np.testing.assert_allclose(npuc.interpret(smooth, *data[0])[0],
                               npuc.interpret(graph, *data[0])[0], rtol=1e-5, atol=1e-5)


def test_mobilequant_through_apply(fanout: tuple) -> None:
    graph, data = fanout
    learned = passes.apply(graph, "mobilequant", calibration=data, steps=2, progress=False)
    assert learned.meta.get("activation_ranges")


def test_quantize_reads_the_target_given_by_name(fanout: tuple) -> None:
    graph, data = fanout
    plain = passes.apply(graph, "quantize", calibration=data)
    npu = passes.apply(graph, "quantize", calibration=data, target="npu-int8")
    dsp = passes.apply(graph, "quantize", calibration=data, target=npuc.targets.get("dsp-int16"))

    def wide(g: npuc.ir.Graph) -> int:
        return sum(n.dtype == DType.I16 for n in g.nodes)

    assert wide(plain) == 0 < wide(npu) < wide(dsp)  # npu-int8: layer_norm operand, output


def test_run_pipeline_refuses_before_running_anything(fanout: tuple) -> None:
    graph, data = fanout
    ran = []

    @passes.register_pass("test_records_run")
    def records_run(graph: npuc.ir.Graph, ctx: PassContext) -> npuc.ir.Graph:
        """Note that it ran (for this test only)."""
        ran.append(True)
        return graph

    try:
        with pytest.raises(CalibrationError, match="pass smoothquant needs calibration"):
            passes.run_pipeline(graph, ["test_records_run", "smoothquant"])
        assert not ran
    finally:
        REGISTRY.pop("test_records_run")
    out, records = passes.run_pipeline(graph, ["cse", "smoothquant", "quantize"],
                                       calibration=data, target="npu-int8")
    assert [r.name for r in records] == ["cse", "smoothquant", "quantize"]
    assert records[1].notes and records[1].notes[0].startswith("smoothquant: smoothed")


# -- calibration data that does not fit ----------------------------------------------------------

class TwoInputs(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x * 2 + y


def test_calibration_of_the_wrong_arity_says_so() -> None:
    x = torch.ones(2, 3)
    with pytest.raises(CalibrationError, match=r"sample 1 has 1 value; the graph takes a tuple "
                                               r"of 2 arrays \(x, y\)"):
        npuc.compile(TwoInputs(), (x, x), calibration=[(x, x), (x,)])
    with pytest.raises(CalibrationError, match="sample 0 is a Tensor"):
        npuc.compile(TwoInputs(), (x, x), calibration=[x, x])
    with pytest.raises(CalibrationError, match=r"input 1 \(y\) has shape \(2, 4\)"):
        npuc.compile(TwoInputs(), (x, x), calibration=[(x, torch.ones(2, 4))])


def test_nan_calibration_data_names_the_sample_and_input() -> None:
    x = torch.ones(2, 3)
    bad = x.clone()
    bad[0, 1] = float("nan")
    bad[1, 2] = float("inf")
    with pytest.raises(CalibrationError, match=r"sample 2, input 1 \(y\) has 1 NaN and 1 Inf"):
        npuc.compile(TwoInputs(), (x, x), calibration=[(x, x), (x, x), (x, bad)])
    graph = npuc.capture(TwoInputs(), (x, x))
    with pytest.raises(CalibrationError, match="NaN"):
        passes.apply(graph, "quantize", calibration=[(x, bad)])


# -- options ---------------------------------------------------------------------------------------

def test_union_typed_options_are_checked(fanout: tuple) -> None:
    graph, data = fanout
    with pytest.raises(TypeError, match=r"option int16 must be tuple of str, list of str or "
                                        r"None, got 'softmax' \(.*write \['softmax'\]"):
        passes.apply(graph, "quantize", calibration=data, int16="softmax")
    with pytest.raises(ValueError, match=r"unknown op\(s\) \['sofmax'\].*did you mean "
                                         r"'softmax'.*known: .*layer_norm"):
        passes.apply(graph, "quantize", calibration=data, int16=["sofmax"])
    with pytest.raises(TypeError, match="option layers must be dict of str -> str or None"):
        passes.apply(graph, "quantize", calibration=data, layers={"q": 4})
    with pytest.raises(TypeError, match="option observer must be str or None, got 3"):
        passes.apply(graph, "quantize", calibration=data, observer=3)
    with pytest.raises(TypeError, match="option progress must be bool or None"):
        passes.apply(graph, "quantize", calibration=data, progress="yes")
    # what fits still runs, an int where a float is wanted widens
    out = passes.apply(graph, "quantize", calibration=data, int16=("layer_norm",),
                       layers={"q": "int4"}, percentile=99)
    assert any(n.dtype == DType.I16 for n in out.nodes)
    assert passes.get("smoothquant").check_options({"alpha": 1}) == {"alpha": 1.0}


def test_int16_softmax_string_no_longer_stays_int8() -> None:
    """The bug: int16="softmax" was iterated letter by letter, softmax silently stayed int8."""
    class Attn(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x @ x.transpose(-1, -2), -1)

    x = torch.randn(2, 4, 8)
    with pytest.raises(TypeError, match="int16"):
        npuc.compile(Attn(), (x,), passes={"quantize": {"int16": "softmax"}})
    cm = npuc.compile(Attn(), (x,), passes={"quantize": {"int16": ["softmax"]}})
    (softmax,) = [n for n in cm.ir.nodes if n.op == "qsoftmax"]
    assert softmax.inputs[0].dtype == DType.I16


@pytest.mark.parametrize("bad, message", [
    ([("quantize",)], r"step 0: expected a pass name, a \(name, \{options\}\) pair"),
    (["cse", {"alpha": 0.5}], "step 1: expected"),
    ([3], "step 0: expected .* got int 3"),
    ([("quantize", "int4")], r"step 0 \(quantize\): options must be a dict, got str"),
    ({"quantize": "int4"}, r"passes\['quantize'\] must be a dict of options.* got str 'int4'"),
    (3, "a pipeline is a list of steps"),
])
def test_malformed_passes_are_type_errors(bad: object, message: str) -> None:
    x = torch.ones(2, 3)
    with pytest.raises(TypeError, match=message):
        npuc.compile(TwoInputs(), (x, x), passes=bad)


def test_non_table_quantize_section_is_a_target_error(tmp_path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\ndescription = "x"\nquantize = 3\n'
                    '[compile]\npipeline = ["quantize"]\n')
    with pytest.raises(npuc.targets.TargetError, match="'quantize' must be a table"):
        npuc.targets.load(path)
