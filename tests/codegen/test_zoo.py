"""Every zoo model (tests/models.py, all-MiniLM-L6-v2 and ResNet-18 included) on every integer
built-in target: `cm.emit_c` -> make -> ./model must reproduce `cm.run` bit for bit, on inputs
beyond the calibrated range; all but the two largest also under ASan/UBSan, and a sample with
clang where it is installed. Targets whose pipeline and quantize table agree lower to the same
graph, so each such lowering is built once and the others are checked to emit the same C."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import npuc
from tests.codegen.harness import SANITIZE, WARNINGS, assert_bit_exact
from tests.models import ZOO

INTEGER_TARGETS = [t for t in npuc.targets.names() if "quantize" in npuc.targets.get(t).pipeline]


def lowering(target: str) -> tuple:
    """What decides a target's integer graph (and so its C): its pipeline and quantize table."""
    t = npuc.targets.get(target)
    return t.pipeline, tuple(sorted((k, str(v)) for k, v in t.quantize.items()))


# targets that lower alike emit the same C (soc lowers as npu-int8): build each lowering once
DISTINCT = list({lowering(t): t for t in reversed(INTEGER_TARGETS)}.values())[::-1]


def compiled(name: str, target: str) -> tuple[npuc.CompiledModel, list[np.ndarray]]:
    """The model calibrated on its example inputs, and fresh inputs: float ones 1.5x the example
    plus noise (saturating the input quantizer), integer ones (token ids, masks) as they are."""
    torch.manual_seed(0)
    model, inputs = ZOO[name]()
    cm = npuc.compile(model, inputs, target=target)
    rng = np.random.default_rng(1)
    fresh = [x.numpy() * 1.5 + rng.normal(0, 0.1, x.shape).astype(np.float32)
             if x.is_floating_point() else x.numpy() for x in inputs]
    return cm, fresh


def test_every_integer_target_is_covered() -> None:
    assert set(INTEGER_TARGETS) == set(npuc.targets.names()) - {"cpu-fp32"}
    assert {lowering(t) for t in DISTINCT} == {lowering(t) for t in INTEGER_TARGETS}
    assert len(DISTINCT) == len({lowering(t) for t in INTEGER_TARGETS})


@pytest.mark.parametrize("target", sorted(set(INTEGER_TARGETS) - set(DISTINCT)))
def test_targets_that_lower_alike_emit_the_same_c(target: str, tmp_path: Path) -> None:
    twin = next(t for t in DISTINCT if lowering(t) == lowering(target))
    projects = [compiled("attention_block", t)[0].emit_c(tmp_path / t) for t in (target, twin)]
    first, second = ((p / "model.c").read_text().split("\n", 1)[1] for p in projects)
    assert first == second  # all but the banner, which names the target


@pytest.mark.slow
@pytest.mark.parametrize("target", DISTINCT)
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_bit_exact(name: str, target: str, tmp_path: Path) -> None:
    cm, inputs = compiled(name, target)
    assert_bit_exact(cm, inputs, tmp_path)


# every model but the two largest, each on one of the integer targets in turn
SANITIZED = [(name, DISTINCT[i % len(DISTINCT)])
             for i, name in enumerate(n for n in ZOO if n not in ("minilm", "resnet18"))]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "target"), SANITIZED)
def test_sanitizers_are_clean(name: str, target: str, tmp_path: Path) -> None:
    cm, inputs = compiled(name, target)
    assert_bit_exact(cm, inputs, tmp_path, cflags=SANITIZE)


@pytest.mark.parametrize("name", ["attention_block", "ops_mix"])
def test_clang_builds_warning_free(name: str, tmp_path: Path) -> None:
    cm, inputs = compiled(name, "npu-int8")
    assert_bit_exact(cm, inputs, tmp_path, cflags=f"{WARNINGS} -O2", cc="clang")
