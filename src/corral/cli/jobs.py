"""``corral ps``, ``status``, ``logs``, ``cancel``, ``wait``: jobs by id, on any backend."""

from __future__ import annotations

import json
import time

import click

from corral.backends import backend_for_job
from corral.backends.base import Backend
from corral.console import LinePrinter
from corral.rundir import RunDir, iter_run_dirs
from corral.spec import JobState
from corral.status import JobStatus


def backend_of(job_id: str) -> Backend:
    """The backend a job was submitted to, from corral's record of it."""
    return backend_for_job(RunDir.find(job_id).read_json("job.json"))


def _age(status: JobStatus) -> str:
    if status.created is None:
        return "-"
    seconds = int(time.time() - status.created)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.command("ps")
@click.option("--backend", help="Only jobs of this backend (default: every backend).")
@click.option("-a", "--all", "show_all", is_flag=True, help="Include finished jobs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ps_command(backend: str | None, show_all: bool, as_json: bool) -> int:
    """List jobs (running ones; -a for all), newest first."""
    from rich.console import Console
    from rich.table import Table

    jobs = []
    for run in iter_run_dirs(backend=backend):
        status = backend_for_job(run.read_json("job.json")).describe(run.job_id)
        if show_all or not status.state.is_terminal():
            jobs.append(status)
    if as_json:
        click.echo(json.dumps([s.to_json() for s in jobs], indent=1))
        return 0
    table = Table(box=None, header_style="bold")
    for column in ("JOB ID", "NAME", "BACKEND", "STATE", "NODES", "AGE"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold")
    for s in jobs:
        table.add_row(s.job_id, s.name, s.backend, s.state.value,
                      f"{s.nodes}x{s.procs_per_node}", _age(s), s.reason)
    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # piped: never cut a job id
    console.print(table)
    return 0


@click.command("status")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(job_id: str, as_json: bool) -> int:
    """Show a job's state, its ranks and its first failure."""
    status = backend_of(job_id).describe(job_id)
    if as_json:
        click.echo(json.dumps(status.to_json(), indent=1))
        return 0
    click.echo(status.summary())
    for rank in status.ranks:
        code = "" if rank.returncode is None else f" returncode {rank.returncode}"
        click.echo(f"  rank {rank.rank} node {rank.node}: {rank.state.value}{code}")
    return 0


@click.command("logs")
@click.argument("job_id")
@click.option("--rank", type=int, help="Only this rank's output, without prefixes.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the job ends.")
def logs_command(job_id: str, rank: int | None, follow: bool) -> int:
    """Print a job's output, every line prefixed with its node and rank."""
    engine = backend_of(job_id)
    status = engine.describe(job_id)
    printer = LinePrinter(status.procs_per_node)
    for source, line in engine.logs(job_id, rank=rank, follow=follow):
        if rank is None:
            printer(source, line)
        else:
            click.echo(line)
    return 0


@click.command("cancel")
@click.argument("job_ids", nargs=-1, required=True)
def cancel_command(job_ids: tuple[str, ...]) -> int:
    """Stop every rank of each job (a finished job is left as it is)."""
    for job_id in job_ids:
        status = backend_of(job_id).cancel(job_id)
        click.echo(f"{job_id}: {status.state.value}")
    return 0


@click.command("wait")
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", type=float, help="Give up after this many seconds (exit 124).")
def wait_command(job_ids: tuple[str, ...], timeout: float | None) -> int:
    """Wait for jobs to end; exit 0 only if all succeeded."""
    deadline = None if timeout is None else time.monotonic() + timeout
    worst = 0
    for job_id in job_ids:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        status = backend_of(job_id).wait(job_id, timeout=left)
        if not status.state.is_terminal():
            click.echo(f"{job_id}: still {status.state.value}", err=True)
            return 124
        click.echo(f"{job_id}: {status.state.value}")
        if status.state is not JobState.SUCCEEDED:
            worst = worst or status.returncode
    return worst
