"""Print log lines with a per-rank prefix, colored when the output is a terminal.

Standard library only, so that the commands that print start fast.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from corral.logs import LogSource

_COLORS = (36, 33, 32, 35, 34, 31, 96, 93, 92, 95, 94, 91)


class LinePrinter:
    """A log sink: ``[n1 r3] text``."""

    def __init__(
        self, procs_per_node: int, stream: TextIO | None = None, color: bool | None = None
    ) -> None:
        self.procs_per_node = procs_per_node
        self.stream = stream
        out = stream or sys.stdout
        self.color = out.isatty() if color is None else color

    def __call__(self, source: LogSource, line: str) -> None:
        stream = self.stream or sys.stdout  # looked up per call: notebooks swap sys.stdout
        label = f"[{source.label(self.procs_per_node)}]"
        if self.color:
            code = _COLORS[source.number % len(_COLORS)] if source.kind == "rank" else 90
            label = f"\033[{code}m{label}\033[0m"
        stream.write(f"{label} {line}\n")
        stream.flush()


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, limit: int = 300) -> str:
    """Text safe for a terminal: control characters (ANSI escapes, newlines) escaped."""
    shown = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return shown if len(shown) <= limit else shown[:limit - 3] + "..."


def cells(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide characters two, combining ones 0."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, one line per row (the cells must already be
    printable). Plain text: it starts fast, and scripts can cut it."""
    widths = [max([cells(h), *(cells(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return "".join(
        "  ".join(v + " " * (w - cells(v)) for v, w in zip(row, widths, strict=True)).rstrip()
        + "\n" for row in (headers, *rows))


def printable_lines(text: str) -> str:
    """Several lines (a job's summary), each made printable; the line breaks kept."""
    return "\n".join(printable(line, 2000) for line in text.splitlines())


def working(what: str) -> contextlib.AbstractContextManager[object]:
    """A spinner with ``what`` and the time taken, on stderr while a long step runs, when
    stderr is a terminal; nothing otherwise (logs and pipes get no control characters)."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(what, spinner="dots")
