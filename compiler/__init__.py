"""npuc: a graph compiler and simulator for NPU targets.

    import npuc
    g = npuc.capture(model, (x,))          # float IR graph
    npuc.interpret(g, x)                   # numpy reference semantics
    cm = npuc.compile(model, (x,), target="npu-int8")
"""

from . import ir
from .errors import UnsupportedError
from .frontend import capture
from .interpreter import interpret
from .ir import DType, Graph, Node, QuantParams, TensorType

__all__ = ["capture", "interpret", "ir", "Graph", "Node", "DType", "TensorType", "QuantParams",
           "UnsupportedError"]
__version__ = "0.1.0"
