"""The npuc IR: immutable, typed SSA graphs of single-result ops.

Glossary: a *value* is the result of a node (every node has exactly one, so a node *is* its value);
`ifm`/`ofm` are input/output feature maps, `zp` a zero point, `loc` the module path that produced a
node. A Graph is its inputs and outputs; the nodes between them, in a deterministic topological
order, are derived from the outputs. Nothing here mutates: passes build new nodes.

State across calls (an attention-map cache, a KV cache, a streaming ring buffer) is part of the
graph too: a `state` leaf node reads a named value kept from the previous call (its real zero
after a reset), and `Graph.state` pairs each such read with the node whose value is kept for the
next call. The writes are roots like the outputs, so no rewrite can drop them.
"""

from __future__ import annotations

import enum
import hashlib
import math
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np


class DType(enum.StrEnum):
    """Element types. Sub-byte integers (i4, u4) are stored one per int8 element in numpy."""

    F32 = "f32"
    F16 = "f16"
    I64 = "i64"
    I32 = "i32"
    I16 = "i16"
    I8 = "i8"
    U8 = "u8"
    I4 = "i4"
    U4 = "u4"
    BOOL = "bool"

    @property
    def is_float(self) -> bool:
        return self in (DType.F32, DType.F16)

    @property
    def numpy(self) -> np.dtype:
        return np.dtype(_NUMPY[self])

    @property
    def bits(self) -> int:
        return _BITS[self]

    @property
    def int_range(self) -> tuple[int, int] | None:
        """(least, greatest) value of an integer or bool dtype (i4: -8..7); None for floats.
        Zero points and integer constant data must lie in it."""
        if self.is_float:
            return None
        if self is DType.BOOL:
            return (0, 1)
        signed = self.value.startswith("i")
        return ((-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1) if signed
                else (0, (1 << self.bits) - 1))

    @staticmethod
    def of(array: np.ndarray) -> DType:
        """The DType that holds a numpy array's elements."""
        for dtype, name in _NUMPY.items():
            if dtype not in (DType.I4, DType.U4) and np.dtype(name) == array.dtype:
                return dtype
        raise TypeError(f"numpy dtype {array.dtype} has no npuc DType")


_NUMPY = {
    DType.F32: "float32", DType.F16: "float16", DType.I64: "int64", DType.I32: "int32",
    DType.I16: "int16", DType.I8: "int8", DType.U8: "uint8", DType.I4: "int8", DType.U4: "uint8",
    DType.BOOL: "bool",
}
_BITS = {
    DType.F32: 32, DType.F16: 16, DType.I64: 64, DType.I32: 32, DType.I16: 16, DType.I8: 8,
    DType.U8: 8, DType.I4: 4, DType.U4: 4, DType.BOOL: 8,
}


@dataclass(frozen=True)
class QuantParams:
    """real = scale * (q - zero_point); per-tensor when `axis` is None, else one per channel.
    Scales are float32 values (as the dequantizing float32 arithmetic uses them), so the dump
    prints them in float32's shortest form and reads them back exactly."""

    scale: tuple[float, ...]
    zero_point: tuple[int, ...]
    axis: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(float(np.float32(s)) for s in self.scale))
        object.__setattr__(self, "zero_point", tuple(int(z) for z in self.zero_point))
        if len(self.scale) != len(self.zero_point):
            raise ValueError("QuantParams: scale and zero_point differ in length")
        if self.axis is None and len(self.scale) != 1:
            raise ValueError("QuantParams: per-tensor parameters need exactly one scale")
        if not all(s > 0 and np.isfinite(s) for s in self.scale):
            raise ValueError(f"QuantParams: scales must be positive and finite, got {self.scale}")


# The most elements a value may have: sizes are computed in int64 everywhere (numpy, the C).
MAX_ELEMENTS = 1 << 62


@dataclass(frozen=True)
class TensorType:
    """A value's shape, dtype and quantization parameters. Dimensions are non-negative ints and
    zero points lie in the dtype's range (a zero point of 40000 on i8 cannot be represented)."""

    shape: tuple[int, ...]
    dtype: DType
    quant: QuantParams | None = None

    def __post_init__(self) -> None:
        if any(isinstance(d, bool) or int(d) != d or d < 0 for d in self.shape):
            raise ValueError(f"TensorType: dimensions must be non-negative ints, got {self.shape}")
        if math.prod(int(d) for d in self.shape) > MAX_ELEMENTS:
            raise ValueError(f"TensorType: {self.shape} has more than 2**62 elements")
        limits = DType(self.dtype).int_range if self.quant is not None else None
        if limits is not None and not all(limits[0] <= z <= limits[1]
                                          for z in self.quant.zero_point):
            raise ValueError(f"TensorType: zero point {self.quant.zero_point} outside the range "
                             f"{limits[0]}..{limits[1]} of {self.dtype}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return (self.size * self.dtype.bits + 7) // 8


class Attrs(Mapping[str, Any]):
    """A frozen, sorted mapping of attribute values (lists become tuples; arrays stay arrays)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, Any] | None = None) -> None:
        self._items = {k: _freeze(v) for k, v in sorted((items or {}).items())}

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Attrs({self._items!r})"

    def replace(self, **changes: Any) -> Attrs:
        return Attrs({**self._items, **changes})


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, np.ndarray):
        value = value.copy()
        value.flags.writeable = False
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True, eq=False)
class Node:
    """One op and its single result value. Equality is identity; see `structurally_equal`."""

    op: str
    inputs: tuple[Node, ...]
    attrs: Attrs
    type: TensorType
    loc: str | None = None  # module path that produced it, e.g. "layer1.0.conv1"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def outputs(self) -> tuple[Node, ...]:
        """The values this node defines: always just itself (one result per op)."""
        return (self,)

    @property
    def is_const(self) -> bool:
        return self.op == "const"

    @property
    def data(self) -> np.ndarray:
        """The array of a const node (read-only); raises if its data was not loaded."""
        data = self.attrs.get("data")
        if data is not None and self.attrs.get("encoding", "dense") != "dense":
            return _decoded(self)
        if data is None:
            raise ValueError(
                f"constant {self.attrs.get('digest')} has no data: it was parsed from a summarised"
                " dump; parse with weights= or print with constants inlined"
            )
        return data

    @property
    def splat(self) -> float | None:
        """The one value every element of a constant holds (None for a non-constant, an empty
        one, one without loaded data, or one of several values): a scalar operand like eps."""
        if not self.is_const or self.attrs.get("data") is None:
            return None
        data = self.data
        if data.size == 0 or (data != data.flat[0]).any():
            return None
        return float(data.flat[0])

    @property
    def stored_nbytes(self) -> int:
        """Bytes a constant takes as stored (packed codes and LUT for an encoded one; the
        logical size when its data was not loaded); a value's logical bytes otherwise."""
        data = self.attrs.get("data") if self.is_const else None
        return data.nbytes if data is not None else self.type.nbytes

    def with_inputs(self, inputs: tuple[Node, ...]) -> Node:
        return replace(self, inputs=inputs)

    def __repr__(self) -> str:
        where = f" @{self.loc}" if self.loc else ""
        return f"<{self.op} {self.type.shape} {self.type.dtype}{where}>"


_DECODED: weakref.WeakKeyDictionary[Node, np.ndarray] = weakref.WeakKeyDictionary()


def _decoded(node: Node) -> np.ndarray:
    """The logical values of a constant stored in a compressed encoding (decoded once)."""
    if node not in _DECODED:
        from .quant.constants import decode_const

        values = decode_const(node)
        values.flags.writeable = False
        _DECODED[node] = values
    return _DECODED[node]


def digest(array: np.ndarray) -> str:
    """A content hash of an array (dtype, shape and bytes); 12 hex digits."""
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()[:12]


def const(array: np.ndarray | float | int, dtype: DType | None = None, loc: str | None = None,
          quant: QuantParams | None = None) -> Node:
    """A constant node holding a copy of `array`."""
    dtype = dtype or DType.of(np.asarray(array))
    array = np.asarray(array, dtype=dtype.numpy)
    attrs = Attrs({"data": array, "digest": digest(array), "encoding": "dense"})
    return Node("const", (), attrs, TensorType(tuple(array.shape), dtype, quant), loc)


def graph_input(name: str, type_: TensorType) -> Node:
    return Node("input", (), Attrs({"name": name}), type_)


def state_read(name: str, type_: TensorType, loc: str | None = None) -> Node:
    """The value of state `name` at the start of a call (see `Graph.state`)."""
    return Node("state", (), Attrs({"name": name}), type_, loc)


@dataclass(frozen=True)
class StateSlot:
    """One named state value: `read` (a `state` node) holds what the previous call left and
    `write` the value this call leaves for the next; both have the same type."""

    read: Node
    write: Node

    @property
    def name(self) -> str:
        return self.read.attrs["name"]

    @property
    def type(self) -> TensorType:
        return self.read.type

    def reset_value(self) -> np.ndarray:
        """What a read gives after a reset: real zero (the zero point of a quantized state)."""
        q = self.type.quant
        fill = q.zero_point[0] if q is not None and q.axis is None else 0
        if q is not None and q.axis is not None:  # per-channel zero points along q.axis
            shape = [1] * self.type.rank
            shape[q.axis] = -1
            return np.broadcast_to(np.asarray(q.zero_point, self.type.dtype.numpy).reshape(shape),
                                   self.type.shape).copy()
        return np.full(self.type.shape, fill, self.type.dtype.numpy)


@dataclass(frozen=True, eq=False)
class Graph:
    """An immutable graph: named inputs, outputs, state kept across calls, and every node that
    reaches an output or a state write."""

    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]
    name: str = "main"
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    state: tuple[StateSlot, ...] = ()

    @property
    def roots(self) -> tuple[Node, ...]:
        """What a call must compute: the outputs, then each state's write."""
        return self.outputs + tuple(s.write for s in self.state)

    @cached_property
    def nodes(self) -> tuple[Node, ...]:
        """Inputs first, then every node reachable from the outputs, the state writes and the
        state reads, in a deterministic DFS post-order (inputs of a node in argument order).
        Raises on a cycle."""
        order: list[Node] = list(self.inputs)
        state: dict[int, int] = {id(n): 2 for n in self.inputs}  # 1 = on stack, 2 = done
        for out in self.roots + tuple(s.read for s in self.state):
            stack: list[tuple[Node, int]] = [(out, 0)]
            while stack:
                node, i = stack.pop()
                if i == 0:
                    if state.get(id(node)) == 2:
                        continue
                    state[id(node)] = 1
                if i < len(node.inputs):
                    stack.append((node, i + 1))
                    child = node.inputs[i]
                    mark = state.get(id(child))
                    if mark == 1:
                        raise GraphError(f"cycle through node {child!r}")
                    if mark is None:
                        stack.append((child, 0))
                else:
                    state[id(node)] = 2
                    order.append(node)
        return tuple(order)

    @cached_property
    def users(self) -> dict[Node, list[Node]]:
        """For each node, the nodes that read it (a node reading a value twice appears twice)."""
        users: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for node in self.nodes:
            for i in node.inputs:
                users[i].append(node)
        return users

    def sole_reader(self, node: Node) -> Node | None:
        """The one node that reads `node`, if exactly one does and `node` is not an output:
        the condition for rewriting a value in place without duplicating work."""
        readers = self.users.get(node, ())
        return readers[0] if len(readers) == 1 and node not in self.roots else None

    def verify(self) -> Graph:
        """Check the graph's invariants; raise GraphError naming the bad node. Returns self."""
        from .verify import verify

        verify(self)
        return self

    def with_outputs(self, outputs: tuple[Node, ...]) -> Graph:
        return Graph(self.inputs, tuple(outputs), self.name, self.meta, self.state)

    def remapped(self, mapping: Mapping[Node, Node], meta: Mapping[str, Any] | None = None,
                 outputs: tuple[Node, ...] | None = None) -> Graph:
        """This graph's roots through `mapping` (old node -> rebuilt node; unmapped nodes stay):
        how a pass that rebuilt nodes makes its result, so that no state slot is dropped."""
        def follow(n: Node) -> Node:
            return mapping.get(n, n)

        state = tuple(StateSlot(follow(s.read), follow(s.write)) for s in self.state)
        outs = tuple(map(follow, self.outputs)) if outputs is None else tuple(outputs)
        return Graph(self.inputs, outs, self.name, self.meta if meta is None else meta, state)

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.nodes)} nodes>"

    def to_networkx(self):  # noqa: ANN201 - networkx is imported lazily
        """A networkx.MultiDiGraph view (node ids are positions in `nodes`) for analyses."""
        import networkx as nx

        index = {n: i for i, n in enumerate(self.nodes)}
        g = nx.MultiDiGraph()
        for n, i in index.items():
            g.add_node(i, node=n)
            for j, src in enumerate(n.inputs):
                g.add_edge(index[src], i, arg=j)
        return g


def unflatten_outputs(structure: Any, values: tuple[Any, ...]) -> Any:
    """`values` (one per graph output) arranged as `structure`, the form of
    `Graph.meta["output_structure"]`: a dict of {name: structure}, a list/tuple of structures,
    or an int, the index of an output. {"logits": 0, "hidden": 1} -> {"logits": v0, ...}."""
    if isinstance(structure, Mapping):
        return {k: unflatten_outputs(v, values) for k, v in structure.items()}
    if isinstance(structure, list | tuple):
        return tuple(unflatten_outputs(v, values) for v in structure)
    return values[structure]


def structure_leaves(structure: Any) -> list[Any]:
    """The leaves of an output structure in order (they must be 0, 1, ... n-1)."""
    if isinstance(structure, Mapping):
        return [x for v in structure.values() for x in structure_leaves(v)]
    if isinstance(structure, list | tuple):
        return [x for v in structure for x in structure_leaves(v)]
    return [structure]


class GraphError(ValueError):
    """A malformed graph: the message names the offending node."""


def structurally_equal(a: Graph, b: Graph) -> bool:
    """Same ops, wiring, attributes, types and constant contents (not identity)."""
    if len(a.nodes) != len(b.nodes):
        return False
    index_a = {n: i for i, n in enumerate(a.nodes)}
    index_b = {n: i for i, n in enumerate(b.nodes)}
    for x, y in zip(a.nodes, b.nodes, strict=True):
        if (x.op, x.type, x.loc) != (y.op, y.type, y.loc):
            return False
        if [index_a[i] for i in x.inputs] != [index_b[i] for i in y.inputs]:
            return False
        if not attrs_equal(x.attrs, y.attrs):
            return False
    slots = [(s.read, s.write) for s in a.state], [(s.read, s.write) for s in b.state]
    return ([index_a[o] for o in a.outputs] == [index_b[o] for o in b.outputs]
            and [(index_a[r], index_a[w]) for r, w in slots[0]]
            == [(index_b[r], index_b[w]) for r, w in slots[1]])


def attrs_equal(a: Attrs, b: Attrs) -> bool:
    if set(a) != set(b):
        return False
    for k in a:
        va, vb = a[k], b[k]
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            if not (isinstance(va, np.ndarray) and isinstance(vb, np.ndarray)):
                return False
            if va.shape != vb.shape or not np.array_equal(va, vb, equal_nan=True):
                return False
        elif va != vb:
            return False
    return True


def parse(text: str, weights: Mapping[str, np.ndarray] | None = None) -> Graph:
    """Read a graph from its text dump (see `npuc.printer`); `weights` maps digests to arrays."""
    from .parser import parse as parse_text

    return parse_text(text, weights)
