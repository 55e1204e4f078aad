"""``corral run``: run a script, module or command as a job; stream its ranks' output."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from corral.backends import configured_backend, list_options
from corral.backends.base import Backend, Plan
from corral.config import backend_defaults
from corral.console import LinePrinter, printable, printable_lines
from corral.errors import SpecError
from corral.jobfile import entrypoint_fields, read_job_file
from corral.jobstate import JobState
from corral.spec import LAUNCHERS, JobSpec
from corral.status import JobStatus

if TYPE_CHECKING:
    from corral.queue.submission import Submission


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SpecError([("env", pair, "write each variable as KEY=VALUE")])
        env[key] = value
    return env


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_options(pairs: tuple[str, ...], lists: frozenset[str] = frozenset()) -> dict[str, Any]:
    """``-o partition=gpu -o extra_sbatch=--mail-type=END -o exclusive=true``: a key
    repeated, or one of ``lists`` (the backend's list-valued options), gives a list."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SpecError([("option", pair, "write each backend option as KEY=VALUE")])
        value = _option_value(raw)
        if key in values:
            previous = values[key]
            values[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        elif key in lists:
            values[key] = [value]
        else:
            values[key] = value
    return values


def entry_from_command(command: tuple[str, ...], module: str | None) -> dict[str, Any]:
    """``train.py a b`` -> script; ``-m pkg a`` -> module; anything else -> a command."""
    if module is not None:
        args = list(command)
        return {"module": module, "args": args[1:] if args[:1] == ["--"] else args}
    if not command:
        return {}
    head, rest = command[0], list(command[1:])
    if rest[:1] == ["--"]:  # `corral run train.py -- --lr 0.1`: the separator is ours
        rest = rest[1:]
    if head.endswith(".py"):
        return {"script": head, "args": rest}
    return {"command": [head], "args": rest}


_SPEC_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--backend", default="local", show_default=True, help="Where to run."),
    click.option("-o", "--option", "option_pairs", multiple=True, metavar="KEY=VALUE",
                 help="A backend option, e.g. -o partition=gpu (repeat for lists)."),
    click.option("-f", "--file", "job_file", type=click.Path(dir_okay=False),
                 help="A YAML/TOML job file; flags given here override its fields."),
    click.option("--name", help="Job name (default: the script or command name)."),
    click.option("--nodes", type=int, help="Number of nodes (emulated on the local backend)."),
    click.option("--procs-per-node", type=int, help="Ranks per node."),
    click.option("--launcher", type=click.Choice(LAUNCHERS), help="How ranks are started."),
    click.option("--mpi", type=click.Choice(["openmpi", "mpich"]),
                 help="MPI for --launcher mpirun: Open MPI's mpirun or MPICH's hydra."),
    click.option("--env", "env_pairs", multiple=True, metavar="K=V", help="Set a variable."),
    click.option("--time-limit", help="Wall-clock limit: 90, 90s, 30m, 1h30m, HH:MM:SS."),
    click.option("--max-restarts", type=int, help="torchrun restarts before failing."),
    click.option("--cpus", type=float, help="CPUs per node."),
    click.option("--memory", help="Memory per node, e.g. 8G."),
    click.option("--gpus", type=float, help="GPUs per node (a fraction such as 0.5 shares "
                 "one GPU in the local queue)."),
    click.option("--image", help="Container image (Kubernetes, the cloud services; Slurm "
                 "with a container runtime)."),
    click.option("--queue", help="Queue: the local queue's, a Slurm partition, a Volcano "
                 "queue, a Kueue LocalQueue, an AWS Batch job queue."),
    click.option("--priority", type=int, help="Priority within the queue (-1000 to 1000)."),
    click.option("--workdir", type=click.Path(file_okay=False), help="Working directory."),
    click.option("-m", "--module", help="Run a Python module (like python -m)."),
    click.option("--no-fork", is_flag=True, help="Start every rank with a fresh interpreter."),
    click.option("--dry-run", is_flag=True,
                 help="Print what would start on each node; start nothing."),
]
_QUEUE_OPTIONS: list[Callable[[Any], Any]] = [
    click.option("--after", "after", multiple=True, metavar="[KIND:]ID",
                 help="Start after job ID succeeded (KIND: afterok, afterany, afternotok)."),
    click.option("--retries", type=int, help="Queue the job again this many times if it "
                 "fails."),
    click.option("--preemptible", is_flag=True, help="A more urgent job may stop it "
                 "(SIGUSR1, a grace period, then it is queued again)."),
    click.option("--hold", is_flag=True, help="Queue it held: it starts after `corral "
                 "release`."),
]


F = TypeVar("F", bound=Callable[..., Any])


def _with(options: list[Callable[[F], F]]) -> Callable[[F], F]:
    def apply(fn: F) -> F:
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


@dataclass(frozen=True)
class Prepared:
    spec: JobSpec
    engine: Backend
    plan: Plan
    backend: str


def prepare_job(backend: str, option_pairs: tuple[str, ...], job_file: str | None,
                name: str | None, nodes: int | None, procs_per_node: int | None,
                launcher: str | None, mpi: str | None, env_pairs: tuple[str, ...],
                time_limit: str | None, max_restarts: int | None, cpus: float | None,
                memory: str | None, gpus: float | None, image: str | None,
                queue: str | None, priority: int | None, workdir: str | None,
                module: str | None, no_fork: bool, command: tuple[str, ...],
                **_: Any) -> Prepared:
    """The spec from the flags (over a job file), its backend, and its rendered plan."""
    fields: dict[str, Any] = read_job_file(job_file) if job_file else {}
    if command and command[0] == "--":
        command = command[1:]
    if job_file and module is None and command and command[0].startswith("-"):
        # `-f job.yaml -- --lr 0.1` (click takes the `--`): more args for the file's program
        fields["args"] = [*fields.get("args", []), *command]
        command = ()
    entry = entry_from_command(command, module)
    if entry:
        for key in ("script", "module", "command", "entrypoint"):
            fields.pop(key, None)
        fields.update(entrypoint_fields(entry))
    if "entrypoint" not in fields:
        raise click.UsageError("give a script, -m MODULE, a command, or -f JOB_FILE")
    flags = {
        "name": name, "nodes": nodes, "procs_per_node": procs_per_node, "launcher": launcher,
        "mpi": mpi,
        "time_limit": time_limit, "max_restarts": max_restarts, "workdir": workdir,
        "image": image, "queue": queue, "priority": priority,
    }
    fields.update({k: v for k, v in flags.items() if v is not None})
    if env_pairs:
        fields["env"] = {**fields.get("env", {}), **parse_env(env_pairs)}
    resources = {"cpus": cpus, "memory": memory, "gpus": gpus}
    if any(v is not None for v in resources.values()):
        given = {k: v for k, v in resources.items() if v is not None}
        fields["resources"] = {**fields.get("resources", {}), **given}
    if "name" not in fields:
        fields["name"] = _default_name(fields["entrypoint"])
    if mpi is not None and fields.get("launcher") != "mpirun":
        raise SpecError([("mpi", mpi, "--mpi chooses the MPI of --launcher mpirun; add "
                          "--launcher mpirun, or leave --mpi out")])
    spec = JobSpec(**fields)
    values = {**backend_defaults(backend),
              **parse_options(option_pairs, list_options(backend))}
    if no_fork:
        values["fork"] = False
    engine = configured_backend(backend, values)
    return Prepared(spec, engine, engine.render(spec), backend)


def submission_from(after: tuple[str, ...] = (), array: str | None = None,
                    retries: int | None = None, preemptible: bool = False,
                    hold: bool = False, **_: Any) -> Submission:
    from corral.queue.submission import Submission, parse_after, parse_array

    return Submission(after=parse_after(after),
                      array=parse_array(array) if array is not None else None,
                      retries=retries or 0, preemptible=preemptible, hold=hold)


def _queue_only(prepared: Prepared, submission: Submission) -> None:
    from corral.queue.submission import Submission

    if prepared.backend != "local" and submission != Submission():
        raise SpecError([("after/array/retries/preemptible/hold", prepared.backend,
                          "options of the local queue; on a cluster use its own (Slurm: "
                          "-o extra_sbatch=--dependency=afterok:ID)")])


@click.command("run", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@_with(_SPEC_OPTIONS)
@_with(_QUEUE_OPTIONS)
@click.option("--detach", is_flag=True, help="Submit, print the job id, return at once.")
@click.option("--plain", is_flag=True,
              help="Plain lines, no live panel (the default when not on a terminal).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run_command(dry_run: bool, detach: bool, plain: bool, **given: Any) -> int:
    """Run SCRIPT_OR_CMD [-- ARGS...] as a job.

    \b
      corral run train.py -- --lr 0.1
      corral run --nodes 2 --procs-per-node 2 --launcher torchrun train.py
      corral run -m mypkg.train -- --epochs 3
      corral run --nodes 2 hostname
    """
    prepared = prepare_job(**given)
    submission = submission_from(**given)
    _queue_only(prepared, submission)
    spec, engine, plan = prepared.spec, prepared.engine, prepared.plan
    if dry_run:
        click.echo(plan.dry_run_text(), nl=False)
        return 0
    if detach:
        click.echo(_submit(prepared, submission)[0])
        return 0
    click.echo(f"corral: job {plan.job_id} on {prepared.backend}: {spec.nodes} node(s) x "
               f"{spec.procs_per_node} rank(s)", err=True)
    extra = {"submission": submission} if prepared.backend == "local" else {}
    received: list[int] = []
    view = None if plain or not sys.stdout.isatty() else _live_view(plan.job_id, engine, spec)
    with _signals_as_interrupt(received), view or nullcontext():
        try:
            status = engine.run(spec, sink=view or LinePrinter(spec.procs_per_node),
                                plan=plan, waiting=None if view else _show_waiting, **extra)
        except KeyboardInterrupt:
            status = engine.describe(plan.job_id)
            received.append(signal.SIGINT)
    text = printable_lines(status.summary())
    if sys.stderr.isatty():
        text = click.style(text, fg="green" if status.state is JobState.SUCCEEDED else "red")
    click.echo(text, err=True)
    if received:  # the job was cancelled because we were asked to stop
        return 128 + received[0]
    code: int = status.returncode
    return code


def _live_view(job_id: str, engine: Any, spec: JobSpec) -> Any:
    from corral.live import LiveView

    return LiveView(job_id, engine, spec.procs_per_node)


def _submit(prepared: Prepared, submission: Submission) -> list[str]:
    from corral.backends.local.client import LocalBackend

    if isinstance(prepared.engine, LocalBackend):
        return prepared.engine.submit_queued(prepared.spec, prepared.plan, submission)
    return [prepared.engine.submit(prepared.spec, prepared.plan).job_id]


@click.command("submit", context_settings={"ignore_unknown_options": True,
                                           "allow_interspersed_args": False})
@_with(_SPEC_OPTIONS)
@_with(_QUEUE_OPTIONS)
@click.option("--array", metavar="SPEC",
              help="A job array: 0-99, 1,3,5 or 0-20:5, with %N to run at most N at once; "
                   "each task sees CORRAL_ARRAY_TASK_ID.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def submit_command(dry_run: bool, **given: Any) -> int:
    """Queue SCRIPT_OR_CMD [-- ARGS...]; print its job id (one per array task) at once.

    \b
      corral submit --gpus 1 train.py -- --lr 0.1
      corral submit --array 0-99%8 sweep.py
      corral submit --after train-2611-ab12cd eval.py
    """
    prepared = prepare_job(**given)
    submission = submission_from(**given)
    _queue_only(prepared, submission)
    if dry_run:
        click.echo(prepared.plan.dry_run_text(), nl=False)
        return 0
    for job_id in _submit(prepared, submission):
        click.echo(job_id)
    return 0


def _show_waiting(status: JobStatus) -> None:
    why = f": {printable(status.reason)}" if status.reason else ""
    click.echo(f"corral: job {status.job_id} {status.state.value}{why}", err=True)


@contextmanager
def _signals_as_interrupt(received: list[int]) -> Iterator[None]:
    """SIGTERM and SIGHUP to a foreground run act like Ctrl-C: the job is cancelled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        received.append(signum)
        os.kill(os.getpid(), signal.SIGINT)  # whoever handles Ctrl-C now handles this

    saved = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _default_name(entrypoint: dict[str, Any] | Any) -> str:
    if isinstance(entrypoint, dict):
        value = entrypoint.get("path") or entrypoint.get("module") or (
            entrypoint.get("argv") or ["job"])[0]
        return os.path.splitext(os.path.basename(str(value)))[0] or "job"
    return "job"
