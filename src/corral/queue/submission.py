"""How a job enters the embedded queue: dependencies, arrays, retries, preemptibility, hold.

These are facts about one submission, not about what runs (that is the :class:`JobSpec`),
so they travel beside the spec: ``corral submit --after ID --array 0-99%8 --retries 2``,
or ``corral.submit(spec, after=[...], array="0-99%8", retries=2)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from corral.errors import SpecError
from corral.queue.model import Dependency, DependencyKind

MAX_ARRAY_TASKS = 100_000
MAX_RETRIES = 100
_ARRAY = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$")
KINDS = ", ".join(k.value for k in DependencyKind)


@dataclass(frozen=True)
class ArrayTasks:
    """``--array 0-99%8``: task indices, and at most ``limit`` running at once."""

    indices: tuple[int, ...]
    limit: int | None = None


@dataclass(frozen=True)
class Submission:
    """The queue's view of one submission (every field has a harmless default)."""

    after: tuple[Dependency, ...] = ()
    array: ArrayTasks | None = None
    retries: int = 0
    preemptible: bool = False
    hold: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or not (
                0 <= self.retries <= MAX_RETRIES):
            raise SpecError([("retries", self.retries,
                              f"a whole number of retries from 0 to {MAX_RETRIES}")])


def parse_after(values: Iterable[str]) -> tuple[Dependency, ...]:
    """``ID`` (afterok), ``afterany:ID``, ``afternotok:ID1:ID2``, comma-separated or repeated."""
    found: list[Dependency] = []
    for value in values:
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            kind_text, sep, ids = part.partition(":")
            if not sep:
                kind_text, ids = DependencyKind.AFTER_OK.value, part
            try:
                kind = DependencyKind(kind_text)
            except ValueError:
                raise SpecError([("after", part, f"ID, or KIND:ID with KIND one of {KINDS}")]
                                ) from None
            for job_id in ids.split(":"):
                if not job_id:
                    raise SpecError([("after", part, "a job id after the kind, e.g. "
                                      "afterok:train-2611-ab12cd")])
                found.append(Dependency(kind, job_id))
    return tuple(found)


def parse_array(text: str) -> ArrayTasks:
    """Slurm's ``--array`` syntax: ``0-99``, ``1,3,5``, ``0-20:5``, each with ``%N``."""
    accepted = "indices like 0-99, 1,3,5 or 0-20:5, optionally %N (at most N at once)"
    body, sep, limit_text = str(text).strip().partition("%")
    limit: int | None = None
    if sep:
        if not limit_text.isdigit() or int(limit_text) < 1:
            raise SpecError([("array", text, accepted + "; N is at least 1")])
        limit = int(limit_text)
    indices: set[int] = set()
    for part in body.split(","):
        match = _ARRAY.match(part.strip())
        if match is None:
            raise SpecError([("array", text, accepted)])
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        step = int(match.group(3)) if match.group(3) is not None else 1
        if last < first or step < 1:
            raise SpecError([("array", text, accepted + "; ranges go upwards")])
        if (last - first) // step + 1 + len(indices) > MAX_ARRAY_TASKS:
            raise SpecError([("array", text, f"at most {MAX_ARRAY_TASKS} tasks")])
        indices.update(range(first, last + 1, step))
    return ArrayTasks(tuple(sorted(indices)), limit)
