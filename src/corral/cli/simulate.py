"""``corral simulate``: replay a workload trace through a queue policy, on a virtual clock.

The same policy code the queue's agent runs (:mod:`corral.queue.policy`), driven by
:mod:`corral.queue.simulate`; nothing is started, nothing is written.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import click

from corral.console import columns
from corral.errors import SpecError
from corral.queue.policy import DEFAULT_POLICY, POLICIES, policy_named
from corral.queue.simulate import SimulationResult, Summary, simulate
from corral.queue.swf import read_swf, trace_jobs

SUMMARY_COLUMNS = ("POLICY", "JOBS", "UTIL", "MEAN WAIT", "MAX WAIT", "MEAN BSLD", "MAX BSLD",
                   "MEAN FLOW")
USER_COLUMNS = ("USER", "JOBS", "MEAN WAIT", "MAX WAIT", "MEAN BSLD", "MAX BSLD")


def _seconds(value: float) -> str:
    return f"{value:,.0f}s"


def summary_row(name: str, summary: Summary) -> tuple[str, ...]:
    return (name, f"{summary.jobs:,}", f"{summary.utilization:.1%}", _seconds(summary.mean_wait),
            _seconds(summary.max_wait), f"{summary.mean_bounded_slowdown:.2f}",
            f"{summary.max_bounded_slowdown:.1f}", _seconds(summary.mean_flow))


def render(result: SimulationResult, users: int) -> str:
    """The summary line and the per-user table (most jobs first; ``users`` rows, 0: all)."""
    text = columns(SUMMARY_COLUMNS, [summary_row(result.policy, result.summary)])
    ranked = sorted(result.per_user.items(), key=lambda item: (-item[1].jobs, item[0]))
    shown = ranked if users == 0 else ranked[:users]
    rows = [(user, f"{s.jobs:,}", _seconds(s.mean_wait), _seconds(s.max_wait),
             f"{s.mean_bounded_slowdown:.2f}", f"{s.max_bounded_slowdown:.1f}")
            for user, s in shown]
    more = len(ranked) - len(shown)
    tail = f"({more} more users; --users 0 shows all)\n" if more > 0 else ""
    return text + "\n" + columns(USER_COLUMNS, rows) + tail


@click.command("simulate")
@click.argument("trace", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--policy", "policy_name", default=DEFAULT_POLICY, show_default=True,
              type=click.Choice(list(POLICIES)), help="The queue policy to replay through.")
@click.option("--procs", type=int, default=None,
              help="Processors of the machine (default: the trace's MaxProcs header).")
@click.option("--users", type=int, default=10, show_default=True,
              help="Per-user rows to print, users with most jobs first (0: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def simulate_command(trace: Path, policy_name: str, procs: int | None, users: int,
                     as_json: bool) -> None:
    """Replay a workload trace (SWF) through a queue policy.

    TRACE is a Standard Workload Format file (.swf or .swf.gz). Jobs are kept and shaped
    as published simulations do: known, positive processors and times, run times capped at
    the requested time; a job holds its requested processors, the policy plans with its
    requested time. Waits, bounded slowdown (10 s threshold), flow time and utilization
    are printed for the whole trace and per user.
    """
    policy = policy_named(policy_name)
    parsed = read_swf(trace)
    machine = procs or parsed.max_procs
    if machine is None or machine <= 0:
        raise SpecError([("procs", procs, "a positive number of processors; this trace has "
                          "no MaxProcs header, so give --procs N")], "simulation")
    jobs = trace_jobs(parsed, machine)
    started = time.perf_counter()
    result = simulate(jobs, machine, policy)
    elapsed = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({
            "trace": str(trace), "policy": result.policy, "procs": machine,
            "jobs_in_trace": len(parsed.records), "jobs_simulated": len(jobs),
            "summary": dataclasses.asdict(result.summary),
            "per_user": {u: dataclasses.asdict(s) for u, s in sorted(result.per_user.items())},
            "passes": result.passes, "seconds": round(elapsed, 3)}, indent=2))
        return
    click.echo(f"{trace.name}: {len(jobs):,} of {len(parsed.records):,} jobs on {machine} "
               f"processors, {result.passes:,} policy passes in {elapsed:.1f} s\n")
    click.echo(render(result, users), nl=False)
