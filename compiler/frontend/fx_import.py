"""Capture a PyTorch module into the npuc IR.

torch.export gives an ATen-level fx graph (decomposed to core ATen, keeping the few ops the IR
has a better name for); when export fails, torch.fx.symbolic_trace flattens forward() into
straight-line code over the same submodules, and exporting that gives the same kind of graph.
Each ATen op is then normalised by a converter in `converters.py`. Any op whose tensor operands
are all constants (weights, buffers, masks, `arange`, shape arithmetic) is evaluated by torch at
capture time and becomes a constant, so constant subgraphs fold away.
"""

from __future__ import annotations

import contextlib
import operator
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.fx

from ..errors import UnsupportedError
from ..ir import DType, Graph, Node, TensorType, const, graph_input
from .converters import CONVERTERS, Context

_TORCH_DTYPES = {
    torch.float32: DType.F32, torch.float16: DType.F16, torch.int64: DType.I64,
    torch.int32: DType.I32, torch.int16: DType.I16, torch.int8: DType.I8, torch.uint8: DType.U8,
    torch.bool: DType.BOOL,
}

# ATen ops kept whole by the decomposition: the IR has them as single ops.
_KEEP = ("linear.default", "hardswish.default", "hardsigmoid.default", "silu.default",
         "upsample_nearest2d.vec", "upsample_bilinear2d.vec", "upsample_nearest1d.vec",
         "pixel_shuffle.default", "_softmax.default", "_log_softmax.default",
         "adaptive_avg_pool2d.default", "_adaptive_avg_pool2d.default", "glu.default",
         "prelu.default", "gelu.default", "leaky_relu.default")

# Ops whose result depends only on their operands' shapes, never on their values.
_SHAPE_ONLY = {"aten.full_like.default", "aten.zeros_like.default", "aten.ones_like.default",
               "aten.empty_like.default", "aten.new_zeros.default", "aten.new_ones.default",
               "aten.new_full.default", "aten.new_empty.default", "aten.sym_size.int"}

# Ops with no value, kept by export for its own runtime checks.
_IGNORED = {"aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
            "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg",
            "aten.sym_constrain_range.default"}


def npuc_dtype(dtype: torch.dtype, where: str = "") -> DType:
    if dtype not in _TORCH_DTYPES:
        raise UnsupportedError(f"tensor dtype {dtype} is not supported", loc=where,
                               hint="cast the model and inputs to float32 (model.float())")
    return _TORCH_DTYPES[dtype]


def _decompositions() -> dict:
    table = torch.export.default_decompositions()
    for name in _KEEP:
        packet, overload = name.split(".")
        op = getattr(getattr(torch.ops.aten, packet), overload)
        with contextlib.suppress(KeyError):
            table.pop(op)
    return table


def _export(model: torch.nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    return torch.export.export(model, inputs).run_decompositions(_decompositions())


def _trace_fx(model: torch.nn.Module, inputs: tuple) -> torch.export.ExportedProgram:
    # symbolic_trace flattens forward() into straight-line code over the same submodules (so
    # module paths survive); exporting that module then gives the usual ATen graph.
    return _export(torch.fx.symbolic_trace(model), inputs)


def capture(model: torch.nn.Module | torch.export.ExportedProgram,
            example_inputs: Sequence[Any] | None = None, *, method: str = "auto",
            name: str | None = None) -> Graph:
    """Capture `model` called on `example_inputs` as a float IR graph.

    model: a torch.nn.Module (anything else is a TypeError saying what is accepted).

    method: "export" (torch.export), "fx" (torch.fx.symbolic_trace, then export of the traced
    module), or "auto" (export,
    then fx if export fails). The model runs in eval mode; its training flag is restored after.
    An ExportedProgram (e.g. from torch.export.load of a .pt2) is imported as it is.
    Raises UnsupportedError naming the op and module path of anything the IR cannot express.
    """
    if isinstance(model, torch.export.ExportedProgram):
        program = model.run_decompositions(_decompositions())
        return _Importer(name or "exported").run_program(program)
    if not isinstance(model, torch.nn.Module):
        what = type(model).__name__ if not callable(model) else f"the callable {model!r}"
        raise TypeError(
            f"npuc captures a torch.nn.Module or a torch.export.ExportedProgram (npuc.compile also "
            f"takes an already captured npuc Graph), not {what}"
            + ("; wrap a function in an nn.Module whose forward() calls it" if callable(model)
               else ""))
    if example_inputs is None:
        raise TypeError("capture needs example_inputs: a tuple of tensors to trace the model with")
    if method not in ("auto", "export", "fx"):
        raise ValueError(f"method must be 'auto', 'export' or 'fx', not {method!r}")
    inputs = (tuple(example_inputs) if isinstance(example_inputs, list | tuple)
              else (example_inputs,))
    if not all(isinstance(x, torch.Tensor) for x in inputs):
        raise TypeError("example_inputs must be torch tensors (a tuple of them for several inputs)")
    for i, x in enumerate(inputs):
        if x.dtype not in _TORCH_DTYPES:
            raise UnsupportedError(
                f"example input {i} is {x.dtype}, a dtype npuc does not support", stage="capture",
                hint=f"pass float32 inputs (x.float()){_AND_MODEL}")
    name = name or type(model).__name__
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch's own deprecation notices about its internals are noise to our users
            warnings.simplefilter("ignore", FutureWarning)
            return _capture(model, inputs, method, name)
    finally:
        model.train(was_training)


_AND_MODEL = " and a float32 model (model.float())"


def _capture(model: torch.nn.Module, inputs: tuple, method: str, name: str) -> Graph:
    errors: list[str] = []
    if method in ("auto", "export"):
        try:
            program = _export(model, inputs)
        except Exception as e:  # export raises many types; we report them all the same way
            if method == "export":
                raise _untraceable(model, inputs, "torch.export", e) from e
            errors.append(f"torch.export: {type(e).__name__}: {str(e).splitlines()[0]}")
        else:
            return _Importer(name).run_program(program)
    try:
        program = _trace_fx(model, inputs)
    except Exception as e:
        if errors:
            mismatch = _dtype_mismatch(model, inputs)
            raise UnsupportedError(
                "the model could not be traced" + (f": {mismatch}" if mismatch else "")
                + ":\n    " + "\n    ".join(errors)
                + f"\n    torch.fx: {type(e).__name__}: {str(e).splitlines()[0]}",
                stage="capture",
                hint=_DTYPE_HINT if mismatch else
                "make forward() traceable: no data-dependent Python control flow on tensor "
                "values; move pre/post-processing out of the model") from e
        raise _untraceable(model, inputs, "torch.fx", e) from e
    return _Importer(name).run_program(program)


_DTYPE_HINT = ("give the model and its inputs the same supported float dtype: model.float() and "
               "x.float() (float32)")


def _dtype_mismatch(model: torch.nn.Module, inputs: tuple) -> str | None:
    """Why tracing may have failed on dtypes rather than control flow: parameters in a dtype npuc
    does not support, or float inputs of another dtype than the float parameters (torch then
    refuses the conv/linear: 'Input type (double) and bias type (float) should be the same')."""
    params = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    floats = {x.dtype for x in inputs if x.is_floating_point()}
    unsupported = sorted(str(d) for d in params if d not in _TORCH_DTYPES)
    if unsupported:
        return f"its parameters are {', '.join(unsupported)}, a dtype npuc does not support"
    if params and floats and params != floats:
        return (f"its parameters are {', '.join(sorted(map(str, params)))} but its float "
                f"inputs are {', '.join(sorted(map(str, floats)))}")
    return None


def _untraceable(model: torch.nn.Module, inputs: tuple, tracer: str,
                 e: Exception) -> UnsupportedError:
    mismatch = _dtype_mismatch(model, inputs)
    return UnsupportedError(
        f"{tracer} could not trace the model" + (f" ({mismatch})" if mismatch else "")
        + f": {type(e).__name__}: {str(e).splitlines()[0]}",
        stage="capture",
        hint=_DTYPE_HINT if mismatch else
        "make forward() traceable (no data-dependent control flow), or try method='auto'")


def _output_structure(program: torch.export.ExportedProgram, outputs: int) -> Any:
    """How forward() arranged its outputs when it returned a dict (at any depth): the same dicts
    and lists with the index of each output as leaves, e.g. {"logits": 0, "hidden": [1, 2]}, so
    that `cm.run` can return them the same way. None for a tensor or (nested) tuples of tensors,
    which come back as the flat tuple they already are."""
    spec = getattr(program.call_spec, "out_spec", None)
    if spec is None or spec.num_leaves != outputs:
        return None
    tree = torch.utils._pytree.tree_unflatten(list(range(outputs)), spec)
    found_dict = False

    def plain(value: Any) -> Any:
        nonlocal found_dict
        if isinstance(value, dict):
            found_dict = True
            keys = [k for k in value if not isinstance(k, str)]
            if keys:
                raise UnsupportedError(
                    f"the model returns a dict with keys that are not strings: {keys}",
                    stage="capture", hint="name the outputs with str keys")
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if not isinstance(value, int):
            raise UnsupportedError(
                f"the model returns a {type(value).__name__}, a structure npuc cannot return",
                stage="capture", hint="return a tensor, or tuples, lists or dicts of tensors")
        return value

    structure = plain(tree)
    return structure if found_dict else None


def module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").removeprefix("self.")


class _Importer:
    """Walks one ATen fx graph, building IR nodes; constants are tracked as torch tensors."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.values: dict[torch.fx.Node, Any] = {}
        self.constants: dict[torch.fx.Node, Any] = {}  # fx node -> torch tensor(s), if constant
        self.inputs: list[Node] = []

    def run_program(self, program: torch.export.ExportedProgram) -> Graph:
        sig = program.graph_signature
        state = {**program.state_dict, **program.constants}
        lifted = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
                  **sig.inputs_to_lifted_tensor_constants}
        for node in program.graph.nodes:
            if node.op == "placeholder":
                if node.name in lifted:
                    self._constant(node, state[lifted[node.name]], lifted[node.name])
                else:
                    self._input(node)
        graph = self._walk(program.graph)
        structure = _output_structure(program, len(graph.outputs))
        if structure is None:
            return graph
        return Graph(graph.inputs, graph.outputs, graph.name, {"output_structure": structure})

    def _input(self, node: torch.fx.Node) -> None:
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UnsupportedError(f"input {node.name!r} is not a tensor ({type(val).__name__})",
                                   stage="capture", hint="pass tensors only as model inputs")
        ir = graph_input(node.name, TensorType(tuple(val.shape), npuc_dtype(val.dtype, node.name)))
        self.inputs.append(ir)
        self.values[node] = ir

    def _constant(self, node: torch.fx.Node, tensor: torch.Tensor, loc: str) -> None:
        self.constants[node] = tensor.detach()
        self.values[node] = _const_of(tensor, loc)

    def _walk(self, graph: torch.fx.Graph) -> Graph:
        outputs: list[Node] = []
        for node in graph.nodes:
            if node.op == "call_function":
                self._call(node)
            elif node.op == "output":
                flat = torch.utils._pytree.tree_leaves(node.args[0])
                for out in flat:
                    value = self.values.get(out) if isinstance(out, torch.fx.Node) else None
                    if not isinstance(value, Node):
                        raise UnsupportedError(
                            f"model output {out} is not a tensor computed by the model",
                            stage="capture", hint="return tensors only")
                    outputs.append(value)
        return Graph(tuple(self.inputs), tuple(outputs), self.name)

    def _call(self, node: torch.fx.Node) -> None:
        target = node.target
        if target is operator.getitem:
            source, index = node.args
            if source in self.constants:
                self.constants[node] = self.constants[source][index]
            self.values[node] = self.values[source][index]
            return
        key = _op_name(target)
        if key in _IGNORED:
            return
        loc = module_path(node)
        if isinstance(target, torch._ops.OpOverload) and \
                torch.Tag.nondeterministic_seeded in target.tags:
            raise UnsupportedError(
                f"{key} draws random numbers; capturing it would freeze one sample", op=key,
                loc=loc, hint="move the randomness out of forward() (pass noise as an input)")
        if self._foldable(node, key):
            self._fold(node, loc)
            return
        converter = CONVERTERS.get(key)
        if converter is None:
            raise UnsupportedError(
                f"no npuc lowering for {key}", op=key, loc=loc,
                hint="rewrite that part of the model with supported ops (README, 'Op coverage'),"
                     " move it out of forward(), or add a converter with "
                     "npuc.frontend.register_converter")
        args = torch.fx.node.map_arg(node.args, self._arg)
        kwargs = torch.fx.node.map_arg(node.kwargs, self._arg)
        ctx = Context(node, loc, self._const_value)
        try:
            result = converter(ctx, *args, **kwargs)
        except UnsupportedError:
            raise
        except (TypeError, ValueError, KeyError) as e:
            raise UnsupportedError(f"cannot lower {key}: {e}", op=key, loc=loc,
                                   hint="this use of the op is not supported yet") from e
        _check_matches(result, node, key, loc)
        self.values[node] = result

    def _arg(self, node: torch.fx.Node) -> Any:
        return self.values.get(node)

    def _const_value(self, value: Node) -> np.ndarray | None:
        return value.attrs.get("data") if isinstance(value, Node) and value.is_const else None

    def _foldable(self, node: torch.fx.Node, key: str) -> bool:
        if key in _SHAPE_ONLY:
            return True
        deps = node.all_input_nodes
        return all(d in self.constants for d in deps)

    def _fold(self, node: torch.fx.Node, loc: str) -> None:
        def real(n: torch.fx.Node) -> Any:
            if n in self.constants:
                return self.constants[n]
            val = n.meta.get("val")  # shape-only ops: any tensor of the right shape will do
            return torch.zeros(val.shape, dtype=val.dtype) if isinstance(val, torch.Tensor) else val

        args = torch.fx.node.map_arg(node.args, real)
        kwargs = torch.fx.node.map_arg(node.kwargs, real)
        result = node.target(*args, **kwargs)
        self.constants[node] = result
        self.values[node] = _map_tensors(result, lambda t: _const_of(t, loc))


def _op_name(target: Callable) -> str:
    return str(target) if isinstance(target, torch._ops.OpOverload) else getattr(
        target, "__name__", str(target))


def _const_of(tensor: Any, loc: str) -> Any:
    if not isinstance(tensor, torch.Tensor):
        return tensor
    dtype = npuc_dtype(tensor.dtype, loc)
    return const(tensor.detach().cpu().numpy().astype(dtype.numpy), dtype, loc)


def _map_tensors(value: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    if isinstance(value, tuple | list):
        return [_map_tensors(v, fn) for v in value]
    return fn(value) if isinstance(value, torch.Tensor) else value


def _check_matches(result: Any, node: torch.fx.Node, key: str, loc: str) -> None:
    """The converted value(s) must have the shape and dtype torch recorded for the fx node."""
    vals = node.meta.get("val")
    results = result if isinstance(result, list) else [result]
    vals = vals if isinstance(vals, list | tuple) else [vals]
    for r, v in zip(results, vals, strict=False):
        if isinstance(r, Node) and isinstance(v, torch.Tensor):
            want = TensorType(tuple(v.shape), npuc_dtype(v.dtype, loc))
            if (r.shape, r.dtype) != (want.shape, want.dtype):
                raise UnsupportedError(
                    f"internal: {key} lowered to {r.shape} {r.dtype}, torch says "
                    f"{want.shape} {want.dtype}", op=key, loc=loc, hint="please report this")
