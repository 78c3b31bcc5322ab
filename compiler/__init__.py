"""npuc: a graph compiler and simulator for NPU targets.

    import npuc
    g = npuc.capture(model, (x,))                        # float IR graph
    npuc.interpret(g, x)                                 # numpy reference semantics
    cm = npuc.compile(model, (x,), target="npu-int8")    # stages, ir, run, dump
"""

from . import ir, passes, targets  # noqa: E402, I001  (registers passes; needs the core above)
from .driver import CompiledModel, compile, summarize
from .errors import UnsupportedError
from .frontend import capture
from .interpreter import interpret
from .ir import DType, Graph, Node, QuantParams, TensorType
from .llm import CompiledLM, compile_lm

__all__ = ["capture", "compile", "interpret", "summarize", "ir", "passes", "targets", "Graph",
           "Node", "DType", "TensorType", "QuantParams", "CompiledModel", "UnsupportedError",
           "CompiledLM", "compile_lm"]
__version__ = "0.1.0"
