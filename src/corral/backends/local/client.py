"""The local backend: real processes on this machine, one process group per emulated node."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.backends.base import Backend, Capabilities, JobRef, LineSink, Plan
from corral.backends.local.preload import guess_preload
from corral.backends.local.render import LocalOptions, LocalPlan, Machine, render
from corral.backends.local.supervisor import Supervisor
from corral.errors import MissingDependency, SubmitError
from corral.logs import LogFollower, LogSource
from corral.rundir import RunDir, iter_run_dirs, new_job_id, runs_root
from corral.runtime import procs
from corral.spec import Command, Function, JobSpec, JobState, Module, Script
from corral.status import JobStatus


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def visible_gpus() -> tuple[str, ...]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else what nvidia-smi lists."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(g for g in listed.split(",") if g.strip() and g.strip() != "-1")
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return tuple(line.strip() for line in out.splitlines() if line.strip())


def _describe_entry(spec: JobSpec) -> str:
    entry = spec.entrypoint
    if isinstance(entry, Script):
        return entry.path
    if isinstance(entry, Module):
        return f"-m {entry.module}"
    if isinstance(entry, Command):
        return " ".join(entry.argv)
    return f"function {entry.label}"


class LocalBackend(Backend):
    name = "local"
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=False, arrays=False
    )

    def __init__(self, options: LocalOptions | None = None, root: Path | None = None) -> None:
        self.options = options or LocalOptions()
        self._root = root

    @property
    def root(self) -> Path:
        return self._root or runs_root()

    # -- render ---------------------------------------------------------------------------

    def _check_runnable(self, spec: JobSpec, workdir: str) -> None:
        entry = spec.entrypoint
        if not os.path.isdir(workdir):
            raise SubmitError(f"workdir: {workdir!r} is not a directory")
        if isinstance(entry, Script) and not os.path.isfile(os.path.join(workdir, entry.path)):
            raise SubmitError(
                f"entrypoint: script {entry.path!r} not found in {workdir}; give a path "
                "relative to the working directory or an absolute one"
            )
        if isinstance(entry, Command) and shutil.which(entry.argv[0], path=None) is None and (
            not os.path.isfile(os.path.join(workdir, entry.argv[0]))
        ):
            raise SubmitError(f"entrypoint: command {entry.argv[0]!r} not found on PATH")
        needs = {"torchrun": ("torch", "torch"), "deepspeed": ("deepspeed", "deepspeed")}
        if spec.launcher in needs and importlib.util.find_spec(needs[spec.launcher][0]) is None:
            raise MissingDependency(needs[spec.launcher][1], purpose=f"by launcher {spec.launcher}")
        if spec.launcher == "mpirun":
            tool = "mpiexec.hydra" if spec.mpi == "mpich" else "mpirun"
            if shutil.which(tool) is None:
                package = "mpich" if spec.mpi == "mpich" else "openmpi-bin"
                raise SubmitError(
                    f"launcher: {tool!r} is not installed; install it (apt-get install {package})"
                )

    def render(self, spec: JobSpec, job_id: str | None = None) -> LocalPlan:
        workdir = os.path.abspath(spec.workdir or os.getcwd())
        self._check_runnable(spec, workdir)
        job_id = job_id or new_job_id(spec.name)
        gpus = visible_gpus() if spec.resources.gpus else ()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
        machine = Machine(cpu_count=cpus, gpus=gpus, python=sys.executable)
        if spec.launcher == "mpirun" and spec.mpi == "openmpi":
            extra = ["--oversubscribe"] if spec.world_size > cpus else []
            if os.geteuid() == 0:
                extra.append("--allow-run-as-root")
            spec = spec.replace(launcher_args=(*extra, *spec.launcher_args))
        return render(
            spec, job_id=job_id, run_dir=str(self.root / job_id), master_port=free_port(),
            machine=machine, workdir=workdir, preload=guess_preload(spec, workdir),
            options=self.options,
        )

    # -- submit / run ---------------------------------------------------------------------

    def _prepare(self, spec: JobSpec, plan: LocalPlan) -> tuple[RunDir, JobStatus]:
        run = RunDir.create(plan.job_id, self.root)
        if isinstance(spec.entrypoint, Function):
            from corral.runtime.call import dump_payload

            entry = spec.entrypoint
            try:
                data = dump_payload(entry.fn, entry.call_args, dict(entry.call_kwargs))
            except Exception as exc:
                shutil.rmtree(run.path, ignore_errors=True)
                raise SubmitError(
                    f"entrypoint: the function {entry.label} or its arguments cannot be "
                    f"pickled ({exc}); move unpicklable objects (locks, open files, "
                    "sockets) inside the function"
                ) from exc
            run.function_payload.write_bytes(data)
        run.write_json("plan.json", plan.to_json())
        status = run.record_submission(
            spec, self.name, str(run.path), entrypoint=_describe_entry(spec),
            args=list(spec.args), workdir=plan.workdir, grace=self.options.grace_seconds,
        )
        return run, status

    def _plan(self, spec: JobSpec, plan: Plan | None) -> LocalPlan:
        if plan is None:
            return self.render(spec)
        if not isinstance(plan, LocalPlan):
            raise SubmitError(f"the local backend cannot submit a {type(plan).__name__}")
        return plan

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        """Start the job under a detached supervisor process and return at once."""
        local_plan = self._plan(spec, plan)
        run, _ = self._prepare(spec, local_plan)
        with open(run.path / "supervisor.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, "-m", "corral.backends.local.supervisor", str(run.path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                cwd=local_plan.workdir,
            )
        return JobRef(self.name, run.job_id)

    def run(
        self, spec: JobSpec, sink: LineSink | None = None, plan: Plan | None = None
    ) -> JobStatus:
        """Run in this process until the job ends; Ctrl-C cancels every rank."""
        local_plan = self._plan(spec, plan)
        run, status = self._prepare(spec, local_plan)
        supervisor = Supervisor(
            run=run, status=status, plan=local_plan.to_json(), launcher=spec.launcher,
            grace=self.options.grace_seconds, sink=sink,
        )
        previous: Any = None
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            previous = signal.signal(signal.SIGINT, lambda *_: supervisor.request_cancel())
        try:
            return supervisor.run_to_end()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, previous)

    # -- observe --------------------------------------------------------------------------

    def describe(self, job_id: str) -> JobStatus:
        run = RunDir.find(job_id, self.root)
        status = run.read_status()
        if status.state.is_terminal():
            return status
        starting = not (run.path / "pids.json").exists()
        if starting and time.time() - (status.created or 0) < 30:
            return status  # the supervisor has not started the nodes yet
        if not self._supervisor_alive(run):
            status = run.read_status()  # it may have finished just now
            if not status.state.is_terminal():
                status.state = JobState.FAILED
                status.reason = "the supervisor process exited without a final status"
        return status

    def _supervisor_alive(self, run: RunDir) -> bool:
        import psutil

        try:
            pid = int(run.read_json("pids.json")["supervisor"])
        except (OSError, KeyError, ValueError):
            return False
        try:
            process = psutil.Process(pid)
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def logs(
        self, job_id: str, rank: int | None = None, follow: bool = False
    ) -> Iterator[tuple[LogSource, str]]:
        run = RunDir.find(job_id, self.root)
        return self.follow(job_id, LogFollower(run.logs, rank), follow)

    def cancel(self, job_id: str, timeout: float = 10.0) -> JobStatus:
        run = RunDir.find(job_id, self.root)
        status = self.describe(job_id)
        if status.state.is_terminal():
            return status
        (run.path / "cancel").touch()
        if procs.wait_until(lambda: self.describe(job_id).state.is_terminal(), timeout):
            procs.wait_until(lambda: not self._supervisor_alive(run), timeout)
            return self.describe(job_id)
        # The supervisor is gone or stuck: stop the node sessions ourselves.
        try:
            agents = run.read_json("pids.json").get("agents", [])
        except OSError:
            agents = []
        for pid in agents:
            procs.killpg_quietly(int(pid), signal.SIGKILL)
        status = run.read_status()
        if not status.state.is_terminal():
            status.state, status.reason, status.finished = (
                JobState.CANCELLED, "cancelled (supervisor unresponsive)", time.time()
            )
            run.write_status(status)
        return status

    def list(self) -> list[JobStatus]:
        return [self.describe(run.job_id) for run in iter_run_dirs(self.root, self.name)]
