"""The errors npuc raises at users: one type for what cannot be compiled, naming what and where."""

from __future__ import annotations


class UnsupportedError(RuntimeError):
    """An op, model or option npuc cannot handle. The message names the op (e.g. `aten.fft_rfft`),
    the module path that produced it, the stage, and what the user can do instead."""

    def __init__(self, what: str, *, op: str | None = None, loc: str | None = None,
                 stage: str = "capture", hint: str | None = None) -> None:
        self.op, self.loc, self.stage, self.hint = op, loc, stage, hint
        parts = [f"[{stage}] {what}"]
        if op:
            parts.append(f"  op:     {op}")
        if loc is not None:
            parts.append(f"  module: {loc or '<top level>'}")
        if hint:
            parts.append(f"  what to do: {hint}")
        super().__init__("\n".join(parts))
