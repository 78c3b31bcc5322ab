"""npuc.codegen: a lowered integer-only graph as a self-contained C99 project.

    cm.emit_c("out/")        # or npuc.codegen.emit_c(cm.ir, "out/", target=cm.target)
    make -C out/ && out/model in.bin out.bin

Python builds a flat view model (`view.py`): one static arena at the memory plan's offsets,
constant arrays in their stored encodings, and one layer function per op whose body is rendered
from `templates/ops/<kernel>.c.j2` with every shape and quantization parameter as a literal. The
templates only loop and substitute. Each op kind has a lowering in `codegen/kernels/` turning a
node into a template and its parameters; an op without one is an `UnsupportedError` at emit
time, naming the op and its module path, never a build error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npuc.ir import Graph

from .render import write_project
from .view import View, build_program, build_view

__all__ = ["View", "build_program", "build_view", "emit_c", "emit_program", "write_project"]


def emit_c(graph: Graph, out_dir: str | Path, *, target: Any = None,
           pipeline: tuple[str, ...] = ()) -> Path:
    """Write the C project of `graph` (integer-only, as `npuc.compile` lowers it for an integer
    target) into `out_dir`; returns the directory. `target` and `pipeline` go into the banner."""
    view = build_view(graph, target_name=getattr(target, "name", target or "unknown"),
                      pipeline=tuple(pipeline))
    return write_project(view, Path(out_dir))


def emit_program(graphs: dict[str, Graph], out_dir: str | Path, *, main: str, target: Any = None,
                 pipeline: tuple[str, ...] = (), **params: Any) -> Path:
    """Write one C project running several graphs (`build_program`: entry `npuc_<name>_run`
    per graph, shared constants and state), its main program rendered from
    `templates/<main>.j2` with `params` (e.g. "generate.c": an LM's token loop)."""
    view = build_program(graphs, target_name=getattr(target, "name", target or "unknown"),
                         pipeline=tuple(pipeline))
    return write_project(view, Path(out_dir), main, **params)
