"""npuc.targets: target descriptions as data (one TOML file per built-in target) and their loader.

    npuc.targets.names()          # built-in target names
    npuc.targets.get("npu-int8")  # a Target
    npuc.targets.load(path)       # a user's file

A target file names its default pass pipeline and, in `[quantize]`, the defaults of the quantize
pass (weight format, observer, which values are int16); the engines, memories and energy tables
the simulator needs join the schema with the simulator. Unknown keys and wrong types are load
errors that name the key and the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_HERE = Path(__file__).parent


class TargetError(ValueError):
    """A target that does not exist or a target file that does not load; names file and key."""


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    pipeline: tuple[str, ...]  # default pass pipeline, in order
    path: Path | None = None
    quantize: Mapping[str, Any] = field(default_factory=dict)  # the quantize pass's defaults

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.description}", "  pipeline: " + ", ".join(self.pipeline)]
        if self.quantize:
            lines.append("  quantize: " + ", ".join(f"{k}={v}" for k, v in self.quantize.items()))
        if self.path:
            lines.append(f"  file: {self.path}")
        return "\n".join(lines)


_SCHEMA: dict[str, dict[str, type]] = {
    "": {"name": str, "description": str},
    "compile": {"pipeline": list},
    "quantize": {"int16": list, "weights": str, "observer": str},
}


def _check(data: dict[str, Any], path: Path) -> None:
    for key, value in data.items():
        section = key if isinstance(value, dict) else ""
        fields = _SCHEMA.get(section)
        if fields is None:
            raise TargetError(f"{path}: unknown section or key '{key}'")
        items = value.items() if isinstance(value, dict) else [(key, value)]
        for key_, item in items:
            where = f"{section}.{key_}" if section else key_
            if key_ not in fields:
                raise TargetError(f"{path}: unknown key '{where}'; expected one of "
                                  f"{', '.join(sorted(fields))}")
            if not isinstance(item, fields[key_]):
                raise TargetError(f"{path}: '{where}' must be {fields[key_].__name__}")
    for required in ("name", "description"):
        if required not in data:
            raise TargetError(f"{path}: missing key '{required}'")


def load(path: str | Path) -> Target:
    """Read and validate a target file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise TargetError(f"{path}: {e}") from None
    _check(data, path)
    pipeline = data.get("compile", {}).get("pipeline", [])
    if not all(isinstance(p, str) for p in pipeline):
        raise TargetError(f"{path}: 'compile.pipeline' must be a list of pass names")
    from npuc.passes import get

    for name in pipeline:
        try:
            get(name)
        except KeyError as e:
            raise TargetError(f"{path}: compile.pipeline: {e.args[0]}") from None
    quantize = dict(data.get("quantize", {}))
    _check_quantize(quantize, path)
    return Target(data["name"], data["description"], tuple(pipeline), path, quantize)


def _check_quantize(options: dict[str, Any], path: Path) -> None:
    """The [quantize] table's values name real formats, observers and ops."""
    from npuc.ops import OPS
    from npuc.quant.observers import OBSERVERS
    from npuc.quant.weights import parse_weight_format

    try:
        parse_weight_format(options.get("weights", "int8"))
    except ValueError as e:
        raise TargetError(f"{path}: 'quantize.weights': {e}") from None
    if options.get("observer", "minmax") not in OBSERVERS:
        raise TargetError(f"{path}: 'quantize.observer' must be one of {', '.join(OBSERVERS)}")
    unknown = [op for op in options.get("int16", []) if op not in OPS and op != "output"]
    if unknown:
        raise TargetError(f"{path}: 'quantize.int16': unknown op(s) {unknown}; list IR ops "
                          "(e.g. softmax, layer_norm) or 'output'")


def names() -> list[str]:
    """The built-in targets."""
    return sorted(p.stem for p in _HERE.glob("*.toml"))


def get(target: str | Target) -> Target:
    """A built-in target by name (a Target passes through); unknown names list the known ones."""
    if isinstance(target, Target):
        return target
    if target not in names():
        raise TargetError(f"unknown target {target!r}; built-in targets: {', '.join(names())} "
                          "(or pass npuc.targets.load('my-target.toml'))")
    return load(_HERE / f"{target}.toml")
