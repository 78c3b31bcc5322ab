"""Causal language models with a KV cache: a prefill graph and a decode-step graph that share the
cache as state (`npuc.state`, the mechanism attention-map reuse uses), and greedy generation.

    lm = npuc.compile_lm(model, target="npu-int8", prompt_len=32, max_len=128,
                             calibration=[ids1, ids2, ...])        # token-id sequences
    lm.generate(input_ids, max_new_tokens=16)                      # integer graphs, greedy
    print(lm.simulate())                                           # TTFT, ms/token, tokens/s
    lm.emit_c("out/")        # one C program: make -C out && out/model 16 <prompt ids>
    # with score_len=64: lm.perplexity([ids, ...]), lm.logits(ids) by a third graph

The model is a Llama-family `transformers` causal LM (Llama, SmolLM, Qwen2, Mistral: RMSNorm,
rotary positions, grouped-query attention, a gated MLP). `LlamaStep` calls its own modules (so
module paths stay the model's) in a form with static shapes: the cache holds `max_len`
positions per layer, a call attends over all of them with the positions not yet written masked
out, and writes its keys and values in place (`where` the position matches, a data move). The
prefill graph takes the prompt padded to `prompt_len` and the number of real tokens, writes
cache positions 0..prompt_len-1 (padding included: those entries are overwritten by the decode
steps before any query can see them) and returns the logits of the last real token; the decode
graph takes one token and its position. Rotary tables are constants indexed by the position.

Both graphs store the cache with one set of parameters: its range is measured on the float
graphs over the calibration sequences, then given to both quantize passes (`state_ranges`);
and they smooth alike (smoothquant's activation profiles measured over both graphs' calls), so
their weights are the same and the C program stores them once.
Products stay int16 into the next GEMM unless `passes` says otherwise (see `compile_lm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .driver import CompiledModel, compile, summarize
from .frontend import capture
from .interpreter import interpret
from .ir import Graph
from .state import carry


class LlamaStep(torch.nn.Module):
    """One call of a Llama-family causal LM with its KV cache as explicit arguments.

    prefill (`tokens` > 1): forward(ids (1, tokens), where (1,), *cache) -> (logits of token
    where - 1 (1, vocab), *cache'): `where` counts the real tokens, at positions 0..tokens-1;
    with `every_logit`, the logits of every position (tokens, vocab) (a scorer: perplexity).
    decode (`tokens` == 1): forward(ids (1, 1), where (1,), *cache) -> (logits (1, vocab),
    *cache'): `where` is the token's position.
    cache: per layer, keys then values, (1, kv_heads, max_len, head_dim) each.
    """

    def __init__(self, model: torch.nn.Module, tokens: int, max_len: int,
                 every_logit: bool = False) -> None:
        super().__init__()
        cfg = model.config
        self.lm, self.tokens, self.max_len = model, tokens, max_len
        self.every_logit = every_logit
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        if tokens > max_len:
            raise ValueError(f"LlamaStep: {tokens} prompt tokens exceed the cache's {max_len}")
        with torch.no_grad():
            probe = torch.zeros(1, max_len, self.head_dim)
            cos, sin = model.model.rotary_emb(probe, torch.arange(max_len)[None])
        self.register_buffer("cos_table", cos[0].float().clone(), persistent=False)
        self.register_buffer("sin_table", sin[0].float().clone(), persistent=False)
        self.register_buffer("slots", torch.arange(max_len), persistent=False)

    def cache_shape(self) -> tuple[int, ...]:
        return (1, self.kv_heads, self.max_len, self.head_dim)

    def forward(self, ids: torch.Tensor, where: torch.Tensor,
                *cache: torch.Tensor) -> tuple[torch.Tensor, ...]:
        t, d = self.tokens, self.head_dim
        decode = t == 1
        if decode:  # the one token at position `where`
            cos, sin = F.embedding(where, self.cos_table), F.embedding(where, self.sin_table)
            visible = (self.slots <= where)[None, :]  # (1, max_len)
            write = (self.slots == where)[None, None, :, None]
        else:  # positions 0..t-1, causal
            cos, sin = self.cos_table[:t], self.sin_table[:t]
            visible = torch.arange(t)[:, None] >= self.slots[None, :]  # (t, max_len)
        cos, sin = cos[None, None], sin[None, None]  # (1, 1, t, d)
        model = self.lm.model
        h = model.embed_tokens(ids)
        out_cache = []
        for i, layer in enumerate(model.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(1, t, self.heads, d).transpose(1, 2)
            k = attn.k_proj(x).view(1, t, self.kv_heads, d).transpose(1, 2)
            v = attn.v_proj(x).view(1, t, self.kv_heads, d).transpose(1, 2)
            q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
            k_old, v_old = cache[2 * i], cache[2 * i + 1]
            if decode:
                k_all = torch.where(write, k, k_old)
                v_all = torch.where(write, v, v_old)
            else:
                k_all = torch.cat([k, k_old[:, :, t:]], dim=2)
                v_all = torch.cat([v, v_old[:, :, t:]], dim=2)
            out_cache += [k_all, v_all]
            # grouped-query attention without copying the cache: query heads grouped by the
            # key head they share, (1, kv_heads, group * t, d)
            group = self.heads // self.kv_heads
            qg = q.reshape(1, self.kv_heads, group * t, d)
            scores = torch.matmul(qg, k_all.transpose(2, 3)) * attn.scaling
            mask = visible.expand(group, t, self.max_len).reshape(1, 1, group * t, self.max_len)
            scores = torch.where(mask, scores, torch.tensor(float("-inf")))
            o = torch.matmul(torch.softmax(scores, dim=-1), v_all)
            o = o.reshape(1, self.heads, t, d).transpose(1, 2).reshape(1, t, self.heads * d)
            h = h + attn.o_proj(o)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        if not decode and not self.every_logit:  # the last real token's hidden state
            h = torch.index_select(h, 1, where - 1)
        logits = self.lm.lm_head(model.norm(h))
        return (logits.reshape(-1 if self.every_logit else 1, logits.shape[-1]), *out_cache)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def step_graph(model: torch.nn.Module, tokens: int, max_len: int,
               every_logit: bool = False) -> Graph:
    """The captured float graph of `LlamaStep(model, tokens, max_len, every_logit)`, its cache
    as state slots named "<layer>.k" / "<layer>.v" (shared by the prefill and decode graphs)."""
    step = LlamaStep(model, tokens, max_len, every_logit).eval()
    layers = len(model.model.layers)
    cache = [torch.zeros(step.cache_shape()) for _ in range(2 * layers)]
    ids = torch.zeros(1, tokens, dtype=torch.long)
    where = torch.tensor([tokens if tokens > 1 else 0])
    graph = capture(step, (ids, where, *cache))
    names = [n.attrs["name"] for n in graph.inputs[2:]]
    slots = {name: 1 + i for i, name in enumerate(names)}
    return carry(graph, slots, {name: f"lm.model.layers.{i // 2}.{'kv'[i % 2]}"
                                for i, name in enumerate(names)})


@dataclass(frozen=True)
class LMReport:
    """Simulated cost of a prompt and of each generated token."""

    target: str
    prefill_s: float  # time to first token (the whole padded prompt)
    decode_s: float  # per generated token
    prefill_j: float
    decode_j: float
    cache_bytes: int
    weight_bytes: int

    @property
    def tokens_per_s(self) -> float:
        return 1.0 / self.decode_s

    def __str__(self) -> str:
        return (f"{self.target}: time to first token {self.prefill_s * 1e3:.2f} ms, "
                f"{self.decode_s * 1e3:.2f} ms per token ({self.tokens_per_s:.1f} tokens/s), "
                f"{self.decode_j * 1e3:.3f} mJ per token; KV cache {self.cache_bytes:,} B, "
                f"weights {self.weight_bytes:,} B")


@dataclass
class CompiledLM:
    """A prefill and a decode graph compiled for one target, sharing one KV cache."""

    prefill: CompiledModel
    decode: CompiledModel
    prompt_len: int
    max_len: int
    state: dict[str, np.ndarray] = field(default_factory=dict)
    scorer: CompiledModel | None = None  # every position's logits (compile_lm's score_len)

    def __post_init__(self) -> None:
        self.prefill.state = self.decode.state = self.state  # one cache, two graphs

    def reset(self) -> None:
        self.state.clear()

    def generate(self, input_ids: Sequence[int] | torch.Tensor, max_new_tokens: int,
                 eos: int | None = None) -> list[int]:
        """Greedy decoding with the compiled graphs: the prompt's ids, then the new ones."""
        ids = [int(i) for i in np.asarray(input_ids).reshape(-1)]
        if not 0 < len(ids) <= self.prompt_len:
            raise ValueError(f"generate: a prompt of 1..{self.prompt_len} tokens (prompt_len), "
                             f"got {len(ids)}")
        if len(ids) + max_new_tokens > self.max_len:
            raise ValueError(f"generate: {len(ids)} + {max_new_tokens} tokens exceed the "
                             f"cache's {self.max_len} positions (max_len)")
        self.reset()
        padded = np.zeros((1, self.prompt_len), np.int64)
        padded[0, :len(ids)] = ids
        logits = self.prefill.run(padded, np.array([len(ids)]))
        out = list(ids)
        for _ in range(max_new_tokens):
            token = int(np.argmax(logits))
            out.append(token)
            if token == eos or len(out) == len(ids) + max_new_tokens:
                break
            logits = self.decode.run(np.array([[token]]), np.array([len(out) - 1]))
        return out

    @property
    def score_len(self) -> int:
        """The scorer's window: how many token ids one `logits` call takes."""
        if self.scorer is None:
            raise ValueError("compile_lm(..., score_len=N) compiles the scoring graph that "
                             "logits, log_likelihood and perplexity use")
        return self.scorer.ir.inputs[0].shape[-1]

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """The scorer's logits (len(ids), vocab) after each of up to score_len token ids: what
        the integer graphs predict at every position of a text, in one call."""
        width = self.score_len
        ids = [int(i) for i in ids]
        if not 0 < len(ids) <= width:
            raise ValueError(f"logits: 1..{width} token ids (score_len), got {len(ids)}")
        padded = np.zeros((1, width), np.int64)
        padded[0, :len(ids)] = ids
        self.scorer.reset()  # each call a text of its own
        return np.asarray(self.scorer.run(padded, np.array([len(ids)])))[:len(ids)]

    def log_likelihood(self, ids: Sequence[int]) -> tuple[float, int]:
        """The sum of ln p(token | the tokens before it in its window) over `ids`, and how many
        tokens it counts: windows of score_len tokens, each predicting all but its first."""
        width = self.score_len
        total, count = 0.0, 0
        for start in range(0, len(ids) - 1, width):
            window = [int(i) for i in ids[start:start + width]]
            if len(window) < 2:
                break
            z = self.logits(window).astype(np.float64)[:-1]
            z -= z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            total += float(logp[np.arange(len(window) - 1), window[1:]].sum())
            count += len(window) - 1
        return total, count

    def perplexity(self, sequences: Sequence[Sequence[int]]) -> float:
        """exp of the mean negative log-likelihood per token over `sequences` (log_likelihood)."""
        parts = [self.log_likelihood(seq) for seq in sequences]
        return float(np.exp(-sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)))

    def emit_c(self, out_dir: Any) -> Any:
        """One C99 project of both graphs on one KV cache (`npuc.codegen.emit_program`): `make`
        builds `./model [--eos ID] max_new_tokens id ...`, which prints the ids `generate`
        returns (and the time to first token and per decoded token). Returns the directory."""
        from npuc.codegen import emit_program

        return emit_program({"prefill": self.prefill.ir, "decode": self.decode.ir}, out_dir,
                            main="generate.c", target=self.decode.target,
                            pipeline=tuple(r.name for r in self.decode.records),
                            prompt_len=self.prompt_len, max_len=self.max_len,
                            vocab=self.decode.ir.outputs[0].type.size)

    def simulate(self, target: Any = None) -> LMReport:
        """The simulated cost of a prompt and of each decoded token on the compiled target, or
        the same integer graphs on another `target` (a name or a loaded target: "soc")."""
        from npuc import targets
        from npuc.simulator import simulate

        target = self.decode.target if target is None else targets.get(target)
        pre, dec = (simulate(g.ir, target) for g in (self.prefill, self.decode))
        return LMReport(target.name, pre.latency_s, dec.latency_s, pre.energy_j, dec.energy_j,
                        sum(s.type.nbytes for s in self.decode.ir.state),
                        summarize(self.decode.ir).weight_bytes)


def calibration_calls(sequences: Sequence[Sequence[int]], prompt_len: int,
                      max_len: int) -> tuple[list[tuple], list[tuple]]:
    """Prefill calls (the first prompt_len tokens of each sequence) and decode calls (every
    token of every sequence, from position 0: one sequence of calls whose cache is right)."""
    prefill, decode = [], []
    for seq in sequences:
        seq = [int(i) for i in seq][:max_len]
        head = np.zeros((1, prompt_len), np.int64)
        n = min(len(seq), prompt_len)
        head[0, :n] = seq[:n]
        prefill.append((head, np.array([n])))
        decode += [(np.array([[tok]]), np.array([pos])) for pos, tok in enumerate(seq)]
    return prefill, decode


def state_ranges(graph: Graph, calls: list[tuple]) -> dict[str, tuple[float, float]]:
    """Per state slot, the range its values take over a sequence of calls (float graph)."""
    state: dict[str, np.ndarray] = {}
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    for call in calls:
        interpret(graph, *call, state=state)
        for name, value in state.items():
            lo[name] = min(lo.get(name, 0.0), float(value.min()))
            hi[name] = max(hi.get(name, 0.0), float(value.max()))
    return {name: (lo[name], hi[name]) for name in state}


def compile_lm(model: torch.nn.Module, target: Any = "npu-int8", *, prompt_len: int = 32,
               max_len: int = 128, calibration: Sequence[Sequence[int]],
               passes: dict[str, dict[str, Any]] | None = None,
               decode_calibration: int = 256, score_len: int | None = None) -> CompiledLM:
    """Compile a Llama-family causal LM into prefill and decode graphs for `target`.

    calibration: token-id sequences (real text); the prefill graph calibrates on their first
    `prompt_len` tokens, the decode graph on up to `decode_calibration` of their tokens, one
    call per token. passes: options for the target pipeline's passes ({"quantize": {...}}); by
    default quantize keeps products ("mul") int16 into the next GEMM, beside the target's own
    int16 ops. score_len: also compile a scorer of that many tokens giving every position's
    logits (`CompiledLM.logits`, `.perplexity`), quantized as the other two (one smoothing, one
    cache range)."""
    from npuc import targets

    target = targets.get(target)
    prefill_graph = step_graph(model, prompt_len, max_len)
    decode_graph = step_graph(model, 1, max_len)
    pre_calls, dec_calls = calibration_calls(calibration, prompt_len, max_len)
    dec_calls = dec_calls[:decode_calibration]
    graphs = [(prefill_graph, pre_calls), (decode_graph, dec_calls)]
    if score_len is not None:
        graphs.append((step_graph(model, score_len, score_len, every_logit=True),
                       calibration_calls(calibration, score_len, score_len)[0]))
    options = {k: dict(v) for k, v in (passes or {}).items()}
    if "quantize" in target.pipeline:
        # products stay int16 into the next GEMM (16x8 MACs): the gated MLP's silu(gate) * up,
        # the down projection's input, carries the outliers 8 bits lose (SmolLM2 W8A8 answers
        # like fp32 with it, not without)
        defaults = getattr(target, "quantize", None) or {}
        quant = options.setdefault("quantize", {})
        for key in ("int16", "int16_mac"):
            quant.setdefault(key, [*defaults.get(key, ()), "mul"])
        if "smoothquant" in target.pipeline:
            # one set of activation profiles for both graphs: they smooth alike, so their
            # weights are the same and the C program stores them once
            smooth = options.setdefault("smoothquant", {})
            if "profiles" not in smooth:
                smooth["profiles"] = _shared_profiles(target, options, graphs)
        ranges: dict[str, tuple[float, float]] = {}
        for graph, calls in graphs:
            for name, (lo, hi) in state_ranges(graph, calls).items():
                a, b = ranges.get(name, (lo, hi))
                ranges[name] = (min(a, lo), max(b, hi))
        quant["state_ranges"] = ranges
    pre, dec, *score = (compile(graph, target=target, calibration=calls, passes=options or None)
                        for graph, calls in graphs)
    return CompiledLM(pre, dec, prompt_len, max_len, scorer=score[0] if score else None)


def _shared_profiles(target: Any, options: dict[str, dict[str, Any]],
                     graphs: list[tuple[Graph, list[tuple]]]) -> dict:
    """smoothquant's activation profiles over both graphs' calls, measured where smoothquant
    would see them: after the target's passes before it."""
    from npuc.passes.smoothquant import shared_profiles
    from npuc.pipeline import run_pipeline

    before = [(name, options.get(name, {}))
              for name in target.pipeline[:target.pipeline.index("smoothquant")]]
    ready = [(run_pipeline(graph, before, calibration=calls, target=target)[0], calls)
             for graph, calls in graphs]
    return shared_profiles(ready, options["smoothquant"].get("shared_norms", True))
