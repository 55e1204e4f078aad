"""``corral ps``, ``status``, ``logs``, ``cancel``, ``wait``: jobs by id, on any backend.

They read the job store; the watcher (:mod:`corral.watcher`) brings it up to date first,
asking each engine at most once per its poll interval. A job whose record or backend
cannot be read is shown as UNKNOWN with the reason; the others are listed as usual.

A backend (and with it the job spec and pydantic) is imported only for a job that needs
it: ``corral ps`` over finished jobs reads the store and nothing more.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import click

from corral.console import LinePrinter, columns, printable, printable_lines
from corral.errors import CorralError, JobNotFound
from corral.jobstate import JobState
from corral.status import JobStatus
from corral.store import JobRecord, open_store

if TYPE_CHECKING:
    from corral.backends.base import Backend

T = TypeVar("T")


def backend_of(job_id: str) -> Backend:
    """The backend a job was submitted to, from corral's record of it."""
    from corral.backends import backend_for_job

    return backend_for_job(open_store().get(job_id))


def finished_status(job_id: str) -> JobStatus | None:
    """A finished job's status, from the store alone (the watcher never asks an engine
    about a finished job); None for an unfinished one, which its backend must look at."""
    store = open_store()
    return store.status(job_id) if store.get(job_id).state.is_terminal() else None


def refresh_all(records: Iterable[JobRecord]) -> dict[str, str]:
    """Ask each engine with unfinished jobs once; ``{poll_key: why}`` for those that failed."""
    live: dict[str, JobRecord] = {}
    for record in records:
        if not record.state.is_terminal():
            live.setdefault(record.poll_key, record)
    if not live:
        return {}
    from corral.backends import backend_for_job  # only now: a backend imports the spec

    problems: dict[str, str] = {}
    for key, record in live.items():
        try:
            backend_for_job(record).refresh()
        except CorralError as exc:
            problems[key] = f"{record.backend} cannot be asked: {exc}"
    return problems


def _age(created: float | None) -> str:
    if not created:
        return "-"
    seconds = int(time.time() - created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


WAIT_TIMED_OUT = 75  # EX_TEMPFAIL: the wait ran out, the jobs go on; try again later
PS_COLUMNS = ("JOB ID", "NAME", "USER", "BACKEND", "STATE", "NODES", "AGE", "REASON")
PRIORITY_COLUMNS = ("JOB ID", "USER", "QUEUE", "PRIORITY", "AGE", "FAIRSHARE", "SIZE", "QOS")


@click.command("ps")
@click.option("--backend", help="Only jobs of this backend (default: every backend).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs.")
@click.option("--priority", is_flag=True,
              help="The local queue's waiting jobs, highest priority first, with the "
                   "weighted factors of their priority (like sprio).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ps_command(backend: str | None, show_all: bool, priority: bool, as_json: bool) -> int:
    """List jobs (unfinished ones; -a for all), newest first."""
    store = open_store()
    if priority:
        return _ps_priority(as_json)
    problems = refresh_all(store.jobs(backend, live=True))
    records = store.jobs(backend, live=not show_all)
    if as_json:
        click.echo(json.dumps([_record_json(r, problems) for r in records], indent=1))
        return 0
    rows = []
    for r in records:
        state, reason = r.state.value, r.reason
        if r.poll_key in problems and not r.state.is_terminal():
            state, reason = JobState.UNKNOWN.value, problems[r.poll_key]
        if r.attempt > 1:
            state += f" (attempt {r.attempt})"
        rows.append([*(printable(v, 80) for v in (
            r.id, r.name, r.user, r.backend, state, f"{r.nodes}x{r.procs_per_node}",
            _age(r.created))), printable(reason)])
    click.echo(columns(PS_COLUMNS, rows), nl=False)
    return 0


def _ps_priority(as_json: bool) -> int:
    """``ps --priority``: each waiting job's priority and its weighted factors."""
    from corral.queue.ledger import Ledger
    from corral.queue.machine import NO_LIMIT, probe
    from corral.queue.policy import priority_factors

    ledger = Ledger(open_store())
    now = time.time()
    rows = {r.job_id: r for r in ledger.rows()}
    state = ledger.state(list(rows.values()), probe().node, now, NO_LIMIT)
    weights = ledger.weights
    found = sorted(priority_factors(state, now, weights).items(),
                   key=lambda item: (-item[1].priority, rows[item[0]].seq))
    data = [{"job_id": job_id, "user": rows[job_id].user, "queue": rows[job_id].queue,
             "priority": round(f.priority, 1), "age": round(weights.age * f.age, 1),
             "fairshare": round(weights.fairshare * f.fairshare, 1),
             "size": round(weights.size * f.size, 1), "qos": round(weights.qos * f.qos, 1)}
            for job_id, f in found]
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return 0
    click.echo(columns(PRIORITY_COLUMNS, [
        [printable(str(d["job_id"]), 80), printable(str(d["user"]), 40),
         printable(str(d["queue"]), 40),
         *(f"{d[k]:.1f}" for k in ("priority", "age", "fairshare", "size", "qos"))]
        for d in data]), nl=False)
    return 0


def _record_json(record: JobRecord, problems: dict[str, str]) -> dict[str, object]:
    data = record.to_status().to_json()
    if record.poll_key in problems and not record.state.is_terminal():
        data["state"], data["reason"] = JobState.UNKNOWN.value, problems[record.poll_key]
    return data


def for_each_job(job_ids: tuple[str, ...], act: Callable[[str], T]) -> tuple[list[T], int]:
    """Do ``act`` for every id it can; then name the unknown ones. Returns the results and
    125 if any id was unknown (0 otherwise)."""
    results, unknown = [], []
    for job_id in job_ids:
        try:
            results.append(act(job_id))
        except JobNotFound:
            unknown.append(repr(printable(job_id, 80)))
    if unknown:
        click.echo(f"corral: error: no job {', '.join(unknown)}; `corral ps -a` lists "
                   "the known jobs", err=True)
    return results, 125 if unknown else 0


@click.command("status")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(job_ids: tuple[str, ...], as_json: bool) -> int:
    """Show a job's state, its ranks, its first failure and its history."""
    def show(job_id: str) -> JobStatus:
        status = finished_status(job_id) or backend_of(job_id).describe(job_id)
        if as_json:
            data = status.to_json()
            data["events"] = [e.__dict__ for e in open_store().events(job_id)]
            click.echo(json.dumps(data, indent=1))
            return status
        click.echo(printable_lines(status.summary()))
        for rank in status.ranks:
            code = "" if rank.returncode is None else f" returncode {rank.returncode}"
            host = f" ({printable(rank.host, 60)})" if rank.host else ""
            click.echo(f"  rank {rank.rank} node {rank.node}{host}: {rank.state.value}{code}")
        for task in status.tasks:
            code = "" if task.returncode is None else f" returncode {task.returncode}"
            why = f": {printable(task.reason, 200)}" if task.reason else ""
            click.echo(f"  task {task.task}: {task.state.value}{code}{why}")
        click.echo("history:")
        for event in open_store().events(job_id):
            when = time.strftime("%H:%M:%S", time.localtime(event.time))
            arrow = f"{event.from_state or '-'} -> {event.to_state}"
            why = f": {printable(event.reason, 200)}" if event.reason else ""
            click.echo(f"  {when} {arrow} (attempt {event.attempt}, {event.source}){why}")
        return status

    _, code = for_each_job(job_ids, show)
    return code


@click.command("logs")
@click.argument("job_id")
@click.option("--rank", type=int, help="Only this rank's output, without prefixes.")
@click.option("--task", type=int, help="An array job's task (its own logs).")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
def logs_command(job_id: str, rank: int | None, task: int | None, follow: bool) -> int:
    """Print a job's output, every line prefixed with its node and rank."""
    engine = backend_of(job_id)
    record = engine.store.get(job_id)
    printer = LinePrinter(record.procs_per_node)
    extra = {} if task is None else {"task": task}  # only backends with arrays take it
    for source, line in engine.logs(job_id, rank=rank, follow=follow, **extra):
        if rank is None:
            printer(source, line)
        else:
            click.echo(line)
    return 0


@click.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
def cancel_command(job_ids: tuple[str, ...]) -> int:
    """Stop every rank of each job (a finished job is left as it is)."""
    def cancel(job_id: str) -> None:
        status = backend_of(job_id).cancel(job_id)
        click.echo(f"{job_id}: {status.state.value}")

    _, code = for_each_job(job_ids, cancel)
    return code


@click.command("wait")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", type=float,
              help="Give up after this many seconds (exit 75; a job's own time limit is 124).")
@click.option("--plain", is_flag=True,
              help="No live panel (the default when not on a terminal).")
def wait_command(job_ids: tuple[str, ...], timeout: float | None, plain: bool) -> int:
    """Wait for jobs to end; exit 0 only if all succeeded."""
    if timeout is not None and not 0 <= timeout <= 366 * 86400:  # NaN fails this too
        from corral.errors import SpecError

        raise SpecError([("timeout", timeout, "accepted: seconds from 0 to 366 days")])
    deadline = None if timeout is None else time.monotonic() + timeout

    def wait(job_id: str) -> JobStatus:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        status = finished_status(job_id)
        if status is None:
            backend = backend_of(job_id)
            if plain or not sys.stdout.isatty():
                status = backend.wait(job_id, timeout=left)
            else:
                from corral.live import LiveView

                record = backend.store.get(job_id)
                with LiveView(job_id, backend, record.procs_per_node):
                    status = backend.wait(job_id, timeout=left)
        shown = status.state.value if status.state.is_terminal() else (
            f"still {status.state.value}")
        click.echo(f"{job_id}: {shown}", err=not status.state.is_terminal())
        return status

    statuses, code = for_each_job(job_ids, wait)
    if any(not s.state.is_terminal() for s in statuses):
        return WAIT_TIMED_OUT
    failed = [s.returncode for s in statuses if s.state is not JobState.SUCCEEDED]
    return code or (failed[0] if failed else 0)
