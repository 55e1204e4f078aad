"""``corral.log(step=..., loss=..., **metrics)``: metrics from any rank, kept with the job.

Each rank appends its points to ``<run dir>/metrics/rank-<RANK>.jsonl``, one JSON array per
line: ``[time, step, {"name": value, ...}]``. The file is opened once per process and
written through a buffer flushed at most every :data:`FLUSH_SECONDS` (and at exit), so a
call costs a few microseconds: cheap enough for every training step. Readers take complete
lines only. Outside a corral job (no ``CORRAL_RUN_DIR``) nothing is kept, and the first
call says so once.

Only the standard library is imported here: ranks call this on their hot path.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from numbers import Real
from typing import IO, Any

from corral.errors import MetricError

FLUSH_SECONDS = 1.0
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def metrics_file(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, "metrics", f"rank-{rank}.jsonl")


class _Writer:
    def __init__(self, handle: IO[str] | None) -> None:
        self.handle = handle
        self.flushed = time.time()  # wall clock, as each point's own time: one call per point

    def write(self, step: int | None, values: Mapping[str, Any]) -> None:
        if self.handle is None:
            return
        now = time.time()
        self.handle.write(_dumps([now, step, values]) + "\n")
        if now - self.flushed >= FLUSH_SECONDS:
            self.handle.flush()
            self.flushed = now

    def close(self) -> None:
        if self.handle is not None and not self.handle.closed:
            self.handle.flush()


_writer: _Writer | None = None


def _open() -> _Writer:
    global _writer
    run_dir = os.environ.get("CORRAL_RUN_DIR")
    if not run_dir:
        print("corral.log: not inside a corral job (no CORRAL_RUN_DIR): metrics are not kept",
              file=sys.stderr)
        _writer = _Writer(None)
        return _writer
    rank = int(os.environ.get("RANK") or 0)
    path = metrics_file(run_dir, rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # open for the rest of the process; flushed at exit
    _writer = _Writer(open(path, "a", encoding="utf-8", buffering=1 << 16))  # noqa: SIM115
    atexit.register(_writer.close)
    return _writer


def _bad(name: str, value: object) -> MetricError:
    return MetricError(f"corral.log: {name}={value!r} is not a finite number; a metric is an "
                     "int or a float (call .item() on a one-element tensor or array)")


def log(step: int | None = None, **values: float) -> None:
    """Record ``values`` (numbers) for this rank, at ``step`` if given, with the time."""
    for name, value in values.items():
        kind = type(value)
        if kind is float or kind is int:  # the common case, checked first
            if kind is float and not math.isfinite(value):
                raise _bad(name, value)
            continue
        if isinstance(value, bool) or not isinstance(value, Real):
            raise _bad(name, value)
        values[name] = float(value)  # numpy scalars and the like
        if not math.isfinite(values[name]):
            raise _bad(name, value)
    if step is not None and type(step) is not int:
        raise MetricError(f"corral.log: step={step!r} is not an int")
    (_writer or _open()).write(step, values)


@dataclass(frozen=True)
class Point:
    """One logged value: which rank, when, at which step, what and how much."""

    rank: int
    time: float
    step: int | None
    name: str
    value: float


def parse_points(rank: int, text: str) -> Iterator[Point]:
    """The points of one rank's file; a line cut short by a running writer is skipped."""
    for line in text.splitlines():
        try:
            when, step, values = json.loads(line)
        except ValueError:
            continue
        for name, value in values.items():
            yield Point(rank, float(when), step, name, float(value))
