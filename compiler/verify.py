"""Graph invariants, checked between passes in debug mode and by `Graph.verify()`.

A graph is well formed when it has no cycle; every `input` node it reaches is one of its
declared inputs and every `state` node one of its state slots' reads (nothing dangles); each
state slot, under a name of its own, writes a value of exactly its read's type (quantization
included); every node's op is in the op table with a legal arity and legal attributes; and
every node's recorded type is what its op infers from its operands.
"""

from __future__ import annotations

from .ir import Graph, GraphError, Node, digest, structure_leaves
from .ops import OPS


def _where(node: Node) -> str:
    return f"{node.op} node{' at ' + repr(node.loc) if node.loc else ''}"


def verify(graph: Graph) -> None:
    """Raise GraphError naming the first bad node."""
    nodes = graph.nodes  # raises GraphError on a cycle
    declared = set(map(id, graph.inputs))
    if len(declared) != len(graph.inputs):
        raise GraphError("an input is listed twice")
    names = [n.attrs.get("name") for n in graph.inputs]
    if len(set(names)) != len(names):
        raise GraphError(f"input names repeat: {names}")
    reads = _verify_state(graph)
    for node in nodes:
        opdef = OPS.get(node.op)
        if opdef is None:
            raise GraphError(f"{_where(node)}: unknown op '{node.op}'")
        _verify_quant(node)
        if node.op == "input":
            if id(node) not in declared:
                raise GraphError(f"dangling value: input {node.attrs.get('name')!r} is used but "
                                 "is not an input of the graph")
            continue
        if node.op == "state":
            if id(node) not in reads:
                raise GraphError(f"dangling value: state {node.attrs.get('name')!r} is read but "
                                 "is not one of the graph's state slots")
            continue
        lo, hi = opdef.arity
        if not lo <= len(node.inputs) <= hi:
            raise GraphError(f"{_where(node)}: {len(node.inputs)} inputs, expects {lo}..{hi}")
        try:
            attrs = opdef.check_attrs(node.attrs)
        except TypeError as e:
            raise GraphError(f"{_where(node)}: {e}") from None
        if node.op == "const":
            _verify_const(node)
            continue
        try:
            inferred = opdef.infer([i.type for i in node.inputs], attrs)
        except Exception as e:  # any failure to type a node is the graph's fault, not ours
            raise GraphError(f"{_where(node)}: {type(e).__name__}: {e}") from None
        if (inferred.shape, inferred.dtype) != (node.type.shape, node.type.dtype):
            raise GraphError(f"{_where(node)}: type {node.type.shape} {node.type.dtype} but its "
                             f"operands give {inferred.shape} {inferred.dtype}")
    for out in graph.outputs:
        if out.op == "input" and id(out) not in declared:
            raise GraphError("dangling value: an output is an undeclared input")
    structure = graph.meta.get("output_structure")
    if structure is not None and structure_leaves(structure) != list(range(len(graph.outputs))):
        raise GraphError(f"meta output_structure {structure} does not number the graph's "
                         f"{len(graph.outputs)} outputs 0, 1, ... in order")


def _verify_state(graph: Graph) -> set[int]:
    """The ids of the slots' read nodes, after checking the slots."""
    names = [slot.read.attrs.get("name") for slot in graph.state]
    if len(set(names)) != len(names):
        raise GraphError(f"state names repeat: {names}")
    for slot in graph.state:
        if slot.read.op != "state":
            raise GraphError(f"state {slot.name!r}: its read is a {slot.read.op} node, not state")
        if slot.write.type != slot.read.type:
            raise GraphError(f"state {slot.name!r}: reads {slot.read.type} but writes "
                             f"{slot.write.type} ({_where(slot.write)})")
    return {id(slot.read) for slot in graph.state}


def _verify_quant(node: Node) -> None:
    """Quantization parameters belong to integer values, one per channel of their axis (the
    zero points' range is TensorType's own check)."""
    q, t = node.type.quant, node.type
    if q is None:
        return
    if t.dtype.is_float:
        raise GraphError(f"{_where(node)}: a {t.dtype} value has quantization parameters")
    if q.axis is not None and not (0 <= q.axis < t.rank and len(q.scale) == t.shape[q.axis]):
        raise GraphError(f"{_where(node)}: {len(q.scale)} per-channel scales on axis {q.axis} "
                         f"of shape {t.shape}")


def _verify_const(node: Node) -> None:
    from .quant.constants import encoding_of

    try:
        dense = encoding_of(node).is_dense
    except ValueError as e:
        raise GraphError(f"{_where(node)}: {e}") from None
    data = node.attrs.get("data")
    if data is None:
        return
    if not dense:
        data, raw = node.data, data  # decodes, so a malformed payload fails here
        if data.shape != node.type.shape:
            raise GraphError(f"{_where(node)}: payload decodes to {data.shape}, type says "
                             f"{node.type.shape}")
        data = raw
    elif tuple(data.shape) != node.type.shape or data.dtype != node.type.dtype.numpy:
        raise GraphError(f"{_where(node)}: data {data.shape} {data.dtype} does not match type "
                         f"{node.type.shape} {node.type.dtype}")
    if digest(data) != node.attrs["digest"]:
        raise GraphError(f"{_where(node)}: digest {node.attrs['digest']} does not match its data")
