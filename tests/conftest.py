"""Shared test configuration: hypothesis profiles and the --update-golden flag.

Profiles: "ci" (the default: derandomized, 50 examples, so every run of the suite tries the same
cases and a failure reproduces), "dev" (50 fresh random examples per run, to hunt for new bugs)
and "deep" (500 random examples); HYPOTHESIS_PROFILE picks one. Golden IR dumps under
tests/golden/ change only with `pytest --update-golden`.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `import tests.models` anywhere

settings.register_profile("dev", max_examples=50, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=50, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("deep", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite tests/golden/* from the current output instead of comparing")


@pytest.fixture
def golden(request: pytest.FixtureRequest):  # noqa: ANN201
    """golden(name, text): compare text with tests/golden/name (or rewrite it when updating).
    `digests=False` compares constants by shape and type only, for dumps whose integer constants
    are rounded from float calibration results (their last bits differ between CPU families, so
    a value can round to the neighbouring integer); their values are checked bit-exactly between
    the executors elsewhere."""

    def check(name: str, text: str, digests: bool = True) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.write_text(text)
            return
        assert path.exists(), f"no golden file {path}; run pytest --update-golden once"
        want = path.read_text()
        if not digests:
            text, want = _DIGEST.sub(_DIGEST_MASK, text), _DIGEST.sub(_DIGEST_MASK, want)
        if not same_dump(text, want):
            pairs = zip(text.splitlines(), want.splitlines(), strict=False)
            first = next((i for i, (a, b) in enumerate(pairs) if not same_dump(a, b)),
                         min(text.count("\n"), want.count("\n")))
            raise AssertionError(f"{name} differs from its golden file at line {first + 1}:\n"
                                 f"  got:  {text.splitlines()[first:first + 1]}\n"
                                 f"  want: {want.splitlines()[first:first + 1]}")

    return check


_DIGEST, _DIGEST_MASK = re.compile(r'digest = "[0-9a-f]+"'), 'digest = "?"'
# a float literal, not a part of a word or a quoted string (digests such as "1602e22589c1" or
# "889864e74359", which would read as inf, locs such as "4.bias")
_FLOAT = re.compile(r"(?<![\w.\"])-?(?:\d+\.\d*(?:e[-+]?\d+)?|\d+e[-+]?\d+)(?![\w.\"])")


def same_dump(got: str, want: str, rtol: float = 1e-5) -> bool:
    """Two IR dumps equal up to float literals within `rtol`: calibration runs float kernels
    (BLAS, convolutions) whose last bits differ between CPU families, and so do the scales
    computed from them. Everything else, integers included, must match exactly."""
    got_parts, want_parts = _FLOAT.split(got), _FLOAT.split(want)
    got_floats, want_floats = _FLOAT.findall(got), _FLOAT.findall(want)
    if got_parts != want_parts or len(got_floats) != len(want_floats):
        return False
    return all(abs(float(g) - float(w)) <= rtol * max(abs(float(w)), 1e-30)
               for g, w in zip(got_floats, want_floats, strict=True))


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    """||got - want|| / max(||want||, 1e-12), in float64."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12))


# The options a pass cannot run without (it has no default that fits every graph), for the
# tests that run every registered pass.
REQUIRED_OPTIONS: dict[str, dict] = {"lowrank": {"energy": 0.9, "progress": False}}


def required_options(name: str) -> dict:
    return dict(REQUIRED_OPTIONS.get(name, {}))
