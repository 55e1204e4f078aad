"""Per-rank log files: follow them as they grow, label each line with its rank and node.

Every backend that can reach the job's log directory (the local backend; Slurm on a
shared filesystem) shows logs the same way: ``[n1 r3] line``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

_LOG_NAME = re.compile(r"^(rank|node)-(\d+)\.log$")


@dataclass(frozen=True, order=True)
class LogSource:
    kind: str  # "rank" or "node"
    number: int

    def label(self, procs_per_node: int) -> str:
        if self.kind == "rank":
            return f"n{self.number // procs_per_node} r{self.number}"
        return f"n{self.number}"

    @property
    def filename(self) -> str:
        return f"{self.kind}-{self.number}.log"

    @classmethod
    def from_filename(cls, name: str) -> LogSource | None:
        match = _LOG_NAME.match(name)
        return cls(match.group(1), int(match.group(2))) if match else None


@dataclass
class _Cursor:
    offset: int = 0
    partial: bytes = b""


def _read_local(path: str, offset: int) -> bytes:
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read()


@dataclass
class LogFollower:
    """Reads new complete lines from every log file in a directory, in small polls.

    ``reader`` and ``lister`` reach the directory (this machine's filesystem by default; a
    backend may read through ssh instead).
    """

    log_dir: Path
    rank: int | None = None  # follow only this rank (and no node logs)
    reader: Callable[[str, int], bytes] = _read_local
    lister: Callable[[], list[str]] | None = None
    cursors: dict[LogSource, _Cursor] = field(default_factory=dict)

    def _names(self) -> list[str]:
        if self.lister is not None:
            return self.lister()
        try:
            return os.listdir(self.log_dir)
        except FileNotFoundError:
            return []

    def _sources(self) -> list[LogSource]:
        if self.rank is not None:
            return [LogSource("rank", self.rank)]
        found = (LogSource.from_filename(n) for n in self._names())
        return sorted(s for s in found if s is not None)

    def poll(self, final: bool = False) -> Iterator[tuple[LogSource, str]]:
        """New lines since the last poll; ``final`` also returns unterminated last lines."""
        for source in self._sources():
            cursor = self.cursors.setdefault(source, _Cursor())
            try:
                data = self.reader(str(self.log_dir / source.filename), cursor.offset)
            except FileNotFoundError:
                continue
            if not data and not (final and cursor.partial):
                continue
            cursor.offset += len(data)
            chunk = cursor.partial + data
            lines = chunk.split(b"\n")
            cursor.partial = lines.pop()
            if final and cursor.partial:
                lines.append(cursor.partial)
                cursor.partial = b""
            for line in lines:
                yield source, line.decode("utf-8", errors="replace").rstrip("\r")


def read_all(log_dir: Path, rank: int | None = None) -> Iterator[tuple[LogSource, str]]:
    """Every line written so far, file by file."""
    yield from LogFollower(log_dir, rank).poll(final=True)
