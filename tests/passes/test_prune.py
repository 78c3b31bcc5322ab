"""The pruning passes' contracts on random graphs (tests/strategies.py): prune_magnitude zeroes
exactly the fraction asked, the smallest first; prune_nm leaves at most n nonzeros in every m
consecutive input channels, the largest; prune_channels gives a graph that verifies through
residuals, concats and depthwise/grouped convs, shrinks every producer by exactly the channels
it removes and is exact when those channels are zero. Also the notes, `layers=`, bias
correction, the finetune= callback and the option errors. Zoo models through the npu-int8
pipeline into bit-exact C: tests/passes/test_compressed_zoo.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import npuc
from npuc import passes
from npuc.driver import summarize
from npuc.ir import DType, Graph, Node, TensorType, const, graph_input
from npuc.ops import make
from npuc.passes.calibration import CalibrationError
from npuc.passes.channels import Channels, Unit
from npuc.passes.prune import count, weight_layers
from npuc.rewrite import rewrite
from tests.passes.contract import assert_close, text
from tests.passes.motifs import chains
from tests.strategies import channel_nets, graph_and_inputs, headed_graphs

FAST = settings(max_examples=30, deadline=None)
LAYER_OPS = ("conv", "conv_transpose", "linear", "matmul")
WEIGHTED = ["conv", "linear", "matmul", "conv_transpose", "batch_norm", "unary", "binary",
            "pool", "reshape", "permute", "concat"]
GRAPHS = st.one_of(graph_and_inputs(families=WEIGHTED),
                   chains([["conv", "linear"], ["unary", "batch_norm", "skip"]]),
                   chains([["linear", "matmul"], ["unary", "skip"]], layout="nlc"))
FRACTIONS = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 0.75, 0.9, 1.0]),
                      st.floats(0, 1, allow_nan=False))


def run(graph: Graph, name: str, inputs: tuple | None = None, **options: object
        ) -> tuple[Graph, str]:
    """Apply the pass (calibrated on `inputs` when given); check it left its input alone and
    the result verifies. Returns the result and its note."""
    before = text(graph)
    ctx = passes.PassContext(calibration=[inputs] if inputs is not None else None)
    result = passes.apply(graph, name, ctx=ctx, **options).verify()
    assert text(graph) == before, f"{name} mutated its input"
    return result, "\n".join(ctx.notes)


def layer_weights(graph: Graph) -> dict[str, np.ndarray]:
    """Each weighted layer's weight by its position among the layers (graph order is kept)."""
    return {f"{k}:{n.op}": n.inputs[1].data for k, n in enumerate(weight_layers(graph))}


def same_but_weights(a: Graph, b: Graph) -> None:
    """The same ops, shapes and constants, but for the layers' weights."""
    def blank(node: Node) -> Node | None:
        layer = node.op in LAYER_OPS and node.inputs[1].is_const
        if not layer:
            return None
        w = node.inputs[1]
        return node.with_inputs((node.inputs[0], const(np.zeros(w.shape, w.dtype.numpy), w.dtype),
                                 *node.inputs[2:]))

    assert text(rewrite(a, blank)) == text(rewrite(b, blank))


# ------------------------------------------------------------------ prune_magnitude


@FAST
@given(GRAPHS, FRACTIONS, st.sampled_from(["layer", "global"]))
def test_magnitude_zeroes_exactly_the_fraction_asked(case: tuple, sparsity: float,
                                                    scope: str) -> None:
    graph, inputs = case
    result, note = run(graph, "prune_magnitude", inputs, sparsity=sparsity, scope=scope,
                       bias_correction=False)
    same_but_weights(graph, result)
    before, after = layer_weights(graph), layer_weights(result)
    pools = [[k] for k in before] if scope == "layer" else [list(before)]
    for keys in pools:
        old = np.concatenate([before[k].ravel() for k in keys]) if keys else np.zeros(0)
        new = np.concatenate([after[k].ravel() for k in keys]) if keys else np.zeros(0)
        zeros = int(np.sum(old == 0))
        assert int(np.sum(new == 0)) == max(count(sparsity, old.size), zeros)
        kept = new != 0
        assert np.array_equal(new[kept], old[kept])  # survivors keep their values
        if kept.any() and (~kept).any():  # the smallest go first
            assert np.abs(old[~kept]).max() <= np.abs(old[kept]).min()
    zeros = sum(int(np.sum(w == 0)) for w in after.values())
    total = sum(w.size for w in after.values())
    if total:
        assert f"{zeros / total:.1%} of {total:,} weights zero" in note
    again, _ = run(result, "prune_magnitude", inputs, sparsity=sparsity, scope=scope)
    assert text(again) == text(result)  # idempotent (bias correction has nothing to add)


def test_global_scope_takes_more_from_the_smaller_layer() -> None:
    x = graph_input("x", TensorType((2, 8), DType.F32))
    small = const(np.linspace(0.01, 0.1, 64, dtype=np.float32).reshape(8, 8), loc="a.weight")
    big = const(np.linspace(1, 2, 64, dtype=np.float32).reshape(8, 8), loc="b.weight")
    graph = Graph((x,), (make("linear", [make("linear", [x, small], loc="a"), big], loc="b"),))
    result, _ = run(graph, "prune_magnitude", sparsity=0.5, scope="global")
    a, b = (n.inputs[1].data for n in weight_layers(result))
    assert np.all(a == 0) and np.all(b != 0)
    result, _ = run(graph, "prune_magnitude", sparsity=0.5, scope="layer")
    assert all(np.sum(n.inputs[1].data == 0) == 32 for n in weight_layers(result))


# ------------------------------------------------------------------ prune_nm


def groups_of(layer: Node, w: np.ndarray, m: int) -> np.ndarray:
    """The weight's runs of m consecutive input channels (the partial last run padded with
    zeros), written out per layer kind independently of the pass: (runs, m)."""
    if layer.op == "linear":
        rows = w
    elif layer.op == "matmul":
        rows = np.moveaxis(w, -2, -1).reshape(-1, w.shape[-2])
    elif layer.op == "conv":
        rows = np.moveaxis(w, 1, -1).reshape(-1, w.shape[1])
    else:  # conv_transpose (Cin, Og, *k): the Cin / groups inputs of one group
        g = layer.attrs["groups"]
        rows = np.moveaxis(w.reshape((g, w.shape[0] // g) + w.shape[1:]), 1, -1)
        rows = rows.reshape(-1, w.shape[0] // g)
    pad = -rows.shape[1] % m
    return np.pad(rows, ((0, 0), (0, pad))).reshape(-1, m)


@FAST
@given(GRAPHS, st.sampled_from([(2, 4), (1, 4), (4, 8), (1, 2), (0, 3), (3, 3)]))
def test_nm_pattern_holds(case: tuple, nm: tuple[int, int]) -> None:
    graph, inputs = case
    n, m = nm
    result, note = run(graph, "prune_nm", inputs, n=n, m=m, bias_correction=False)
    same_but_weights(graph, result)
    for old_layer, new_layer in zip(weight_layers(graph), weight_layers(result), strict=True):
        old = groups_of(old_layer, old_layer.inputs[1].data, m)
        new = groups_of(new_layer, new_layer.inputs[1].data, m)
        assert np.all(np.sum(new != 0, axis=1) <= n)
        kept = new != 0
        assert np.array_equal(new[kept], old[kept])
        # every run keeps min(n, its nonzeros), the largest magnitudes (ties: any of them)
        assert np.array_equal(kept.sum(axis=1), np.minimum(n, (old != 0).sum(axis=1)))
        smallest_kept = np.where(kept, np.abs(old), np.inf).min(axis=1)
        largest_removed = np.where(kept, 0, np.abs(old)).max(axis=1)
        assert np.all(largest_removed <= smallest_kept)
    assert f"prune_nm {n}:{m}:" in note
    again, _ = run(result, "prune_nm", inputs, n=n, m=m)
    assert text(again) == text(result)


def test_nm_groups_run_along_the_input_channels_of_a_conv() -> None:
    """conv (O, C, kh, kw): the groups are m consecutive channels c of one (o, i, j), not m
    consecutive taps."""
    x = graph_input("x", TensorType((1, 8, 5, 5), DType.F32))
    w = np.random.default_rng(0).normal(size=(3, 8, 3, 3)).astype(np.float32)
    attrs = {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1}
    graph = Graph((x,), (make("conv", [x, const(w)], attrs, "c"),))
    pruned = weight_layers(run(graph, "prune_nm", n=2, m=4)[0])[0].inputs[1].data
    along_c = (pruned != 0).reshape(3, 2, 4, 3, 3).sum(axis=2)
    assert np.all(along_c == 2)


# ------------------------------------------------------------------ prune_channels


def zero_units(ch: Channels, units: list[Unit]) -> Graph:
    """The analysed graph with the units' channels made zero: their producers' rows and biases,
    and every per-channel constant of an op on the way (a BN's scale and shift, a per-channel
    shift or scale, a depthwise conv's taps and bias) zeroed at the removed channels."""
    def zero(node: Node, orig: Node) -> Node | None:
        out_axes = {a: ch.removed_mask(orig, a, units) for a in ch.maps.get(orig, {})}
        out_axes = {a: gone for a, gone in out_axes.items() if gone.any()}
        if not out_axes or node.op == "concat":
            return None
        inputs = list(node.inputs)
        layer = node.op in ("conv", "linear")
        for k, c in enumerate(inputs):
            if not c.is_const or (k == 0 and layer):
                continue
            data = np.array(c.data)
            for axis, gone in out_axes.items():
                if layer:  # weight and bias: output channels on their axis 0
                    if axis == (len(node.shape) - 1 if node.op == "linear" else 1):
                        data[gone] = 0
                elif node.op == "batch_norm" and data.shape == (len(gone),):
                    if k in (1, 2):  # gamma, beta
                        data[gone] = 0
                else:
                    a = axis - (len(node.shape) - data.ndim)
                    if a >= 0 and data.shape[a] == len(gone):
                        data[(slice(None),) * a + (gone,)] = 0
            inputs[k] = const(data, c.dtype, c.loc)
        return node.with_inputs(tuple(inputs))

    return rewrite(ch.graph, zero, origin=True)


@FAST
@given(channel_nets(), st.sampled_from([0.25, 0.5, 0.75]), st.sampled_from(["l1", "l2"]))
def test_channels_exact_when_the_removed_channels_are_zero(case: tuple, sparsity: float,
                                                          criterion: str) -> None:
    """Per prunable group the fraction asked of its units is made zero; prune_channels then
    removes exactly those (their norm is 0), every producer shrinks by them, and the outputs
    are the zeroed graph's."""
    graph, inputs = case
    ch = Channels(graph)
    units = [u for g in ch.groups if g.prunable
             for u in g.units[:min(count(sparsity, len(g.units)), len(g.units) - 1)]]
    assume(not ch.emptied(units))
    zeroed = zero_units(ch, units)
    result, note = run(zeroed, "prune_channels", inputs, sparsity=sparsity, criterion=criterion)
    assert_close(npuc.interpret(result, *inputs), npuc.interpret(zeroed, *inputs))
    layers = {n.loc: n for n in result.nodes if n.op in ("conv", "linear")}
    for p in ch.producers:
        gone = sum(1 for u in units for q, _ in u if q is p)
        axis = len(p.shape) - 1 if p.op == "linear" else 1
        assert layers[p.loc].shape[axis] == p.shape[axis] - gone, p.loc
    assert f"removed {len(units)} of" in note


@FAST
@given(headed_graphs(families=WEIGHTED + ["slice", "reduce", "prelu", "group_norm", "glu",
                                          "flip", "expand"]),
       FRACTIONS, st.sampled_from(["l1", "l2", "importance"]), st.sampled_from([1, 2]))
def test_channels_valid_on_random_graphs(case: tuple, sparsity: float, criterion: str,
                                         multiple: int) -> None:
    """Any graph, any fraction: the result verifies, keeps the output shapes, never grows, and
    removes no channel of a pinned group."""
    graph, inputs = case
    result, note = run(graph, "prune_channels", inputs, sparsity=sparsity, criterion=criterion,
                       multiple=multiple)
    assert [o.shape for o in result.outputs] == [o.shape for o in graph.outputs]
    before, after = summarize(graph), summarize(result)
    assert after.macs <= before.macs and after.params <= before.params
    ch = Channels(graph)
    width = {(n.op, n.loc): n.shape for n in result.nodes if n.op in LAYER_OPS}
    for group in ch.groups:
        lost = set()
        for p in group.producers:
            axis = len(p.shape) - 1 if p.op in ("linear", "matmul") else 1
            new = width.get((p.op, p.loc))
            if new is not None and len(new) == len(p.shape):
                lost.add(p.shape[axis] - new[axis])
        if group.reason is not None:
            assert lost <= {0}, (group, lost)
    if sparsity == 0:
        assert text(result) == text(graph)
    assert "prune_channels (" in note and "output rel. error" in note


def test_channels_ties_a_residual_and_keeps_a_multiple() -> None:
    """conv a and conv b meet in an add: both lose the same channels; `multiple` rounds the
    kept count to the nearest multiple (10 * 0.7 = 7 kept -> 8)."""
    rng = np.random.default_rng(1)
    x = graph_input("x", TensorType((1, 3, 6, 6), DType.F32))
    attrs = {"stride": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1}

    def conv(v: Node, cout: int, loc: str) -> Node:
        w = rng.normal(size=(cout, v.shape[1], 3, 3)).astype(np.float32)
        return make("conv", [v, const(w, loc=f"{loc}.weight"),
                             const(rng.normal(size=cout).astype(np.float32))], attrs, loc)

    a = conv(x, 10, "a")
    b = conv(make("relu", [conv(make("relu", [a]), 10, "mid")]), 10, "b")
    graph = Graph((x,), (conv(make("relu", [make("add", [a, b])]), 2, "head"),))
    result, _ = run(graph, "prune_channels", sparsity=0.3, multiple=4)
    widths = {n.loc: n.shape[1] for n in result.nodes if n.op == "conv"}
    assert widths == {"a": 8, "b": 8, "mid": 8, "head": 2}


def test_channels_by_importance_remove_a_dead_channel_without_a_trace() -> None:
    """A channel that a ReLU keeps at zero on the data scores 0 by importance (its weights
    are not small, so l1 keeps it) and goes with the output unchanged."""
    rng = np.random.default_rng(2)
    x = graph_input("x", TensorType((4, 6), DType.F32))
    w1 = rng.normal(size=(5, 6)).astype(np.float32)
    b1 = np.ones(5, np.float32)
    w1[3], b1[3] = 5 * np.abs(w1[3]), -100.0  # x in [0, 1): channel 3 is always negative
    hidden = make("relu", [make("linear", [x, const(w1), const(b1)], loc="fc1")])
    graph = Graph((x,), (make("linear", [hidden, const(rng.normal(size=(2, 5)).astype("f4"))],
                              loc="fc2"),))
    data = (rng.random((4, 6)).astype(np.float32),)
    for criterion, dead_removed in (("importance", True), ("l1", False)):
        result, _ = run(graph, "prune_channels", data, sparsity=0.2, criterion=criterion)
        fc1 = weight_layers(result)[0].inputs[1].data
        assert fc1.shape == (4, 6)
        assert (not any(np.array_equal(row, w1[3]) for row in fc1)) == dead_removed
    result, _ = run(graph, "prune_channels", data, sparsity=0.2, criterion="importance")
    assert_close(npuc.interpret(result, *data), npuc.interpret(graph, *data))


# ------------------------------------------------------------------ shared behaviour


def mlp(seed: int = 3) -> tuple[Graph, tuple]:
    rng = np.random.default_rng(seed)
    x = graph_input("x", TensorType((8, 12), DType.F32))
    h = make("relu", [make("linear", [x, const(rng.normal(size=(16, 12)).astype("f4"),
                                               loc="enc.0.weight"),
                                      const(rng.normal(size=16).astype("f4"))], loc="enc.0")])
    y = make("linear", [h, const(rng.normal(size=(4, 16)).astype("f4")),
                        const(np.zeros(4, np.float32))], loc="head")
    return Graph((x,), (y,)), (rng.random((8, 12)).astype(np.float32) + 0.5,)


@pytest.mark.parametrize("name, options", [
    ("prune_magnitude", {"sparsity": 0.6}), ("prune_nm", {"n": 1, "m": 4}),
    ("prune_channels", {"sparsity": 0.5})])
def test_layers_globs_choose_the_layers(name: str, options: dict) -> None:
    graph, inputs = mlp()
    result, _ = run(graph, name, inputs, layers=["enc.*"], **options)
    enc, head = weight_layers(result)
    assert np.sum(enc.inputs[1].data == 0) > 0 or enc.inputs[1].shape[0] < 16
    if name != "prune_channels":  # channel pruning shrinks the head's inputs, never its rows
        assert np.array_equal(head.inputs[1].data, weight_layers(graph)[1].inputs[1].data)
    assert head.shape == weight_layers(graph)[1].shape


@pytest.mark.parametrize("name, options", [
    ("prune_magnitude", {"sparsity": 0.5}), ("prune_nm", {"n": 2, "m": 4})])
def test_bias_correction_keeps_the_mean_output_of_a_linear(name: str, options: dict) -> None:
    graph, inputs = mlp()
    corrected, note = run(graph, name, inputs, bias_correction=True, **options)
    plain, _ = run(graph, name, inputs, bias_correction=False, **options)
    assert "biases corrected" in note
    first = [npuc.interpret(Graph(g.inputs, (weight_layers(g)[0],)), *inputs)[0]
             for g in (graph, corrected, plain)]
    np.testing.assert_allclose(first[1].mean(axis=0), first[0].mean(axis=0), atol=1e-4)
    assert not np.allclose(first[2].mean(axis=0), first[0].mean(axis=0), atol=1e-2)


@pytest.mark.parametrize("name, options", [
    ("prune_magnitude", {"sparsity": 0.75}), ("prune_nm", {"n": 1, "m": 4})])
@pytest.mark.parametrize("seed", range(4))
def test_measured_bias_correction_keeps_the_smaller_error(name: str, options: dict,
                                                          seed: int) -> None:
    """By default the correction is measured: the result is whichever of with and without has
    the smaller output error on the calibration data."""
    from npuc.passes.prune import output_error

    graph, inputs = mlp(seed)
    chosen, _ = run(graph, name, inputs, **options)
    errors = [output_error(graph, run(graph, name, inputs, bias_correction=b, **options)[0],
                           [inputs]) for b in (True, False)]
    assert output_error(graph, chosen, [inputs]) == pytest.approx(min(errors), rel=1e-12)


def fan_out() -> tuple[Graph, tuple]:
    """Two layers reading one value (Q and K after a LayerNorm, a residual block's conv and its
    shortcut): x -> relu(linear) -> two heads."""
    rng = np.random.default_rng(5)
    x = graph_input("x", TensorType((8, 12), DType.F32))
    h = make("relu", [make("linear", [x, const(rng.normal(size=(8, 12)).astype("f4")),
                                      const(np.ones(8, np.float32))], loc="enc")])
    heads = tuple(make("linear", [h, const(rng.normal(size=(3, 8)).astype("f4")),
                                  const(np.zeros(3, np.float32))], loc=f"head{k}")
                  for k in range(2))
    return Graph((x,), heads), (rng.random((8, 12)).astype(np.float32) + 0.5,)


@pytest.mark.parametrize("name, options, corrected", [
    ("prune_magnitude", {"sparsity": 0.5, "layers": ["head*"], "bias_correction": True}, 2),
    ("prune_nm", {"n": 1, "m": 4, "layers": ["head*"], "bias_correction": True}, 2),
    ("prune_channels", {"sparsity": 0.5, "bias_correction": True}, 2)])
def test_bias_correction_reaches_every_layer_reading_a_shared_input(
        name: str, options: dict, corrected: int) -> None:
    """Every layer that reads the same value gets its bias corrected, not only the last."""
    graph, inputs = fan_out()
    result, note = run(graph, name, inputs, **options)
    assert f"{corrected} biases corrected" in note
    for before, after in zip(npuc.interpret(graph, *inputs), npuc.interpret(result, *inputs),
                             strict=True):
        np.testing.assert_allclose(after.mean(axis=0), before.mean(axis=0), atol=1e-4)


@pytest.mark.parametrize("name", ["prune_magnitude", "prune_nm", "prune_channels"])
def test_notes_say_what_was_not_measured(name: str) -> None:
    graph, _ = mlp()
    _, note = run(graph, name)
    assert "output error not measured (no calibration data)" in note


@pytest.mark.parametrize("name, options, message", [
    ("prune_magnitude", {"sparsity": 1.5}, r"option sparsity must be a fraction in \[0, 1\]"),
    ("prune_magnitude", {"scope": "net"}, "option scope must be one of 'layer', 'global'"),
    ("prune_magnitude", {"layers": ["nope.*"]}, r"layers=\['nope.\*'\] matches no layer.*enc.0"),
    ("prune_nm", {"n": 5, "m": 4}, r"n and m need 0 <= n <= m"),
    ("prune_channels", {"sparsity": -0.1}, "option sparsity must be a fraction"),
    ("prune_channels", {"criterion": "taylor"}, "one of 'l1', 'l2', 'importance'"),
    ("prune_channels", {"multiple": 0}, "option multiple must be an int >= 1"),
])
def test_bad_options_name_the_option_and_what_is_allowed(name: str, options: dict,
                                                        message: str) -> None:
    graph, _ = mlp()
    with pytest.raises((ValueError, TypeError), match=message):
        passes.apply(graph, name, **options)


def test_importance_without_calibration_says_how_to_pass_it() -> None:
    graph, _ = mlp()
    with pytest.raises(CalibrationError, match=r"criterion='importance'.*calibration=\["):
        passes.apply(graph, "prune_channels", criterion="importance")


# ------------------------------------------------------------------ finetune=


@pytest.mark.parametrize("name, options", [
    ("prune_magnitude", {"sparsity": 0.75}), ("prune_nm", {"n": 1, "m": 4}),
    ("prune_channels", {"sparsity": 0.5})])
def test_finetune_trains_a_faithful_mirror_then_prunes_as_usual(name: str, options: dict
                                                                ) -> None:
    """The callback gets a torch module computing the graph (unmasked at progress 0), trains
    it with the PDP soft masks on, and the pass prunes the trained weights to its contract;
    training lowers the pruned graph's error against a target."""
    graph, inputs = mlp()
    (target,) = npuc.interpret(graph, *inputs)
    calls = []

    def finetune(module: torch.nn.Module) -> None:
        module.progress = 0.0
        (y,) = module(*inputs)
        np.testing.assert_allclose(y.detach().numpy(), target, rtol=1e-5, atol=1e-5)
        module.progress = 1.0
        opt = torch.optim.Adam(module.parameters(), lr=1e-2)
        for _ in range(60):
            opt.zero_grad()
            (y,) = module(*inputs)
            loss = ((y - torch.from_numpy(target)) ** 2).mean()
            loss.backward()
            opt.step()
        calls.append(float(loss.detach()))

    tuned, _ = run(graph, name, inputs, finetune=finetune, **options)
    plain, _ = run(graph, name, inputs, **options)
    assert len(calls) == 1
    assert [n.inputs[1].shape for n in weight_layers(tuned)] == \
        [n.inputs[1].shape for n in weight_layers(plain)]
    if name != "prune_channels":
        assert [int(np.sum(n.inputs[1].data == 0)) for n in weight_layers(tuned)] == \
            [int(np.sum(n.inputs[1].data == 0)) for n in weight_layers(plain)]
    error = [np.linalg.norm(npuc.interpret(g, *inputs)[0] - target) for g in (tuned, plain)]
    assert error[0] < error[1]
