"""Every model of the zoo captures, verifies, round-trips through text and matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import npuc
from npuc.printer import print_graph
from tests.conftest import rel_error
from tests.models import ZOO

SLOW = {"minilm", "resnet18"}
PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in ZOO]


def _reference(model: torch.nn.Module, inputs: tuple) -> np.ndarray:
    with torch.no_grad():
        return model(*inputs).numpy()


@pytest.mark.parametrize("name", PARAMS)
def test_capture_matches_pytorch(name: str) -> None:
    model, inputs = ZOO[name]()
    graph = npuc.capture(model, inputs).verify()
    (out,) = npuc.interpret(graph, *inputs)
    assert out.dtype == np.float32
    assert rel_error(out, _reference(model, inputs)) <= 1e-5
    # the dump reads back to a graph that prints identically and, with data, runs identically:
    # small models with their weights inlined in the text, large ones with weights by digest
    text = str(graph)
    assert str(npuc.ir.parse(text)) == text
    consts = [n for n in graph.nodes if n.is_const]
    if sum(n.type.size for n in consts) < 200_000:
        reread = npuc.ir.parse(print_graph(graph, constants=True))
    else:
        reread = npuc.ir.parse(text, weights={n.attrs["digest"]: n.data for n in consts})
    np.testing.assert_array_equal(npuc.interpret(reread, *inputs)[0], out)


@pytest.mark.parametrize("name", ["cnn_bn", "resnet_basic", "sr_net", "lstm_classifier"])
def test_fx_fallback_matches_export(name: str) -> None:
    model, inputs = ZOO[name]()
    exported = npuc.capture(model, inputs, method="export")
    traced = npuc.capture(model, inputs, method="fx")
    np.testing.assert_allclose(npuc.interpret(traced, *inputs)[0],
                               npuc.interpret(exported, *inputs)[0], rtol=1e-5, atol=1e-6)
    assert {n.op for n in traced.nodes} == {n.op for n in exported.nodes}


def test_module_paths_recorded() -> None:
    model, inputs = ZOO["resnet_basic"]()
    graph = npuc.capture(model, inputs)
    convs = [n for n in graph.nodes if n.op == "conv"]
    assert convs and all(n.loc for n in convs)
    weights = {n.loc for n in graph.nodes if n.is_const}
    assert any(loc.endswith(".weight") for loc in weights)


@pytest.mark.slow
def test_minilm_dump_is_readable() -> None:
    model, inputs = ZOO["minilm"]()
    graph = npuc.capture(model, inputs)
    text = str(graph)
    assert "loc(\"encoder.encoder.layer.5.attention.self.query\")" in text
    ops = {n.op for n in graph.nodes}
    assert {"linear", "softmax", "layer_norm", "gelu", "gather"} <= ops
    assert max(len(line) for line in text.splitlines()) < 200


def test_constant_subgraphs_fold_away() -> None:
    class Masked(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = x.shape[-1]
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
            scores = x @ x.transpose(-1, -2) / float(x.shape[-1]) ** 0.5
            return scores.masked_fill(mask, float("-inf")).softmax(-1)

    x = torch.randn(2, 5, 5)
    graph = npuc.capture(Masked(), (x,))
    assert not {"triu", "ge", "lt", "arange", "full"} & {n.op for n in graph.nodes}
    assert rel_error(npuc.interpret(graph, x)[0], Masked()(x).numpy()) <= 1e-6


@pytest.mark.parametrize("name", PARAMS)
def test_default_pipeline_reaches_inference_structure(name: str) -> None:
    """The float pipeline (folding, branch merging, clean-up; npu-int8 runs it before quantizing)
    keeps every model's outputs and leaves no batch_norm and no foldable branch behind."""
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs, target="cpu-fp32", debug=True)
    assert rel_error(cm.run(*inputs), _reference(model, inputs)) <= 1e-5
    assert not any(n.op == "batch_norm" for n in cm.ir.nodes)
    captured_convs = sum(n.op == "conv" for n in cm.stages["captured"].nodes)
    if name == "repvgg_block":  # three branches, one conv at inference time
        assert captured_convs == 2 and sum(n.op == "conv" for n in cm.ir.nodes) == 1


class MoreOps(torch.nn.Module):
    """Activations and reductions that decompose to elu, log1p, expm1, flip, index_select, var
    and vector norms."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        F = torch.nn.functional
        y = F.elu(x) + F.selu(x) + F.celu(x, 0.5) + F.softplus(x) + F.mish(x) + F.logsigmoid(x)
        y = y + torch.flip(x, [1]) + x.index_select(1, torch.tensor([2, 0, 1, 1]))
        return y * x.var(1, keepdim=True) + F.normalize(x, dim=1)


def test_more_ops_capture() -> None:
    x = torch.randn(3, 4) * 3
    graph = npuc.capture(MoreOps(), (x,))
    assert {"elu", "log1p", "flip", "gather", "sqrt"} <= {n.op for n in graph.nodes}
    with torch.no_grad():
        want = MoreOps()(x).numpy()
    assert rel_error(npuc.interpret(graph, x)[0], want) <= 1e-5
