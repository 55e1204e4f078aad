"""Standard Workload Format (SWF) traces: read them, and turn them into jobs to simulate.

An SWF file (Parallel Workloads Archive, Feitelson et al.) has header comments starting
with ``;`` (``; MaxProcs: 100``) and one job a line: 18 whitespace-separated numbers, -1
where unknown. ``.swf.gz`` files are read through gzip.

:func:`trace_jobs` applies the "strong filter" that published simulations use (see
``shared/data/traces/README.md``): processors and times must be known and positive, the
run time is capped at the requested time (the job was killed at its limit), and a job
occupies the processors it requested.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from corral.errors import CorralError, SpecError

FIELDS = ("job", "submit", "wait", "run", "allocated_procs", "avg_cpu", "used_memory",
          "requested_procs", "requested_time", "requested_memory", "status", "user", "group",
          "executable", "queue", "partition", "preceding_job", "think_time")


@dataclass(frozen=True, slots=True)
class SwfRecord:
    """One job line of a trace, the fields a scheduler simulation reads."""

    job: int
    submit: float
    wait: float
    run: float
    allocated_procs: int
    requested_procs: int
    requested_time: float
    status: int
    user: int
    queue: int


@dataclass(frozen=True, slots=True)
class Trace:
    """A whole trace: header fields (``MaxProcs``...) and its job lines in file order."""

    header: dict[str, str]
    records: tuple[SwfRecord, ...]

    @property
    def max_procs(self) -> int | None:
        """The machine's size from the header (MaxProcs, else MaxNodes), if given."""
        for key in ("MaxProcs", "MaxNodes"):
            value = self.header.get(key, "").split()
            if value and value[0].lstrip("-").isdigit() and int(value[0]) > 0:
                return int(value[0])
        return None


@dataclass(frozen=True, slots=True)
class TraceJob:
    """A job to simulate: it asks for ``procs`` for ``estimate`` seconds and runs ``run``."""

    id: str
    seq: int
    user: str
    queue: str
    submit: float
    procs: int
    run: float
    estimate: float


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")  # the caller closes it


def parse_lines(lines: Iterator[str], source: str = "trace") -> Trace:
    """Parse SWF text; a SpecError names the line, its text and what a line must be."""
    header: dict[str, str] = {}
    records: list[SwfRecord] = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(";"):
            key, sep, value = text[1:].partition(":")
            if sep:
                header.setdefault(key.strip(), value.strip())
            continue
        fields = text.split()
        try:
            if len(fields) < 12:
                raise ValueError
            values = [float(f) for f in fields]
        except ValueError:
            raise SpecError([(f"{source} line {number}", text[:120],
                              "18 whitespace-separated numbers (SWF; -1 where unknown) "
                              "or a ';' comment")], "SWF trace") from None
        values += [-1.0] * (len(FIELDS) - len(values))
        records.append(SwfRecord(
            job=int(values[0]), submit=values[1], wait=values[2], run=values[3],
            allocated_procs=int(values[4]), requested_procs=int(values[7]),
            requested_time=values[8], status=int(values[10]), user=int(values[11]),
            queue=int(values[14])))
    return Trace(header, tuple(records))


def read_swf(path: str | Path) -> Trace:
    """Read a ``.swf`` or ``.swf.gz`` file."""
    path = Path(path)
    try:
        with _open_text(path) as handle:
            return parse_lines(iter(handle), path.name)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise CorralError(f"cannot read the trace {str(path)!r}: {exc}") from exc


def trace_jobs(trace: Trace, max_procs: int, queues: bool = False) -> list[TraceJob]:
    """The strong filter, in the published order: keep jobs whose allocated and requested
    processors are both ≤ ``max_procs`` (if only one is > 0, use it for both; if neither,
    drop the job); drop jobs whose run time or requested time is ≤ 0; cap the run time at
    the requested time; drop jobs submitted before 0. A job occupies its requested
    processors, runs the capped run time, and the scheduler sees the requested time.
    ``queues``: keep the trace's queue numbers (else every job is in queue "default")."""
    jobs: list[TraceJob] = []
    for record in trace.records:
        allocated, requested = record.allocated_procs, record.requested_procs
        if allocated <= 0 and requested <= 0:
            continue
        if allocated <= 0:
            allocated = requested
        elif requested <= 0:
            requested = allocated
        if allocated > max_procs or requested > max_procs:
            continue
        if record.run <= 0 or record.requested_time <= 0:
            continue
        if record.submit < 0:
            continue
        jobs.append(TraceJob(
            id=str(record.job), seq=len(jobs), user=str(record.user),
            queue=str(record.queue) if queues and record.queue > 0 else "default",
            submit=record.submit, procs=requested,
            run=min(record.run, record.requested_time), estimate=record.requested_time))
    return jobs
