"""Decoder LLMs: RMSNorm folding and its integer kernel, constant powers, and a causal LM as a
prefill and a decode graph sharing a KV cache (npuc.llm) in the interpreter and in C."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import npuc
from npuc.ir import GraphError
from npuc.llm import compile_lm, step_graph
from npuc.state import carry
from tests.codegen.harness import FAST, build, run

transformers = pytest.importorskip("transformers")


def tiny_llama(layers: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=layers, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


class HandRMSNorm(torch.nn.Module):
    """Llama's RMSNorm as transformers writes it, gain on the left or the right."""

    def __init__(self, dim: int, eps: float, gain_first: bool, square: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(dim) + 0.5)
        self.eps, self.gain_first, self.square = eps, gain_first, square

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = x.pow(2) if self.square == "pow" else x * x
        y = x * torch.rsqrt(sq.mean(-1, keepdim=True) + self.eps)
        return self.weight * y if self.gain_first else y * self.weight


@settings(max_examples=20, deadline=None)
@given(dim=st.integers(2, 40), rows=st.integers(1, 5), eps=st.sampled_from([1e-6, 1e-5, 1e-3]),
       gain_first=st.booleans(), square=st.sampled_from(["pow", "mul"]),
       seed=st.integers(0, 2**16))
def test_fold_norms_makes_one_rms_layer_norm_of_the_same_function(
        dim: int, rows: int, eps: float, gain_first: bool, square: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(dim, dim), HandRMSNorm(dim, eps, gain_first,
                                                                       square)).eval()
    x = torch.randn(rows, dim) * 3
    g = npuc.capture(model, (x,))
    folded = npuc.passes.apply(npuc.passes.apply(g, "fold_norms"), "dce")
    norms = [n for n in folded.nodes if n.op == "layer_norm"]
    assert len(norms) == 1 and norms[0].attrs["rms"] and len(norms[0].inputs) == 2
    assert not {"rsqrt", "pow", "mean"} & {n.op for n in folded.nodes}
    (want,) = npuc.interpret(g, x.numpy())
    (got,) = npuc.interpret(folded, x.numpy())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_fold_norms_leaves_a_norm_over_another_axis_and_a_shared_norm_ungained() -> None:
    class Other(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            over_rows = x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + 1e-5)
            n = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)
            return over_rows, n * torch.full((8,), 2.0), n  # n has a second reader

    g = npuc.capture(Other(), (torch.randn(3, 8),))
    folded = npuc.passes.apply(g, "fold_norms")
    norms = [n for n in folded.nodes if n.op == "layer_norm"]
    assert len(norms) == 1 and len(norms[0].inputs) == 1  # the gain is not folded
    x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
    for a, b in zip(npuc.interpret(folded, x), npuc.interpret(g, x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class TanhGelu(torch.nn.Module):
    """GPT-2's GELU, written with a constant power."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


def test_a_constant_power_lowers_to_a_table_and_runs_bit_exact_in_c(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), TanhGelu()).eval()
    xs = [(torch.randn(4, 16),) for _ in range(4)]
    cm = npuc.compile(model, calibration=xs, target="npu-int8")
    assert "power" in {n.op for n in cm.ir.meta["float_graph"].nodes}
    assert not any(n.dtype.is_float for n in cm.ir.nodes
                   if n.op not in ("input", "quantize", "dequantize") and not n.is_const)
    with torch.no_grad():
        want = model(xs[0][0]).numpy()
    got = cm.run(xs[0][0])
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    exe = build(cm.emit_c(tmp_path), FAST)
    (c_out,) = run(exe, [xs[0][0].numpy()], [want.size])
    assert np.array_equal(c_out.view(np.int32),
                          np.asarray(got, np.float32).ravel().view(np.int32))


def test_prefill_then_decode_equals_the_full_forward_pass() -> None:
    model = tiny_llama()
    prompt, max_len, total = 6, 16, 12
    pre = step_graph(model, prompt, max_len)
    dec = step_graph(model, 1, max_len)
    assert [s.name for s in pre.state] == [s.name for s in dec.state] == [
        f"lm.model.layers.{i}.{kv}" for i in range(2) for kv in "kv"]
    ids = torch.randint(0, 96, (1, total), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids).logits[0].numpy()
    n = 4  # a prompt shorter than the prefill graph: padding is never attended to
    padded = np.zeros((1, prompt), np.int64)
    padded[0, :n] = ids[0, :n]
    state: dict = {}
    (logits,) = npuc.interpret(pre, padded, np.array([n]), state=state)
    np.testing.assert_allclose(logits[0], full[n - 1], atol=1e-5)
    for pos in range(n, total):
        (logits,) = npuc.interpret(dec, ids[:, pos:pos + 1].numpy(), np.array([pos]),
                                   state=state)
        np.testing.assert_allclose(logits[0], full[pos], atol=1e-5)


@pytest.fixture(scope="module")
def tiny_lm() -> tuple:
    model = tiny_llama()
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 96, 24).tolist() for _ in range(4)]
    return model, compile_lm(model, "npu-int8", prompt_len=8, max_len=24, calibration=seqs,
                             score_len=12)


def test_the_integer_graphs_share_one_cache_stored_alike(tiny_lm: tuple) -> None:
    _, lm = tiny_lm
    pre, dec = lm.prefill.ir, lm.decode.ir
    assert {s.name: s.type for s in pre.state} == {s.name: s.type for s in dec.state}
    assert all(s.type.dtype.bits <= 16 for s in dec.state)
    assert not [n for n in dec.nodes if n.dtype.is_float and n.op != "dequantize"]
    assert lm.prefill.state is lm.decode.state


def test_generate_greedy_decodes_with_the_integer_graphs(tiny_lm: tuple) -> None:
    model, lm = tiny_lm
    prompt = [5, 17, 42, 3]
    out = lm.generate(prompt, 8)
    assert out[:4] == prompt and len(out) == 12
    # each generated token is the argmax of the integer decode graph at its position
    lm.reset()
    padded = np.zeros((1, 8), np.int64)
    padded[0, :4] = prompt
    logits = lm.prefill.run(padded, np.array([4]))
    for pos in range(4, 12):
        assert out[pos] == int(np.argmax(logits))
        logits = lm.decode.run(np.array([[out[pos]]]), np.array([pos]))
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0]
    assert sum(a == b for a, b in zip(out[4:], ref[4:].tolist(), strict=True)) >= 4
    with pytest.raises(ValueError, match="max_len"):
        lm.generate(prompt, 40)
    with pytest.raises(ValueError, match="prompt_len"):
        lm.generate(list(range(9)), 1)


def test_the_decode_graph_is_bit_exact_in_c_across_calls(tiny_lm: tuple, tmp_path: Path) -> None:
    _, lm = tiny_lm
    tokens = [7, 1, 88, 23, 23, 60]
    calls = [(np.array([[t]]), np.array([p])) for p, t in enumerate(tokens)]
    lm.reset()
    want = [np.asarray(lm.decode.run(*c), np.float32).ravel() for c in calls]
    exe = build(lm.decode.emit_c(tmp_path), FAST)
    got = run(exe, [np.asarray(a, np.float32) for c in calls for a in c],
              [want[0].size] * len(calls))
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert np.array_equal(g.view(np.int32), w.view(np.int32)), f"call {step} differs"


def generate_in_c(exe: Path, prompt: list[int], new: int, *extra: str) -> list[int]:
    result = subprocess.run([str(exe), *extra, str(new), *map(str, prompt)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "time to first token" in result.stderr
    return [int(t) for t in result.stdout.split()]


def test_generate_in_c_equals_generate(tiny_lm: tuple, tmp_path: Path) -> None:
    _, lm = tiny_lm
    exe = build(lm.emit_c(tmp_path), FAST)
    layout = (tmp_path / "model.h").read_text()
    assert "npuc_prefill_run" in layout and "npuc_decode_run" in layout
    # both graphs read one copy of each weight matrix (compile_lm smooths them alike)
    def matrices(view: npuc.codegen.View) -> list[str]:
        return [a.name for a in view.arrays if "rows in GEMM order" in a.comment]

    both = npuc.codegen.build_program({"prefill": lm.prefill.ir, "decode": lm.decode.ir})
    assert len(matrices(both)) == len(matrices(npuc.codegen.build_view(lm.decode.ir))) >= 14
    for prompt, new in (([5, 17, 42, 3], 8), ([9], 12), (list(range(1, 9)), 0), ([2, 2], 1)):
        assert generate_in_c(exe, prompt, new) == lm.generate(prompt, new)
    out = lm.generate([5, 17, 42, 3], 8)
    eos = out[6]
    assert generate_in_c(exe, [5, 17, 42, 3], 8, "--eos", str(eos)) == \
        lm.generate([5, 17, 42, 3], 8, eos=eos)
    for bad in (["1", "96"], ["40", "1", "2"], ["1", *["3"] * 9], ["x", "1"], ["--eos"]):
        result = subprocess.run([str(exe), *bad], capture_output=True, text=True)
        assert result.returncode == 1 and result.stderr


def test_the_scorer_predicts_every_position_as_the_full_forward_pass(tiny_lm: tuple) -> None:
    model, lm = tiny_lm
    ids = [3, 50, 7, 7, 91, 12, 40]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = lm.logits(ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.1 * np.abs(ref).max()  # integer, W8A8
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.5
    float_scorer = npuc.interpreter.interpret(lm.scorer.stages["captured"],
                                              np.array([ids + [0] * 5]), np.array([7]))
    assert np.allclose(np.asarray(float_scorer[0])[:7], ref, atol=1e-5)
    # perplexity: exp of the mean negative log-likelihood, windows of score_len tokens
    text = list(range(1, 30))
    total, count = lm.log_likelihood(text)
    assert count == 29 - 3 and total < 0  # windows of 12, 12, 5: 11 + 11 + 4 predictions
    assert lm.perplexity([text]) == pytest.approx(np.exp(-total / count))
    z = lm.logits(text[:12]).astype(np.float64)
    logp = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(
        1, keepdims=True)
    assert lm.log_likelihood(text[:12])[0] == pytest.approx(logp[np.arange(11), text[1:12]].sum())
    with pytest.raises(ValueError, match="score_len"):
        lm.logits(list(range(13)))
    unscored = dataclasses.replace(lm, scorer=None)  # the same graphs and cache
    with pytest.raises(ValueError, match="score_len="):  # never a perplexity of 1.0
        unscored.perplexity([text])


def test_the_simulator_reports_prefill_and_decode(tiny_lm: tuple) -> None:
    _, lm = tiny_lm
    report = lm.simulate()
    assert report.prefill_s > report.decode_s > 0 and report.tokens_per_s == 1 / report.decode_s
    assert report.cache_bytes == sum(s.type.nbytes for s in lm.decode.ir.state) > 0
    assert "per token" in str(report)
    soc = lm.simulate("soc")  # the same integer graphs on another target
    assert soc.target == "soc" and soc.cache_bytes == report.cache_bytes
    assert soc.decode_s != report.decode_s


def test_carry_names_what_is_wrong() -> None:
    g = step_graph(tiny_llama(1), 1, 8)
    with pytest.raises(GraphError, match="no input named"):
        carry(g, {"nope": 0})
    with pytest.raises(GraphError, match="read as"):
        carry(g, {"ids": 0})  # the ids are not what output 0 (the logits) is


def test_a_two_layer_slice_of_smollm2_matches_transformers_and_lowers_integer_only() -> None:
    from examples.smollm2 import PROMPT, calibration_ids, load, tokenizer

    model = load(2)
    ids = tokenizer()(PROMPT).input_ids
    with torch.no_grad():
        full = model(torch.tensor([ids])).logits[0].numpy()
    pre = step_graph(model, 8, 16)
    padded = np.zeros((1, 8), np.int64)
    padded[0, :len(ids)] = ids
    (logits,) = npuc.interpret(pre, padded, np.array([len(ids)]), state={})
    np.testing.assert_allclose(logits[0], full[-1], atol=1e-4 * np.abs(full).max())
    lm = compile_lm(model, "npu-int8", prompt_len=8, max_len=16,
                    calibration=calibration_ids(2, 16))
    ops = {n.op for n in lm.decode.ir.nodes}
    assert "qlayer_norm" in ops and not [n for n in lm.decode.ir.nodes
                                         if n.dtype.is_float and n.op != "dequantize"]
    assert len(lm.generate(ids, 3)) == len(ids) + 3
