"""Writes one named section of bench/RESULTS.md, keeping the other sections as they are."""

from __future__ import annotations

import datetime
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def cpu() -> str:
    """The CPU's model name and the vector extensions that decide the generated C's speed."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    model = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or ["", ""])[1].split())
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model[1].strip() if model else platform.machine()} ({', '.join(have) or 'no AVX2'})"


def write_section(title: str, script: str, table: str, note: str = "") -> None:
    """Replace (or append) the section `## title` with the table and how it was measured."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    stamp = datetime.date.today().isoformat()
    body = (f"## {title}\n\nMeasured by `{script}` on {stamp}, {cpu()}, "
            f"{platform.python_version()}. {note}\n\n{table}\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    RESULTS.write_text(text)
