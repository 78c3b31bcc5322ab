"""Diffusion models from diffusers (small configs, random weights: nothing downloaded): capture,
the timestep embedding tabulated, integer-only on npu-int8, bit-exact C, attention reuse."""

from __future__ import annotations

from pathlib import Path

import diffusers  # a test dependency ([test] extra)
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import npuc
from npuc.interpreter import interpret
from npuc.ir import DType, Graph, TensorType, const, graph_input
from npuc.ops import make
from npuc.passes.reuse_attention import attention_maps, schedule_for
from tests.codegen.harness import assert_bit_exact, build, run

STEPS = 1000  # the models' training timesteps


class Denoiser(nn.Module):
    """model(x, t) -> the predicted noise, for UNet2DModel and DiTTransformer2DModel alike."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        if kind == "unet":
            self.net = diffusers.UNet2DModel(
                sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                attention_head_dim=8)
        else:
            self.net = diffusers.DiTTransformer2DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1,
                num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=STEPS,
                norm_type="ada_norm_zero")
        self.eval()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.kind == "unet":
            return self.net(x, t).sample
        return self.net(x, timestep=t, class_labels=torch.zeros_like(t)).sample


def loop(calls: int = 8, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(1, 1, 8, 8)).astype(np.float32), np.array([int(t)]))
            for t in np.linspace(STEPS - 1, 0, calls)]


def pipeline(*steps: tuple) -> list:
    return [("tabulate", {"inputs": {"t": STEPS}}), *steps,
            *npuc.targets.get("npu-int8").pipeline]


@pytest.fixture(scope="module", params=["unet", "dit"])
def denoiser(request) -> Denoiser:  # noqa: ANN001
    return Denoiser(request.param)


def test_capture_matches_pytorch(denoiser: Denoiser) -> None:
    calls = loop(3)
    graph = npuc.capture(denoiser, tuple(torch.from_numpy(a) for a in calls[0]))
    assert {"sin", "cos"} <= {n.op for n in graph.nodes}
    assert len(attention_maps(graph)) == (4 if denoiser.kind == "unet" else 2)
    for x, t in calls:
        want = denoiser(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy()
        np.testing.assert_allclose(interpret(graph, x, t)[0], want, atol=2e-5, rtol=1e-5)


def test_tabulating_the_timestep_is_exact_and_leaves_no_sinusoid(denoiser: Denoiser) -> None:
    calls = loop(4)
    graph = npuc.capture(denoiser, tuple(torch.from_numpy(a) for a in calls[0]))
    tabulated = npuc.passes.apply(graph, "tabulate", inputs={"t": STEPS})
    assert not {"sin", "cos"} & {n.op for n in tabulated.nodes}
    assert len(tabulated.nodes) < len(graph.nodes)
    for x, t in calls:
        np.testing.assert_array_equal(interpret(tabulated, x, t)[0], interpret(graph, x, t)[0])
    again = npuc.passes.apply(tabulated, "tabulate", inputs={"t": STEPS})
    assert len(again.nodes) == len(tabulated.nodes)


def test_integer_only_on_npu_int8_and_bit_exact_in_c(denoiser: Denoiser,
                                                     tmp_path: Path) -> None:
    calls = loop(6)
    example = tuple(torch.from_numpy(a) for a in calls[0])
    cm = npuc.compile(denoiser, example, "npu-int8", calibration=calls, passes=pipeline())
    assert all(not n.dtype.is_float for n in cm.ir.nodes
               if n.op not in ("input", "quantize", "dequantize", "const"))
    errors = []
    for x, t in calls:
        want = denoiser(torch.from_numpy(x), torch.from_numpy(t)).detach().numpy()
        errors.append(np.linalg.norm(cm.run(x, t) - want) / np.linalg.norm(want))
    assert np.median(errors) < 0.1, errors
    for call in calls[:2]:
        assert_bit_exact(cm, call, tmp_path)


def test_reused_attention_in_a_sampling_loop_is_bit_exact_in_c(denoiser: Denoiser,
                                                                tmp_path: Path) -> None:
    calls = loop(6)
    times = [int(t[0]) for _, t in calls]
    example = tuple(torch.from_numpy(a) for a in calls[0])
    always = npuc.compile(denoiser, example, "npu-int8", calibration=calls, passes=pipeline(
        ("reuse_attention", {"timesteps": times, "policy": "always"})))
    plain = npuc.compile(denoiser, example, "npu-int8", calibration=calls, passes=pipeline())
    for x, t in calls:  # the cache changes nothing when every call recomputes
        np.testing.assert_array_equal(always.run(x, t), plain.run(x, t))
    late = npuc.compile(denoiser, example, "npu-int8", calibration=calls, passes=pipeline(
        ("reuse_attention", {"timesteps": times, "reuse_after": 0.5, "every": 2})))
    late.reset()
    want = [np.asarray(late.run(*c), np.float32).ravel() for c in calls]
    got = run(build(late.emit_c(tmp_path)), [a.astype(np.float32) for c in calls for a in c],
              [want[0].size] * len(calls))
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g.view(np.int32), w.view(np.int32))
    costs = [r.total_cycles for r in late.simulate_calls(times).reports]
    plan = schedule_for("late", len(calls), 0.5, 2)  # 1, 1, 1, 1, 0, 1
    assert max(c for c, p in zip(costs, plan, strict=True) if not p) < min(
        c for c, p in zip(costs, plan, strict=True) if p)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 40), st.lists(st.sampled_from(["sin", "cos", "tanh", "exp"]), min_size=1,
                                    max_size=3), st.integers(0, 2 ** 16))
def test_tabulate_is_exact_for_every_value(count: int, funcs: list[str], seed: int) -> None:
    """A random chain of functions of cast(t) * freqs, added to x: the same at every t."""
    rng = np.random.default_rng(seed)
    x = graph_input("x", TensorType((2, 4), DType.F32))
    t = graph_input("t", TensorType((1,), DType.I64))
    h = make("mul", [make("cast", [t], {"dtype": "f32"}),
                     const(rng.normal(size=4).astype(np.float32))])
    for f in funcs:
        h = make(f, [make("tanh", [h]) if f == "exp" else h])
    graph = Graph((x, t), (make("add", [x, h]),), "g").verify()
    tabulated = npuc.passes.apply(graph, "tabulate", inputs={"t": count}).verify()
    assert {n.op for n in tabulated.nodes} == {"input", "const", "gather", "reshape", "add"}
    xs = rng.normal(size=(2, 4)).astype(np.float32)
    for v in range(count):
        value = np.array([v])
        np.testing.assert_array_equal(interpret(tabulated, xs, value)[0],
                                      interpret(graph, xs, value)[0])
    with pytest.raises(Exception, match="outside"):
        interpret(tabulated, xs, np.array([count]))


def test_tabulate_refuses_what_it_cannot_tabulate() -> None:
    graph = npuc.capture(Denoiser("dit"), tuple(torch.from_numpy(a) for a in loop(1)[0]))
    with pytest.raises(ValueError, match="no input 'step'"):
        npuc.passes.apply(graph, "tabulate", inputs={"step": 10})
    with pytest.raises(ValueError, match="one int32/int64 element"):
        npuc.passes.apply(graph, "tabulate", inputs={"x": 10})
