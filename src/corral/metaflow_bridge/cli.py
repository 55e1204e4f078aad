"""``flow.py corral step STEP ...``: what the Metaflow runtime starts for a ``@corral`` task.

It runs one corral job (``num_parallel`` nodes for a gang step) whose nodes run Metaflow's own
``step`` command, streams every node's output with its node's label (the Metaflow runtime keeps
it as the control task's log), saves each worker node's output as that worker task's log, and
exits with the job's exit code after printing corral's failure summary.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from metaflow._vendor import click

from corral.metaflow_bridge.node import option, worker_task_id


@click.group()
def cli() -> None:
    pass


@cli.group(help="corral's bridge (started by the Metaflow runtime for @corral steps).")
def corral() -> None:
    pass


@corral.command(
    help="Run one task of a @corral step as a corral job (used by Metaflow itself).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("step_name")
@click.argument("step_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def step(ctx: click.Context, step_name: str, step_args: tuple[str, ...]) -> None:
    from corral.api import run
    from corral.backends import configured_backend
    from corral.config import backend_defaults
    from corral.errors import CorralError
    from corral.metaflow_bridge.settings import gang_spec, step_settings

    flow = ctx.obj.flow
    decorators = getattr(flow, step_name).decorators
    corral_decorator = next(d for d in decorators if d.name == "corral")
    step_argv = node_step_argv(sys.argv, step_name, step_args)
    nodes = int(option(step_argv, "--num-parallel") or 1)
    try:
        settings = step_settings(corral_decorator.attributes, decorators)
        spec = gang_spec(settings, flow=flow.name, step=step_name, step_argv=step_argv,
                         nodes=nodes, workdir=os.getcwd())
        backend = configured_backend(
            settings.backend, {**backend_defaults(settings.backend), **settings.options})
        status = run(spec, backend)
    except CorralError as exc:
        click.echo(f"corral: step {step_name} could not run: {exc}", err=True)
        sys.exit(1)
    run_id, task_id = option(step_argv, "--run-id"), option(step_argv, "--task-id")
    if nodes > 1 and run_id and task_id:
        save_worker_logs(ctx.obj.flow_datastore, backend, status.job_id, run_id, step_name,
                         task_id, nodes, int(option(step_argv, "--retry-count") or 0))
    if status.returncode:
        click.echo(status.summary(), err=True)
    else:
        click.echo(f"corral: step {step_name} ran as job {status.job_id} ({nodes} node"
                   f"{'s' if nodes > 1 else ''}; corral logs {status.job_id} --rank N)")
    sys.exit(status.returncode)


def node_step_argv(argv: Sequence[str], step_name: str, step_args: Sequence[str]) -> list[str]:
    """Metaflow's plain ``step`` command for the control task, from this process's own one.

    The runtime started ``flow.py <top options> corral step STEP <step options>``; the nodes
    run ``python -u flow.py <top options> step STEP <step options>``.
    """
    cut = len(argv) - len(step_args) - 3
    if cut < 1 or list(argv[cut:cut + 3]) != ["corral", "step", step_name]:
        raise click.UsageError("expected '<flow.py> [options] corral step STEP [step options]'")
    script = os.path.abspath(argv[0])
    return [sys.executable, "-u", script, *argv[1:cut], "step", step_name, *step_args]


def save_worker_logs(flow_datastore: Any, backend: Any, job_id: str, run_id: str, step: str,
                     control_task_id: str, nodes: int, attempt: int) -> None:
    """Keep each worker node's output as its Metaflow task's log (``Task(...).stdout``)."""
    from metaflow.mflog import RUNTIME_LOG_SOURCE, mflog

    for node in range(1, nodes):
        lines = [line for _, line in backend.logs(job_id, rank=node)]
        if not lines:
            continue
        data = b"".join(mflog.decorate(RUNTIME_LOG_SOURCE, line.encode()) + b"\n"
                        for line in lines)
        task = flow_datastore.get_task_datastore(
            run_id, step, worker_task_id(control_task_id, node), attempt=attempt,
            mode="w", allow_not_done=True)
        task.save_logs(RUNTIME_LOG_SOURCE, {"stdout": data})
