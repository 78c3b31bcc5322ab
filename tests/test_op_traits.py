"""Every registered op states the facts the passes and the simulator read from it (its traits,
npuc.ops): an integer form for the quantize pass, a cost class for the simulator and a torch
mirror for mobilequant, each a value (`NOT_QUANTIZABLE`, `NO_MIRROR`, ... are values too), and
consistent with the rest of the op table and with the lowering rules."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from npuc.ops import (
    INTEGER,
    NO_MIRROR,
    OPS,
    Cost,
    IntegerForm,
    OpDef,
    defop,
    lowered_by,
    lowers,
    vector,
)
from npuc.passes import quantize
from npuc.passes.integer_lowering import RULES, rule_for


def trait_problems(table: Mapping[str, OpDef]) -> list[str]:
    """"op: what is wrong" for every op of `table` missing a trait or stating one that does not
    fit the op table or the lowering rules."""
    problems = []
    for name, d in table.items():
        form, cost, mirror = d.integer, d.cost, d.mirror
        if not isinstance(form, IntegerForm):
            problems.append(f"{name}: no integer form")
        elif form.op is not None:
            target = table.get(form.op)
            if target is None:
                problems.append(f"{name}: lowers to unknown op {form.op}")
            elif form.op != name and target.integer != INTEGER:
                problems.append(f"{name}: lowers to {form.op}, which is not an integer op")
            if rule_for(name) is None:
                problems.append(f"{name}: an integer form but no lowering rule")
        elif name in RULES:
            problems.append(f"{name}: a lowering rule but no integer form")
        if not isinstance(cost, Cost):
            problems.append(f"{name}: no cost class")
        elif (cost.kind == "gemm") != (d.macs is not None):
            problems.append(f"{name}: a GEMM cost needs a MAC count, and only a GEMM has one")
        if not callable(mirror):
            problems.append(f"{name}: no torch mirror (NO_MIRROR if it has none)")
    return problems


def test_every_op_has_every_trait() -> None:
    assert trait_problems(OPS) == []


@pytest.mark.parametrize("trait, problem", [
    ("integer", "no integer form"), ("cost", "no cost class"), ("mirror", "no torch mirror")])
def test_a_missing_trait_is_named(trait: str, problem: str) -> None:
    broken = {**OPS, "relu": dataclasses.replace(OPS["relu"], **{trait: None})}
    assert [p for p in trait_problems(broken) if p.startswith("relu:")] == [
        f"relu: {problem}" + (" (NO_MIRROR if it has none)" if trait == "mirror" else "")]


def test_traits_that_contradict_the_table_are_named() -> None:
    relu = OPS["relu"]
    broken = {**OPS,
              "relu": dataclasses.replace(relu, integer=lowers("relu6_table")),
              "sigmoid": dataclasses.replace(OPS["sigmoid"], integer=lowers("conv")),
              "pow": dataclasses.replace(OPS["pow"], integer=lowers("qmul", "requantize")),
              "gelu": dataclasses.replace(OPS["gelu"], cost=Cost("gemm"))}
    assert sorted(p for p in trait_problems(broken) if not p.startswith("relu:")) == [
        "gelu: a GEMM cost needs a MAC count, and only a GEMM has one",
        "pow: an integer form but no lowering rule",
        "sigmoid: lowers to conv, which is not an integer op"]
    assert "relu: lowers to unknown op relu6_table" in trait_problems(broken)


def test_registering_an_op_without_its_traits_is_refused() -> None:
    with pytest.raises(TypeError, match="cost"):
        defop("scratch_op", 1, lambda types, attrs: types[0], category="misc",
              integer=INTEGER, mirror=NO_MIRROR)  # type: ignore[call-arg]
    assert "scratch_op" not in OPS
    with pytest.raises(ValueError, match="params"):
        lowers("qadd", "requantise")
    with pytest.raises(ValueError, match="bad cost"):
        vector(0)


def test_quantize_reads_its_op_sets_from_the_traits() -> None:
    assert quantize.REQUANTIZING == lowered_by("requantize") >= {"conv", "linear", "add"}
    assert quantize.KEEPS_PARAMS == lowered_by("keep") >= {"reshape", "max_pool", "avg_pool"}
    assert quantize.CLAMPS == lowered_by("clamp") == {"relu", "clamp"}
