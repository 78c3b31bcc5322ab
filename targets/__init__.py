"""npuc.targets: target descriptions as data (one TOML file per built-in target) and their loader.

    npuc.targets.names()          # built-in target names
    npuc.targets.get("npu-int8")  # a Target
    npuc.targets.load(path)       # a user's file

A target file names its default pass pipeline (`[compile]`), the defaults of the quantize pass
(`[quantize]`: weight format, observer and per-op observers, which values are int16) and the
hardware the simulator models: engines (`[npu]` systolic array, `[dsp]` vector unit, `[cpu]`
fallback), `[memory]` and `[energy]`, each read into a frozen dataclass below. Unknown keys,
missing fields, wrong types and values out of range are load errors that name the field and the
file.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, get_type_hints

_HERE = Path(__file__).parent
# What the NPU does with zero weights (the model is in npuc.simulator.cost): nothing; gates
# zero operands (MAC energy, not cycles); skips N:M weights stored nm; skips whole zero tiles
# of rows x cols weights; compacts every nonzero perfectly (the optimistic bound).
SPARSITY_MODES = ("none", "gating", "nm", "block", "ideal")
# keys that were replaced, with what to write instead
_RENAMED = {"npu.zero_skipping": "'npu.zero_skipping' was replaced by 'npu.sparsity', one of "
                                 f"{', '.join(SPARSITY_MODES)} (zero_skipping = true modelled "
                                 "'ideal')"}


class TargetError(ValueError):
    """A target that does not exist or a target file that does not load; names file and key."""


def _field(default: Any = MISSING, *, min: float | None = None,
           choices: tuple[Any, ...] | None = None) -> Any:
    """A schema field: its default (none = required), least legal value, allowed values."""
    return field(default=default, metadata={"min": min, "choices": choices})


@dataclass(frozen=True)
class NPU:
    """A systolic MAC array (SCALE-Sim's model): rows x cols PEs, one dataflow."""

    rows: int = _field(min=1)
    cols: int = _field(min=1)
    dataflow: str = _field(choices=("ws", "os", "is"))  # weight/output/input stationary
    clock_hz: float = _field(min=1)
    weight_bits: int = _field(8, choices=(4, 8))  # MACs per PE per cycle: 8 / weight_bits
    int16_rate: float = _field(0.5, min=0)  # MAC rate with int16 activations (0: unsupported)
    sparsity: str = _field("none", choices=SPARSITY_MODES)  # what zero weights save
    palette_decode: bool = _field(False)  # decodes palettized weights in the weight path


@dataclass(frozen=True)
class DSP:
    """A vector DSP: `lanes` int8 operations per cycle (int16: half)."""

    lanes: int = _field(min=1)
    clock_hz: float = _field(min=1)


@dataclass(frozen=True)
class CPU:
    """The host CPU: the fallback for every op, at `ops_per_cycle` scalar-equivalent ops."""

    clock_hz: float = _field(min=1)
    ops_per_cycle: float = _field(min=0.001)


@dataclass(frozen=True)
class Memory:
    sram_bytes: int = _field(min=1)
    sram_bytes_per_cycle: float = _field(min=0.001)  # at the fastest engine's clock
    dram_bytes_per_s: float = _field(min=1)
    dram_latency_s: float = _field(0.0, min=0)


@dataclass(frozen=True)
class Energy:
    """Energy per event, in picojoules (and static power in watts)."""

    mac_i8_pj: float = _field(min=0)
    mac_i16_pj: float = _field(min=0)
    mac_f32_pj: float = _field(min=0)
    sram_byte_pj: float = _field(min=0)
    dram_byte_pj: float = _field(min=0)
    static_w: float = _field(0.0, min=0)


@dataclass(frozen=True)
class Compile:
    pipeline: tuple[str, ...] = _field(())


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    pipeline: tuple[str, ...]  # default pass pipeline, in order
    path: Path | None = None
    quantize: Mapping[str, Any] = field(default_factory=dict)  # the quantize pass's defaults
    npu: NPU | None = None
    dsp: DSP | None = None
    cpu: CPU | None = None
    memory: Memory | None = None
    energy: Energy | None = None

    def __str__(self) -> str:
        lines = [f"{self.name}: {self.description}", "  pipeline: " + ", ".join(self.pipeline)]
        if self.quantize:
            lines.append("  quantize: " + ", ".join(f"{k}={v}" for k, v in self.quantize.items()))
        for section in SECTIONS:
            value = getattr(self, section)
            if value is not None:
                lines.append(f"  {section}: " + ", ".join(
                    f"{f.name}={getattr(value, f.name)}" for f in fields(value)))
        if self.path:
            lines.append(f"  file: {self.path}")
        return "\n".join(lines)


# the hardware tables of a target file, each read into its dataclass
SECTIONS: dict[str, type] = {"npu": NPU, "dsp": DSP, "cpu": CPU, "memory": Memory,
                             "energy": Energy}
_QUANTIZE = {"int16": list, "int16_mac": list, "weights": str, "observer": str,
             "activations": str, "observers": dict}
_KINDS = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _section(cls: type, table: Any, where: str, path: Path) -> Any:
    """Build `cls` from a TOML table: unknown keys, missing fields, wrong types and values out of
    range are errors naming the field and the file."""
    if not isinstance(table, dict):
        raise TargetError(f"{path}: '{where}' must be a table")
    known = {f.name: f for f in fields(cls)}
    for key in table:
        if f"{where}.{key}" in _RENAMED:
            raise TargetError(f"{path}: {_RENAMED[f'{where}.{key}']}")
        if key not in known:
            raise TargetError(f"{path}: unknown key '{where}.{key}'; expected one of "
                              f"{', '.join(known)}")
    values = {}
    hints = get_type_hints(cls)
    for name, f in known.items():
        if name not in table:
            if f.default is MISSING:
                raise TargetError(f"{path}: missing field '{where}.{name}'")
            continue
        value, kind = table[name], hints[name]
        if kind in _KINDS:
            if isinstance(value, bool) and kind is not bool or not isinstance(value, _KINDS[kind]):
                raise TargetError(f"{path}: '{where}.{name}' must be {kind.__name__}, got "
                                  f"{value!r}")
            value = kind(value)
            # NaN compares false with every bound below, so it would load and give NaN energy
            if kind is float and not math.isfinite(value):
                raise TargetError(f"{path}: '{where}.{name}' must be a finite number, got "
                                  f"{value!r}")
        elif isinstance(value, list):
            value = tuple(value)
        low, choices = f.metadata.get("min"), f.metadata.get("choices")
        if low is not None and value < low:
            raise TargetError(f"{path}: '{where}.{name}' must be >= {low}, got {value!r}")
        if choices is not None and value not in choices:
            raise TargetError(f"{path}: '{where}.{name}' must be one of {choices}, got {value!r}")
        values[name] = value
    return cls(**values)


def _check(data: dict[str, Any], path: Path) -> None:
    for key, value in data.items():
        if key in ("name", "description"):
            if not isinstance(value, str):
                raise TargetError(f"{path}: '{key}' must be str")
        elif key == "quantize":
            if not isinstance(value, dict):
                raise TargetError(f"{path}: 'quantize' must be a table ([quantize] with keys "
                                  f"{', '.join(sorted(_QUANTIZE))}), got {value!r}")
            for option, item in value.items():
                if option not in _QUANTIZE:
                    raise TargetError(f"{path}: unknown key 'quantize.{option}'; expected one "
                                      f"of {', '.join(sorted(_QUANTIZE))}")
                if not isinstance(item, _QUANTIZE[option]):
                    raise TargetError(f"{path}: 'quantize.{option}' must be "
                                      f"{_QUANTIZE[option].__name__}")
        elif key not in SECTIONS and key != "compile":
            raise TargetError(f"{path}: unknown section or key '{key}'")
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
    pipeline = _section(Compile, data.get("compile", {}), "compile", path).pipeline
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
    hardware = {name: _section(cls, data[name], name, path)
                for name, cls in SECTIONS.items() if name in data}
    return Target(data["name"], data["description"], tuple(pipeline), path, quantize,
                  **hardware)


def _check_quantize(options: dict[str, Any], path: Path) -> None:
    """The [quantize] table's values name real formats, observers and ops."""
    from npuc.ops import OPS
    from npuc.quant.observers import OBSERVERS
    from npuc.quant.weights import parse_weight_format

    try:
        parse_weight_format(options.get("weights", "int8"))
    except ValueError as e:
        raise TargetError(f"{path}: 'quantize.weights': {e}") from None
    if options.get("activations", "int8") not in ("int8", "int16"):
        raise TargetError(f"{path}: 'quantize.activations' must be 'int8' or 'int16'")
    if options.get("observer", "minmax") not in OBSERVERS:
        raise TargetError(f"{path}: 'quantize.observer' must be one of {', '.join(OBSERVERS)}")
    for op, name in options.get("observers", {}).items():
        if name not in OBSERVERS:
            raise TargetError(f"{path}: 'quantize.observers.{op}' must be one of "
                              f"{', '.join(OBSERVERS)}, got {name!r}")
    unknown = [op for op in [*options.get("int16", []), *options.get("int16_mac", []),
                             *options.get("observers", {})] if op not in OPS and op != "output"]
    if unknown:
        raise TargetError(f"{path}: 'quantize': unknown op(s) {unknown}; list IR ops "
                          "(e.g. softmax, layer_norm) or 'output'")


def names() -> list[str]:
    """The built-in targets."""
    return sorted(p.stem for p in _HERE.glob("*.toml"))


def get(target: str | Path | Target) -> Target:
    """A built-in target by name, or a target file by its path (a Path, or a str ending in
    .toml); a Target passes through; unknown names list the known ones."""
    if isinstance(target, Target):
        return target
    if isinstance(target, Path) or str(target).endswith(".toml"):
        return load(target)
    if target not in names():
        raise TargetError(f"unknown target {target!r}; built-in targets: {', '.join(names())} "
                          "(or pass npuc.targets.load('my-target.toml'))")
    return load(_HERE / f"{target}.toml")
