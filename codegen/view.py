"""The view model of a generated C project: everything the templates print, computed in Python.

`build_view(graph)` plans the arena (the simulator's memory plan over the graph's order, every
tensor aligned to 16 bytes), gives each constant a C array, and asks each node's kernel lowering
(`npuc.codegen.kernels`) for its template and literal parameters. A `Context` is what a lowering
sees: C expressions for its operands (`ptr`), extra constant arrays (`array`), the encoded
weights decoded for it (`weight`) and scratch memory past the plan (`scratch`).

State across calls (`Graph.state`) lives in a static region of its own beside the arena: a
`state` node's pointer is its slot there, each call ends by copying every slot's write into it,
and `npuc_reset()` refills it with real zeros. A graph whose work depends on the step index
(`reuse`) guards each layer that some steps skip with its row of `npuc.state.Activity` (a
constant table indexed by the call's step), so a C call computes exactly what `cm.run` does.

`build_program({name: graph, ...})` puts several graphs in one project, an `Entry` each
(`npuc_<name>_run`): one table of constants (identical arrays once), one arena and one state
region whose slots are matched by name, so an LM's prefill and decode graphs share their
weights and their KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npuc.errors import UnsupportedError
from npuc.ir import DType, Graph, Node, StateSlot
from npuc.quant.constants import encoding_of
from npuc.state import Activity

ALIGN = 16  # bytes: every arena tensor and scratch block starts on a 16-byte boundary
CTYPES = {DType.I8: "npuc_i8", DType.U8: "npuc_u8", DType.I16: "npuc_i16", DType.I32: "npuc_i32",
          DType.I64: "npuc_i64", DType.BOOL: "npuc_u8", DType.F32: "npuc_f32",
          DType.I4: "npuc_i8", DType.U4: "npuc_u8"}


_NUMPY = {"npuc_i8": np.int8, "npuc_u8": np.uint8, "npuc_i16": np.int16, "npuc_i32": np.int32,
          "npuc_i64": np.int64, "npuc_f32": np.float32}


def ctype(dtype: DType) -> str:
    """The C element type of an IR dtype (bool is one byte, 0 or 1)."""
    if dtype not in CTYPES:
        raise UnsupportedError(f"no C type for {dtype}", stage="emit-c")
    return CTYPES[dtype]


@dataclass(frozen=True)
class Array:
    """A constant C array, stored as a union of its little-endian bytes (`init`, a string
    literal: GCC reads strings ~20x faster than lists of numbers) and its typed elements."""

    name: str
    ctype: str
    count: int  # elements (at least 1: C has no empty arrays)
    init: str
    comment: str

    @property
    def nbytes(self) -> int:
        return self.count * np.dtype(_NUMPY[self.ctype]).itemsize

    @property
    def ref(self) -> str:
        """The C expression of its elements (what kernels index)."""
        return f"{self.name}.v"


@dataclass(frozen=True)
class Layer:
    index: int
    op: str
    loc: str  # the module path, safe inside a C comment and a C string literal
    fn: str  # the C function's name
    body: str  # the rendered statements
    stage: str  # "entry" (quantizes an input), "body" or "exit" (dequantizes an output)
    guard: str | None = None  # a table over step indices: run the layer where it holds 1


@dataclass(frozen=True)
class StateBuffer:
    """One state slot in the static state region (shared by every entry that names it)."""

    name: str  # safe in a C comment
    offset: int
    nbytes: int
    reset: str | None  # a constant array of the reset bytes; None: every byte is `fill`
    fill: int = 0


@dataclass(frozen=True)
class Store:
    """Where one entry's call leaves a state slot's next value."""

    name: str  # the slot's, safe in a C comment
    offset: int
    nbytes: int
    write: str  # pointer to the value the call leaves (in the arena)
    guard: str | None = None  # the steps that store (the others leave the slot as it is)


@dataclass(frozen=True)
class Step:
    """Where a call's step index comes from, and how many distinct entries the guards have."""

    expr: str  # pointer to the int32/int64 input holding it
    horizon: int  # steps past the longest schedule index entry `horizon`


def c_text(text: str) -> str:
    """`text` made safe inside a C string literal and a C comment."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("*/", "* /").replace("\n", " ")


@dataclass(frozen=True)
class Port:
    """A graph input or output as the C API sees it."""

    name: str
    ctype: str  # of its arena element (the float API converts to and from float)
    size: int
    expr: str  # its arena pointer
    int_ctype: str  # the integer API's element type
    int_expr: str  # its integer form's arena pointer (after an entry / before an exit layer)
    shape: tuple[int, ...]
    limits: tuple[str, str] | None = None  # an integer input's valid values, as float literals


@dataclass(frozen=True)
class Entry:
    """One graph's functions in a C project: `{prefix}run`, `{prefix}run_int`, its sizes as
    `{PREFIX}NUM_INPUTS`, ... A project of one graph has the one entry "npuc_"; a program of
    several (an LM's prefill and decode) one per graph, all on one arena, one state region and
    one table of constants."""

    prefix: str
    layers: tuple[Layer, ...]
    inputs: tuple[Port, ...]
    outputs: tuple[Port, ...]
    stores: tuple[Store, ...] = ()
    step: Step | None = None

    @property
    def macro(self) -> str:
        return self.prefix.upper()


@dataclass(frozen=True)
class View:
    target: str
    pipeline: tuple[str, ...]
    arena_bytes: int
    arena_lower_bound: int
    arrays: tuple[Array, ...]
    entries: tuple[Entry, ...]
    states: tuple[StateBuffer, ...] = ()

    @property
    def state_bytes(self) -> int:
        return sum(-(-s.nbytes // ALIGN) * ALIGN for s in self.states)

    @property
    def weight_bytes(self) -> int:
        return sum(a.nbytes for a in self.arrays)

    @property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(layer for e in self.entries for layer in e.layers)


@dataclass(frozen=True)
class Kernel:
    """A lowering's result: the template `ops/<template>.c.j2` and its parameters `k`."""

    template: str
    params: dict[str, Any]


class Context:
    """What a kernel lowering may ask of the emitter while lowering one node."""

    def __init__(self, offsets: dict[Node, int], arena_bytes: int,
                 state_offsets: dict[Node, int] | None = None,
                 arrays: dict[tuple[str, str], Array] | None = None) -> None:
        self.offsets = offsets
        self.state_offsets = state_offsets or {}
        self.arena_bytes = arena_bytes
        self.arrays: dict[tuple[str, str], Array] = {} if arrays is None else arrays
        self.names: dict[Node, str] = {}
        self.scratch_bytes = 0  # the most any layer used past the plan
        self._scratch = 0  # used by the current layer
        self.prelude: list[str] = []  # statements the current layer runs first

    def begin_layer(self) -> None:
        self._scratch = 0
        self.prelude = []

    def ptr(self, node: Node) -> str:
        """A C expression for a pointer to `node`'s elements (in the arena or a const array)."""
        if node.is_const:
            if not encoding_of(node).is_dense:
                raise UnsupportedError(f"this kernel cannot read {encoding_of(node)} weights",
                                       op=node.op, loc=node.loc, stage="emit-c")
            if node not in self.names:
                self.names[node] = self.array(node.data, ctype(node.dtype), node.loc or "")
            return self.names[node]
        if node in self.state_offsets:
            return f"(({ctype(node.dtype)} *)(npuc_state + {self.state_offsets[node]}))"
        return f"(({ctype(node.dtype)} *)(npuc_arena + {self.offsets[node]}))"

    def array(self, values: np.ndarray, c_type: str | None = None, comment: str = "") -> str:
        """Name of a constant array holding `values` (identical arrays are emitted once)."""
        values = np.ascontiguousarray(values)
        c_type = c_type or ctype(DType.of(values))
        key = (c_type, values.tobytes().hex() if values.nbytes <= 64 else _digest(values))
        if key not in self.arrays:
            element = _NUMPY[c_type]
            flat = values.ravel().astype(element) if values.size else np.zeros(1, element)
            self.arrays[key] = Array(f"npuc_c{len(self.arrays)}", c_type, flat.size,
                                     _literal(flat), c_text(comment))
        return self.arrays[key].ref

    def scratch(self, nbytes: int, c_type: str) -> str:
        """A pointer to `nbytes` of scratch memory for the current layer only."""
        offset = self.arena_bytes + self._scratch
        self._scratch += -(-nbytes // ALIGN) * ALIGN
        self.scratch_bytes = max(self.scratch_bytes, self._scratch)
        return f"(({c_type} *)(npuc_arena + {offset}))"

    def weight(self, node: Node) -> str:
        """A pointer to `node`'s int8 values: the const array itself when dense, else scratch
        that the layer first decodes the stored encoding into (see `kernels.decode`)."""
        if encoding_of(node).is_dense:
            return self.ptr(node)
        from .kernels import decode_weight

        out = self.scratch(node.type.size, "npuc_i8")
        self.prelude.append(decode_weight(node, out, self))
        return out


def _digest(values: np.ndarray) -> str:
    import hashlib

    return hashlib.sha1(values.tobytes()).hexdigest()


_ESCAPES = np.frombuffer("".join(f"\\x{b:02x}" for b in range(256)).encode(), np.uint8).reshape(
    256, 4)  # byte -> its four characters \xHH
_ROW = 32  # bytes per line of a literal


def _literal(flat: np.ndarray) -> str:
    """The little-endian bytes of `flat` as C string literal lines, 32 bytes a line (the byte
    array has room for the literal's NUL). Vectorised: weights run to tens of MB."""
    data = np.frombuffer(flat.astype(flat.dtype.newbyteorder("<")).tobytes(), np.uint8)
    rows = -(-data.size // _ROW)
    chars = np.full((rows, _ROW, 4), ord(" "), np.uint8)  # the last row's tail: blanks
    chars.reshape(-1, 4)[:data.size] = _ESCAPES[data]
    framed = np.empty((rows, 4 * _ROW + 7), np.uint8)
    framed[:, 0] = ord('"')
    framed[:, 1:-6] = chars.reshape(rows, -1)
    framed[:, -6:] = np.frombuffer(b'"\n    ', np.uint8)
    text = framed.tobytes().decode()[:-5]  # without the last line break
    blanks = (rows * _ROW - data.size) * 4  # inside the last literal's closing quote
    return text[:-1 - blanks] + '"' if blanks else text


def lit(v: int) -> str:
    """An int64 C literal for any integer (C has no negative literals: -2147483648 would be the
    negation of a long)."""
    return f"({v + 1}LL - 1)" if v <= -(1 << 31) else f"{v}LL"


def limits(dtype: DType) -> tuple[str, str]:
    """The least and greatest value of an integer dtype, as C literals."""
    from npuc.quant import arith

    lo, hi = arith.dtype_range(dtype)
    return lit(lo), lit(hi)


@dataclass
class _Plan:
    offsets: dict[Node, int] = field(default_factory=dict)
    arena: int = 0
    lower_bound: int = 0


def _plan(graph: Graph, order: list[Node]) -> _Plan:
    from npuc.simulator.memory import plan_memory

    memory = plan_memory(graph, order, align=ALIGN)
    return _Plan({b.node: b.offset for b in memory.buffers}, memory.arena_bytes,
                 memory.lower_bound)


def check_integer(graph: Graph) -> None:
    """Only the graph's boundary may be float: quantize of an input, dequantize of an output."""
    outputs = set(graph.outputs)
    for node in graph.nodes:
        if node.op in ("input", "const", "quantize") or node.op == "dequantize" and node in outputs:
            continue
        if node.dtype.is_float or any(i.dtype.is_float for i in node.inputs):
            raise UnsupportedError(
                f"float {node.op} inside the graph: generated C runs integer-only graphs",
                op=node.op, loc=node.loc, stage="emit-c",
                hint="compile for an integer target (npu-int8, npu-w4a8, ...); float targets "
                     "such as cpu-fp32 are simulated but not emitted as C")


def build_view(graph: Graph, target_name: str = "unknown",
               pipeline: tuple[str, ...] = ()) -> View:
    """The view model of `graph` (see the module docstring): one entry, "npuc_"."""
    return build_program({"": graph}, target_name, pipeline)


def build_program(graphs: dict[str, Graph], target_name: str = "unknown",
                  pipeline: tuple[str, ...] = ()) -> View:
    """The view model of several graphs in one project: entry "npuc_<name>_" per graph ("npuc_"
    for the name ""). They share the constants (identical arrays stored once), one arena (as
    large as the largest needs: calls never overlap) and the state region, a slot per name
    across all of them (a KV cache the prefill graph writes and the decode graph reads)."""
    layout: dict[str, StateSlot] = {}
    for graph in graphs.values():
        check_integer(graph)
        for slot in graph.state:
            seen = layout.setdefault(slot.name, slot)
            if seen.type != slot.type:  # the type (quantization included) fixes the reset too
                raise UnsupportedError(f"state slot {slot.name!r} is {seen.type} in one graph and "
                                       f"{slot.type} in another", stage="emit-c",
                                       hint="graphs sharing state must store it alike")
    offsets, at = {}, 0
    for name, slot in layout.items():
        offsets[name] = at
        at += -(-slot.type.nbytes // ALIGN) * ALIGN
    arrays: dict[tuple[str, str], Array] = {}
    entries, arena, lower_bound = [], 0, 0
    for name, graph in graphs.items():
        entry, ctx, plan = _entry(graph, f"npuc_{name}_" if name else "npuc_", offsets, arrays)
        entries.append(entry)
        arena = max(arena, plan.arena + ctx.scratch_bytes)
        lower_bound = max(lower_bound, plan.lower_bound)
    ctx = Context({}, 0, {}, arrays)
    states = tuple(_state_buffer(slot, offsets[name], ctx) for name, slot in layout.items())
    return View(target_name, pipeline, arena, lower_bound, tuple(arrays.values()),
                tuple(entries), states)


def _entry(graph: Graph, prefix: str, state_at: dict[str, int],
           arrays: dict[tuple[str, str], Array]) -> tuple[Entry, Context, _Plan]:
    from .kernels import lower

    nodes = [n for n in graph.nodes if not n.is_const and n.op != "state"]
    stages = {n: _stage(graph, n) for n in nodes}
    # the order the C runs them in: npuc_run writes every input first, then runs the entry
    # layers, the body and the exit layers; the memory plan must see that same order
    order = [n for s in ("input", "entry", "body", "exit") for n in nodes if stages[n] == s]
    plan = _plan(graph, order)
    ctx = Context(plan.offsets, plan.arena, {s.read: state_at[s.name] for s in graph.state},
                  arrays)
    activity = Activity(graph)
    inputs = [n for n in order if n.op == "input"]
    layers = []
    for index, node in enumerate(order):
        if node.op == "input":
            continue
        ctx.begin_layer()
        body = lower(node, ctx)
        mask = activity.masks[node]
        guard = None if mask.all() else ctx.array(mask.astype(np.uint8), "npuc_u8")
        layers.append(Layer(index, node.op, c_text(node.loc or ""), f"{prefix}layer{index}",
                            "\n".join(ctx.prelude + [body]), stages[node], guard))
    stores = []
    for slot in graph.state:
        mask = activity.masks[slot.write]
        stores.append(Store(c_text(slot.name), state_at[slot.name], slot.type.nbytes,
                            ctx.ptr(slot.write),
                            None if mask.all() else ctx.array(mask.astype(np.uint8), "npuc_u8")))
    step = None
    if activity.step is not None:
        if activity.step.op != "input":
            raise UnsupportedError("the step index of a reuse is computed: the C takes it from "
                                   "a graph input", op="reuse", stage="emit-c",
                                   hint="pass the step as an int32 input of the model")
        step = Step(ctx.ptr(activity.step), activity.horizon)
    ports_in = tuple(_port(graph, n, ctx, i, "input") for i, n in enumerate(inputs))
    ports_out = tuple(_port(graph, n, ctx, i, "output") for i, n in enumerate(graph.outputs))
    return Entry(prefix, tuple(layers), ports_in, ports_out, tuple(stores), step), ctx, plan


def _state_buffer(slot: StateSlot, offset: int, ctx: Context) -> StateBuffer:
    reset = slot.reset_value()
    raw = np.frombuffer(reset.astype(reset.dtype.newbyteorder("<")).tobytes(), np.uint8)
    same = raw.size and (raw == raw[0]).all()
    return StateBuffer(c_text(slot.name), offset, slot.type.nbytes,
                       None if same else ctx.array(raw, "npuc_u8", f"reset of {slot.name}"),
                       int(raw[0]) if same else 0)


def _stage(graph: Graph, node: Node) -> str:
    """"input"; "entry" for the quantize that is an input's only reader (npuc_run_int starts
    after it); "exit" for a dequantize that is an output read by nothing else (npuc_run_int ends
    before it); else "body"."""
    if node.op == "input":
        return "input"
    if node.op == "quantize" and node.inputs[0].op == "input" and \
            len(graph.users[node.inputs[0]]) == 1:
        return "entry"
    if node.op == "dequantize" and node in graph.outputs and not graph.users.get(node):
        return "exit"
    return "body"


def _port(graph: Graph, node: Node, ctx: Context, i: int, kind: str) -> Port:
    integer = node
    if kind == "input":
        users = graph.users.get(node, [])
        if users and _stage(graph, users[0]) == "entry":
            integer = users[0]
    elif _stage(graph, node) == "exit":
        integer = node.inputs[0]
    if node.is_const or integer.is_const:
        raise UnsupportedError(f"graph {kind} {i} is a constant", stage="emit-c",
                               hint="fold it into the model")
    name = node.attrs.get("name", f"{kind}{i}") if kind == "input" else f"output{i}"
    limits = None
    if kind == "input" and not node.dtype.is_float:  # given as float32: whole numbers it holds
        from npuc.quant import arith

        lo, hi = (0, 1) if node.dtype == DType.BOOL else arith.dtype_range(node.dtype)
        limits = (f"{max(lo, -(1 << 31))}.0f", f"{min(hi, (1 << 31) - 1)}.0f")
    return Port(str(name), ctype(node.dtype), node.type.size, ctx.ptr(node), ctype(integer.dtype),
                ctx.ptr(integer), node.shape, limits)
