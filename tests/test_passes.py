"""The pass manager and the canonical passes (Before/After as IR text, plus properties)."""

from __future__ import annotations

import numpy as np
import pytest

import npuc
from npuc import passes
from npuc.ir import Graph, structurally_equal
from npuc.pipeline import REGISTRY, PassContext, register_pass
from npuc.printer import print_graph
from tests.conftest import required_options

HEAD = "graph @g(%x: tensor<2x4xf32>) -> (tensor<2x4xf32>) {\n"


def graph_of(body: str, head: str = HEAD) -> Graph:
    return npuc.ir.parse(head + body + "}\n").verify()


def after(name: str, graph: Graph, **options) -> str:
    return print_graph(passes.apply(graph, name, **options).verify(), locs=False)


def test_registry_lists_the_canonical_passes() -> None:
    assert {"dce", "cse", "fold_constants", "remove_noops"} <= set(passes.names())
    assert passes.names() == sorted(passes.names())
    with pytest.raises(KeyError, match="known passes: .*cse"):
        passes.apply(graph_of("  return %x\n"), "fold_everything")


def test_options_are_checked() -> None:
    g = graph_of("  return %x\n")
    with pytest.raises(TypeError, match="options are: max_bytes"):
        passes.apply(g, "fold_constants", max_byte=3)
    with pytest.raises(TypeError, match="max_bytes must be int"):
        passes.apply(g, "fold_constants", max_bytes="many")
    assert passes.parse_pipeline('cse, fold_constants{max_bytes = 64},dce') == [
        ("cse", {}), ("fold_constants", {"max_bytes": 64}), ("dce", {})]


def test_cse_merges_repeats_only() -> None:
    g = graph_of("""\
  %0 = relu(%x) : tensor<2x4xf32>
  %1 = relu(%x) : tensor<2x4xf32>
  %2 = leaky_relu(%x) {alpha = 0.1} : tensor<2x4xf32>
  %3 = leaky_relu(%x) {alpha = 0.2} : tensor<2x4xf32>
  %4 = const {data = [1.0, 2.0, 3.0, 4.0], digest = "D", encoding = "dense"} : tensor<4xf32>
  %5 = const {data = [1.0, 2.0, 3.0, 4.0], digest = "D", encoding = "dense"} : tensor<4xf32>
  %6 = add(%0, %1) : tensor<2x4xf32>
  %7 = add(%2, %3) : tensor<2x4xf32>
  %8 = mul(%6, %4) : tensor<2x4xf32>
  %9 = mul(%7, %5) : tensor<2x4xf32>
  %10 = add(%8, %9) : tensor<2x4xf32>
  return %10
""".replace('"D"', f'"{npuc.ir.digest(np.arange(1, 5, dtype=np.float32))}"'))
    text = after("cse", g)
    assert text.count("= relu(%x)") == 1 and text.count("leaky_relu") == 2
    assert text.count("const") == 1


def test_remove_noops() -> None:
    g = graph_of("""\
  %0 = reshape(%x) {shape = [8]} : tensor<8xf32>
  %1 = reshape(%0) {shape = [4, 2]} : tensor<4x2xf32>
  %2 = permute(%1) {perm = [1, 0]} : tensor<2x4xf32>
  %3 = permute(%2) {perm = [1, 0]} : tensor<4x2xf32>
  %4 = reshape(%3) {shape = [2, 4]} : tensor<2x4xf32>
  %5 = const {data = [0.0], digest = "Z", encoding = "dense"} : tensor<f32>
  %6 = add(%4, %5) : tensor<2x4xf32>
  %7 = slice(%6) {axis = 1, end = 4, start = 0, step = 1} : tensor<2x4xf32>
  %8 = clamp(%7) {max = inf, min = -inf} : tensor<2x4xf32>
  return %8
""".replace('"Z"', f'"{npuc.ir.digest(np.zeros((), np.float32))}"'))
    assert after("remove_noops", g) == HEAD + "  return %x\n}\n"


def test_remove_noops_keeps_broadcasting_add_of_zero() -> None:
    zeros = np.zeros((3, 2, 4), np.float32)
    g = graph_of(f"""\
  %0 = const {{digest = "{npuc.ir.digest(zeros)}", encoding = "dense"}} : tensor<3x2x4xf32>
  %1 = add(%x, %0) : tensor<3x2x4xf32>
  return %1
""", head="graph @g(%x: tensor<2x4xf32>) -> (tensor<3x2x4xf32>) {\n")
    assert "add" in after("remove_noops", g)


def test_fold_constants_respects_max_bytes() -> None:
    g = graph_of("""\
  %0 = const {data = [2.0], digest = "A", encoding = "dense"} : tensor<f32>
  %1 = exp(%0) : tensor<f32>
  %2 = expand(%1) {shape = [2, 4]} : tensor<2x4xf32>
  %3 = mul(%x, %2) : tensor<2x4xf32>
  return %3
""".replace('"A"', f'"{npuc.ir.digest(np.array(2.0, np.float32))}"'))
    small = passes.apply(g, "fold_constants", max_bytes=16)
    assert [n.op for n in small.nodes] == ["input", "const", "expand", "mul"]
    folded = passes.apply(g, "fold_constants")
    assert [n.op for n in folded.nodes] == ["input", "const", "mul"]
    x = np.ones((2, 4), np.float32)
    np.testing.assert_array_equal(npuc.interpret(folded, x)[0], npuc.interpret(g, x)[0])


def test_dce_drops_concat_operands_that_are_sliced_away() -> None:
    g = graph_of("""\
  %0 = exp(%x) : tensor<2x4xf32>
  %1 = concat(%0, %x) {axis = 1} : tensor<2x8xf32>
  %2 = slice(%1) {axis = 1, end = 8, start = 4, step = 1} : tensor<2x4xf32>
  return %2
""")
    assert after("dce", g) == HEAD + "  return %x\n}\n"


def test_passes_never_mutate_their_input() -> None:
    g = graph_of("""\
  %0 = relu(%x) : tensor<2x4xf32>
  %1 = relu(%x) : tensor<2x4xf32>
  %2 = reshape(%0) {shape = [2, 4]} : tensor<2x4xf32>
  %3 = add(%2, %1) : tensor<2x4xf32>
  return %3
""")
    before = print_graph(g, constants=True)
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    for name in passes.names():  # calibration for the passes that collect statistics
        passes.apply(g, name, ctx=PassContext(calibration=[(x,)]), **required_options(name))
    assert print_graph(g, constants=True) == before


def test_failing_pass_reports_its_history() -> None:
    @register_pass("test_break_types")
    def break_types(graph: Graph, ctx: PassContext) -> Graph:
        """Return a graph whose recorded output type is wrong (for this test only)."""
        from dataclasses import replace

        from npuc.ir import TensorType

        out = graph.outputs[0]
        bad = replace(out, type=TensorType((9,), out.dtype))
        return graph.with_outputs((bad,))

    try:
        g = graph_of("  %0 = relu(%x) : tensor<2x4xf32>\n  return %0\n")
        with pytest.raises(passes.PassError, match="(?s)test_break_types failed.*before it: cse"):
            passes.run_pipeline(g, ["cse", "test_break_types"], verify=True)
        passes.run_pipeline(g, ["cse", "test_break_types"], verify=False)  # no check, no error
    finally:
        REGISTRY.pop("test_break_types")


def test_run_pipeline_records_times_and_notes() -> None:
    g = graph_of("  %0 = relu(%x) : tensor<2x4xf32>\n  %1 = relu(%x) : tensor<2x4xf32>\n"
                 "  %2 = add(%0, %1) : tensor<2x4xf32>\n  return %2\n")
    ctx = PassContext()
    out, records = passes.run_pipeline(g, passes.CANONICAL, ctx)
    assert [r.name for r in records] == passes.CANONICAL
    assert all(r.seconds >= 0 for r in records)
    assert "cse: merged 1 duplicate node" in ctx.notes
    assert not structurally_equal(out, g) and len(out.nodes) == len(g.nodes) - 1
