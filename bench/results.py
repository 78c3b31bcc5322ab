"""Writes one named section of bench/RESULTS.md, keeping the other sections as they are."""

from __future__ import annotations

import datetime
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).parent / "RESULTS.md"


def write_section(title: str, script: str, table: str, note: str = "") -> None:
    """Replace (or append) the section `## title` with the table and how it was measured."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    stamp = datetime.date.today().isoformat()
    body = (f"## {title}\n\nMeasured by `{script}` on {stamp}, {platform.machine()}, "
            f"{platform.python_version()}. {note}\n\n{table}\n")
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(body + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + body
    RESULTS.write_text(text)
