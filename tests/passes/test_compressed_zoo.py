"""Pruned and factorised zoo models still compile for npu-int8 and give bit-exact C: each
compression pass runs inside the target's pipeline (after BN folding, so it prunes the weights
that ship), its structure reaches the integer graph (merge_linear and quantize undo nothing:
shapes as pruned, zeros and N:M groups kept, stored in the encoding asked) and gcc's build of
the generated C computes cm.run's bits. A few small models, to keep the suite short."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import npuc
from npuc.driver import summarize
from npuc.ir import Graph, Node
from tests.codegen.harness import assert_bit_exact
from tests.models import ZOO

FLOAT_LAYERS = ("conv", "linear")
INT_LAYERS = ("qconv", "qlinear")


def with_steps(target: str, steps: list[tuple[str, dict]], weights: str | None = None) -> list:
    """The target's pipeline with `steps` right after fold_batchnorm, and quantize storing
    the weights as `weights` (its default when None)."""
    pipeline = list(npuc.targets.get(target).pipeline)
    at = pipeline.index("fold_batchnorm") + 1
    pipeline = pipeline[:at] + steps + pipeline[at:]
    if weights is not None:
        pipeline[pipeline.index("quantize")] = ("quantize", {"weights": weights})
    return pipeline


def layers(graph: Graph, ops: tuple[str, ...]) -> list[Node]:
    return [n for n in graph.nodes if n.op in ops]


CASES = {
    "cnn_bn channels 50% + 2:4": (
        "cnn_bn", [("prune_channels", {"sparsity": 0.5}), ("prune_nm", {"n": 2, "m": 4})],
        "auto-sparse"),
    "resnet_basic 75% global": (
        "resnet_basic", [("prune_magnitude", {"sparsity": 0.75, "scope": "global"})], "sparse"),
    "mobilenetv2_block channels by importance": (
        "mobilenetv2_block", [("prune_channels", {"sparsity": 0.5, "criterion": "importance"})],
        None),
    "transformer_encoder lowrank + 1:4": (
        "transformer_encoder", [("lowrank", {"rank": 0.25, "progress": False}),
                                ("prune_nm", {"n": 1, "m": 4})], "auto-sparse"),
    "resnet_basic lowrank spatial": (
        "resnet_basic", [("lowrank", {"rank": 0.5, "mode": "spatial", "progress": False})], None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_compressed_zoo_model_compiles_to_bit_exact_c(case: str, tmp_path: Path) -> None:
    name, steps, weights = CASES[case]
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs, target="npu-int8", calibration=[inputs],
                      passes=with_steps("npu-int8", steps, weights))
    compressed = cm.stages[[s for s in cm.stages if s.split("#")[0] == steps[-1][0]][-1]]
    folded = cm.stages["fold_batchnorm"]
    assert summarize(compressed).params <= summarize(folded).params
    if any(s[0] in ("prune_channels", "lowrank") for s in steps):  # shapes shrink for real
        assert summarize(cm.ir).macs < summarize(folded).macs
        assert summarize(cm.ir).params < summarize(folded).params
    # the shapes as compressed reach the integer graph
    floats, ints = layers(compressed, FLOAT_LAYERS), layers(cm.ir, INT_LAYERS)
    assert sorted(n.inputs[1].shape for n in ints) == sorted(n.inputs[1].shape for n in floats)
    # so do the zeros: a zero weight quantizes to 0 (symmetric), never the other way back
    for layer, q in zip(floats, ints, strict=True):  # both in graph order
        assert q.inputs[1].shape == layer.inputs[1].shape, layer.loc
        assert np.sum(q.inputs[1].data == 0) >= np.sum(layer.inputs[1].data == 0), layer.loc
    if weights == "auto-sparse" and any(s[0] == "prune_nm" for s in steps):
        encodings = {q.inputs[1].attrs["encoding"] for q in ints}
        assert any(e.startswith("nm") for e in encodings), encodings
    if weights == "sparse":
        assert {q.inputs[1].attrs["encoding"] for q in ints} == {"sparse"}
    assert_bit_exact(cm, [np.asarray(x) for x in inputs], tmp_path)
