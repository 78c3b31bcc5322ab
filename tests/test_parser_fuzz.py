"""A fuzzer over mutated dumps: whatever the text, `npuc.ir.parse` returns a graph that verifies
(and prints and parses back to the same text) or raises its own ParseError, never another
exception. The dumps are real: the golden files, captured zoo models, and a small quantized
graph with inline constants and meta, so mutations land in every part of the syntax."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import npuc
from npuc.ir import DType, Graph, QuantParams, TensorType, const, graph_input
from npuc.ops import make
from npuc.parser import ParseError
from npuc.printer import print_graph
from tests.models import ZOO

GOLDEN = Path(__file__).parent / "golden"


def _inline_graph() -> str:
    """Quantized types (per tensor and per axis), inline int8/bool/f16 data, and meta."""
    x = graph_input("x", TensorType((2, 3), DType.I8, QuantParams((0.05,), (-3,))))
    w = const(np.arange(-6, 6, dtype=np.int8).reshape(4, 3), DType.I8,
              quant=QuantParams((0.1, 0.2, 0.3, 0.4), (0, 0, 0, 0), axis=0))
    mask = const(np.array([True, False, True]))
    half = const(np.array([0.5, -2.0, 65504.0], np.float16))
    y = make("reshape", [x], {"shape": [3, 2]}, loc="view")
    graph = Graph((x,), (y, make("permute", [w], {"perm": [1, 0]}), mask, half), "inline",
                  {"activation_ranges": {"fc1/linear": (-1.5, 2.25), "act/relu": (0.0, 4.0)},
                   "mobilequant": {"steps": 3, "lr": 0.001, "groups": 1, "rel_error": 0.04}})
    return print_graph(graph, constants=True)


@functools.cache
def corpus() -> tuple[str, ...]:
    texts = [p.read_text() for p in sorted(GOLDEN.glob("*.ir"))]
    for name in ("mlp", "embedding_mlp"):
        model, inputs = ZOO[name]()
        texts.append(str(npuc.capture(model, inputs)))
    texts.append(_inline_graph())
    for text in texts:  # the unmutated dumps parse, or the fuzzer would test nothing
        assert print_graph(npuc.ir.parse(text), constants="data =" in text) == text
    return tuple(texts)


# Tokens that reach the parser's edge cases: out-of-range numbers, brackets, names, types.
SPECIAL = ["[", "]", "{", "}", "(", ")", "<", ">", ",", "=", ":", "%", "%0", "%x", "@", '"', "x",
           "-1", "0", "40000", "1e999", "-1e39", "nan", "inf", "99999999999999999999999",
           "q<axis=0>", "q<0.5:0>", "i8", "f32", "u4", "tensor<>", "return", "meta", "const",
           "loc(", "true", "\\", "\n", "}\n", "  return %0\n"]
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(corpus()))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "duplicate", "replace", "token_delete",
                                     "token_duplicate", "token_replace", "truncate", "nest",
                                     "line_swap", "line_duplicate"]))
        n = len(text)
        if n == 0:
            break
        i = draw(st.integers(0, n - 1))
        j = min(n, i + draw(st.integers(1, 40)))
        if kind == "delete":
            text = text[:i] + text[j:]
        elif kind == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        elif kind == "replace":
            text = text[:i] + draw(st.sampled_from(SPECIAL)) + text[i + 1:]
        elif kind == "truncate":
            text = text[:i]
        elif kind == "nest":
            depth = draw(st.sampled_from([1, 2, 50, 1000]))
            k = draw(st.integers(i, n))
            text = text[:i] + "[" * depth + text[i:k] + "]" * draw(st.sampled_from(
                [0, depth])) + text[k:]
        elif kind.startswith("line"):
            lines = text.split("\n")
            a, b = (draw(st.integers(0, len(lines) - 1)) for _ in range(2))
            if kind == "line_swap":
                lines[a], lines[b] = lines[b], lines[a]
            else:
                lines.insert(b, lines[a])
            text = "\n".join(lines)
        else:
            tokens = _TOKEN.findall(text)
            t = draw(st.integers(0, len(tokens) - 1))
            if kind == "token_delete":
                del tokens[t]
            elif kind == "token_duplicate":
                tokens.insert(t, tokens[t])
            else:
                tokens[t] = draw(st.sampled_from(SPECIAL) | st.sampled_from(tokens))
            text = "".join(tokens)
    return text


@settings(max_examples=max(300, settings.default.max_examples))
@given(mutated())
def test_mutated_dumps_parse_or_raise_parse_error(text: str) -> None:
    try:
        graph = npuc.ir.parse(text)
    except ParseError:
        return
    graph.verify()
    printed = print_graph(graph, constants=True)  # what parses prints and parses back to itself
    assert print_graph(npuc.ir.parse(printed), constants=True) == printed
