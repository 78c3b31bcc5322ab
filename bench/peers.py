"""The peers npuc's int8 accuracy is measured against: the same torch model quantized by torchao's
PT2E flow and by onnxruntime's static quantization, each returned as a callable on the same inputs.

    q = pt2e_int8(model, example_inputs, calibration)          # calibration: tuples of tensors
    q = ort_int8(model, example_inputs, calibration, preset="best")
    y = q(*inputs)            # float32 numpy output
    q.seconds, q.ops          # time to quantize; per op kind, (reads int8, total)

Both peers are "fake-quant" (QDQ) graphs: the quantized ops read int8 values through a
dequantize, and everything a peer does not quantize runs in float. `ops` counts, per op kind,
how many nodes read only quantized data (their float operands all come from a dequantize,
looking through pure data-movement ops such as reshape and transpose), so a table can say
what each peer leaves in float. Shape and data-movement ops, and the (de)quantize ops
themselves, are not counted.

A peer that cannot handle a model raises `PeerError` with a one-line reason; the bench writes
"n/a (reason)" for it. Installing the peers: `pip install torchao onnxruntime onnx onnxscript`
with torch held at its pinned version (bench/quant_accuracy.py prints the versions it ran with).
"""

from __future__ import annotations

import collections
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

Inputs = tuple[torch.Tensor, ...]


class PeerError(RuntimeError):
    """A peer could not quantize or run a model; str(e) is the reason, short enough for a table."""


@dataclass
class Quantized:
    """A peer's quantized model: call it with torch tensors (or numpy arrays), get float32 numpy."""

    name: str
    run: Callable[..., np.ndarray]
    seconds: float  # export + calibration + conversion, wall time
    ops: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (int8 in, total)
    config: str = ""  # the API and settings used, one line

    def __call__(self, *inputs: Any) -> np.ndarray:
        return self.run(*inputs)

    def float_ops(self) -> dict[str, int]:
        """Per op kind, how many nodes run on float inputs."""
        return {k: total - q for k, (q, total) in self.ops.items() if total > q}

    def describe_ops(self) -> str:
        """'linear 36/36, matmul 12/12, softmax 0/6, ...': nodes reading int8 / all nodes."""
        return ", ".join(f"{k} {q}/{t}" for k, (q, t) in sorted(self.ops.items()))


def _numpy(x: Any) -> np.ndarray:
    return x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _tensor(x: Any) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def _first(out: Any) -> np.ndarray:
    if isinstance(out, (tuple, list)):
        out = out[0]
    return _numpy(out).astype(np.float32)


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:160]}"


# ------------------------------------------------------------------------------------------------
# torchao PT2E

_PT2E_SKIP = {
    # data movement and bookkeeping: not counted, and looked through when tracing an operand
    "view", "reshape", "unsafe_view", "permute", "transpose", "t", "expand", "unsqueeze",
    "squeeze", "slice", "select", "contiguous", "clone", "flatten", "dropout", "alias",
    "assert_tensor_metadata", "to", "to_copy", "type_as", "getitem", "detach", "lift_fresh_copy",
}


# an activation between a quantized op and a quantize is fused into that op's integer output
_ACTIVATIONS = {"relu", "Relu", "hardtanh", "clamp", "Clip"}


def _pt2e_kind(node: torch.fx.Node) -> str:
    """'linear' for aten.linear.default, 'softmax' for aten._softmax.default."""
    return getattr(node.target, "__name__", str(node.target)).split(".")[0].lstrip("_")


def _pt2e_census(gm: torch.fx.GraphModule) -> dict[str, tuple[int, int]]:
    """Per ATen op kind in the converted graph: (nodes whose float operands all come from a
    dequantize, nodes)."""

    def is_dequant(n: torch.fx.Node) -> bool:
        return n.op == "call_function" and "dequantize" in str(n.target)

    def is_quant(n: torch.fx.Node) -> bool:
        return n.op == "call_function" and "quantize" in str(n.target) and not is_dequant(n)

    def is_float(n: Any) -> bool:
        if not isinstance(n, torch.fx.Node):
            return False
        val = n.meta.get("val")
        if n.op == "get_attr":
            val = getattr(gm, str(n.target), None)
        return isinstance(val, torch.Tensor) and val.is_floating_point()

    def source(n: torch.fx.Node) -> torch.fx.Node:
        while (n.op == "call_function" and _pt2e_kind(n) in _PT2E_SKIP and n.args
               and isinstance(n.args[0], torch.fx.Node)):
            n = n.args[0]
        return n

    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    quantized: set[torch.fx.Node] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or "quantize" in str(node.target):
            continue
        kind = _pt2e_kind(node)
        if kind in _PT2E_SKIP or kind.startswith("sym_"):
            continue
        operands = [a for a in node.all_input_nodes if is_float(a) or is_dequant(source(a))]
        if not operands:  # e.g. mask arithmetic on integer inputs
            continue
        fused = (kind in _ACTIVATIONS and source(operands[0]) in quantized and node.users
                 and all(is_quant(u) for u in node.users))
        counts[kind][1] += 1
        if fused or all(is_dequant(source(a)) for a in operands):
            counts[kind][0] += 1
            quantized.add(node)
    return {k: (q, t) for k, (q, t) in counts.items()}


def pt2e_int8(model: torch.nn.Module, example_inputs: Inputs,
              calibration: Iterable[Inputs]) -> Quantized:
    """torchao's PT2E static int8 with the X86 Inductor quantizer's default config.

    API (torchao 0.18): `gm = torch.export.export(model, example_inputs).module()`, dead code
    eliminated (X86InductorQuantizer fails on a linear -> tanh whose result is unused, such as
    the BERT pooler of a mean-pooled encoder);
    `quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())`
    (from `torchao.quantization.pt2e.quantizer.x86_inductor_quantizer`: activations uint8
    asymmetric per tensor with a HistogramObserver, weights int8 symmetric per output channel
    with a PerChannelMinMaxObserver; it annotates conv, linear, matmul and the ops it can
    propagate int8 through, e.g. pools, cat, flatten, add); `prepare_pt2e(gm, quantizer)`, one
    forward per calibration tuple, `convert_pt2e(prepared)` (from
    `torchao.quantization.pt2e.quantize_pt2e`). The converted graph is run eagerly: the
    reference quantize/dequantize representation, not Inductor's fused int8 kernels.
    """
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as e:
        raise PeerError(f"torchao PT2E not importable ({_reason(e)})") from e

    start = time.perf_counter()
    try:
        with torch.no_grad():
            gm = torch.export.export(model.eval(), tuple(example_inputs)).module()
            gm.graph.eliminate_dead_code()  # the quantizer trips on dead partitions (a pooler)
            gm.recompile()
            quantizer = X86InductorQuantizer()
            quantizer.set_global(get_default_x86_inductor_quantization_config())
            prepared = prepare_pt2e(gm, quantizer)
            for inputs in calibration:
                prepared(*(_tensor(x) for x in inputs))
            converted = convert_pt2e(prepared)
    except Exception as e:  # any failure of the peer is reported, not fatal
        raise PeerError(f"PT2E failed ({_reason(e)})") from e
    seconds = time.perf_counter() - start

    def run(*inputs: Any) -> np.ndarray:
        with torch.no_grad():
            return _first(converted(*(_tensor(x) for x in inputs)))

    return Quantized("PT2E", run, seconds, _pt2e_census(converted),
                     "torchao PT2E, X86InductorQuantizer default static config, eager QDQ")


# ------------------------------------------------------------------------------------------------
# onnxruntime

# quantize_static keyword arguments per preset (enum values by name, looked up at call time;
# "preprocess" is ours: run quant_pre_process first)
ORT_PRESETS: dict[str, dict[str, Any]] = {
    # quantize_static at its defaults: QDQ, QInt8 activations and weights, MinMax, per tensor,
    # every op type it can quantize (MatMul, Gemm, Conv, Add, Mul, Softmax, LayerNormalization,
    # Gather, ReduceMean, ...), the outputs of quantized ops quantized too
    "default": {},
    # the best found for all-MiniLM-L6-v2 (bench/quant_accuracy.py's docstring has the search):
    # the documented pre-processing, only the matrix products quantized (MatMul/Gemm, attention
    # ones included, and Conv for CNNs), weights per output channel, uint8 activations (the
    # recommended x86 pairing) with min/max ranges, and the outputs of MatMul/Gemm left in float
    # so a linear's pre-bias result is not rounded to 8 bits before the residual add
    "best": {
        "preprocess": True,
        "op_types_to_quantize": ["MatMul", "Gemm", "Conv"],
        "per_channel": True,
        "activation_type": "QUInt8",
        "calibrate_method": "MinMax",
        "extra_options": {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]},
    },
}


def _onnx_export(model: torch.nn.Module, example_inputs: Inputs, path: Path) -> tuple[str, str]:
    """Export with the dynamo exporter (opset 18, weights inside the file), else the legacy
    TorchScript exporter; returns (which exporter, why the first one failed or "")."""
    names = [f"input{i}" for i in range(len(example_inputs))]
    args = tuple(example_inputs)
    try:
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["output"],
                          dynamo=True, external_data=False, opset_version=18, verbose=False)
        return "dynamo", ""
    except Exception as e:  # fall back to the legacy exporter
        first = _reason(e)
    try:
        torch.onnx.export(model, args, str(path), input_names=names, output_names=["output"],
                          dynamo=False, opset_version=17)
        return "torchscript", first
    except Exception as e:
        raise PeerError(f"ONNX export failed (dynamo: {first}; legacy: {_reason(e)})") from e


def _ort_session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


_ONNX_SKIP = {"Reshape", "Transpose", "Unsqueeze", "Squeeze", "Flatten", "Expand", "Identity",
              "Cast", "Shape", "Constant", "ConstantOfShape", "Concat", "Slice", "Split"}


def _onnx_census(path: Path) -> dict[str, tuple[int, int]]:
    """Per ONNX op type: (nodes whose float operands all come from a DequantizeLinear, nodes)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = model.graph
    elem = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    elem.update({t.name: t.data_type for t in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}

    def source(name: str) -> str:
        while name in producer and producer[name].op_type in _ONNX_SKIP - {"Concat", "Split"}:
            name = producer[name].input[0]
        return name

    def dequantized(name: str) -> bool:
        src = producer.get(source(name))
        return src is not None and src.op_type == "DequantizeLinear"

    readers = collections.defaultdict(list)
    for node in g.node:
        for i in node.input:
            readers[i].append(node)
    counts: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    quantized: set[str] = set()  # outputs of quantized nodes
    for node in g.node:
        if node.op_type in _ONNX_SKIP or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        operands = [i for i in node.input if i and (elem.get(i) in floats or dequantized(i))]
        if not operands:
            continue
        out = node.output[0]
        fused = (node.op_type in _ACTIVATIONS and source(operands[0]) in quantized
                 and readers[out] and all(r.op_type == "QuantizeLinear" for r in readers[out]))
        counts[node.op_type][1] += 1
        if fused or all(dequantized(i) for i in operands):
            counts[node.op_type][0] += 1
            quantized.add(out)
    return {k: (q, t) for k, (q, t) in counts.items()}


def _ort_runner(session: Any) -> Callable[..., np.ndarray]:
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: Any) -> np.ndarray:
        return _first(session.run(None, dict(zip(names, map(_numpy, inputs), strict=True))))

    return run


def ort_float(model: torch.nn.Module, example_inputs: Inputs) -> Quantized:
    """The float ONNX export under onnxruntime (same exporter and session options as
    `ort_int8`): checks the export, quantizes nothing."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="npuc_ort_") as tmp:
        path = Path(tmp) / "float.onnx"
        exporter, _ = _onnx_export(model, example_inputs, path)
        session = _ort_session(path)
        ops = _onnx_census(path)
    return Quantized("ORT fp32", _ort_runner(session), time.perf_counter() - start, ops,
                     f"{exporter} export, float")


def ort_int8(model: torch.nn.Module, example_inputs: Inputs, calibration: Iterable[Inputs], *,
             preset: str | dict[str, Any] = "default") -> Quantized:
    """onnxruntime's static int8 quantization of the model's ONNX export.

    API (onnxruntime 1.31): the model is exported by `torch.onnx.export(..., dynamo=True,
    opset_version=18)` (the legacy TorchScript exporter if that fails);
    `onnxruntime.quantization.quantize_static(float.onnx, int8.onnx, reader,
    quant_format=QuantFormat.QDQ, **ORT_PRESETS[preset])`, where `reader` is a
    `CalibrationDataReader` yielding one feed per calibration tuple. `preset` is "default"
    (quantize_static's defaults: QDQ, QInt8 activations and weights, MinMax, per tensor, all
    op types it supports), "best" (see ORT_PRESETS) or a dict of quantize_static keyword
    arguments (enum values by name: "QUInt8", "Entropy", ...). Its key "preprocess": True
    first runs `onnxruntime.quantization.shape_inference.quant_pre_process` (the documented
    pre-processing: symbolic shape inference and onnxruntime's basic graph optimisations, which
    fuse MatMul + bias Add into Gemm where the input is 2-D after a reshape).
    The quantized model runs in an InferenceSession on the CPU provider, one thread (intra and
    inter op), sequential execution, default graph optimisations (which fuse QDQ groups into
    onnxruntime's int8 kernels).
    """
    try:
        import onnxruntime  # noqa: F401
        from onnxruntime.quantization import CalibrationMethod, QuantType
    except ImportError as e:
        raise PeerError(f"onnxruntime quantization not importable ({_reason(e)})") from e
    if isinstance(preset, str) and preset not in ORT_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; one of {', '.join(ORT_PRESETS)}")
    options = dict(ORT_PRESETS[preset]) if isinstance(preset, str) else dict(preset)
    preprocess = bool(options.pop("preprocess", False))
    for key, enum in (("activation_type", QuantType), ("weight_type", QuantType),
                      ("calibrate_method", CalibrationMethod)):
        if isinstance(options.get(key), str):
            options[key] = enum[options[key]]

    with tempfile.TemporaryDirectory(prefix="npuc_ort_") as tmp:
        return _ort_int8(Path(tmp), model, example_inputs, calibration, preset, options,
                         preprocess)


def _ort_int8(root: Path, model: torch.nn.Module, example_inputs: Inputs,
              calibration: Iterable[Inputs], preset: str | dict[str, Any],
              options: dict[str, Any], preprocess: bool) -> Quantized:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    start = time.perf_counter()
    exporter, _ = _onnx_export(model, example_inputs, root / "float.onnx")
    source = root / "float.onnx"
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        quant_pre_process(str(source), str(root / "pre.onnx"))
        source = root / "pre.onnx"
    names = [f"input{i}" for i in range(len(example_inputs))]
    feeds = [dict(zip(names, map(_numpy, inputs), strict=True)) for inputs in calibration]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(feeds)

    try:
        quantize_static(str(source), str(root / "int8.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, **options)
        session = _ort_session(root / "int8.onnx")
    except Exception as e:  # any failure of the peer is reported, not fatal
        raise PeerError(f"onnxruntime quantize_static failed ({_reason(e)})") from e
    seconds = time.perf_counter() - start
    shown = ", ".join(f"{k}={getattr(v, 'name', v)}" for k, v in options.items()) or "defaults"
    return Quantized(f"ORT {preset if isinstance(preset, str) else 'custom'}",
                     _ort_runner(session), seconds, _onnx_census(root / "int8.onnx"),
                     f"{exporter} export, quantize_static QDQ, {shown}"
                     + (", quant_pre_process" if preprocess else ""))


def versions() -> dict[str, str]:
    """Versions of torch and the peers (\"not installed\" where one is missing)."""
    out = {"torch": torch.__version__}
    for name in ("torchao", "onnxruntime", "onnx", "onnxscript"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = "not installed"
    return out


def calibration_batches(data: Sequence[torch.Tensor], batch: int) -> list[tuple[torch.Tensor]]:
    """Split one tensor of examples into calibration tuples of `batch` (the last one dropped if
    short, so every tuple has the exported shape)."""
    return [(data[i:i + batch],) for i in range(0, len(data) - batch + 1, batch)]
