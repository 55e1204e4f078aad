"""The local backend: real processes on this machine, one process group per emulated node.

Rendering and starting need the job spec (pydantic), the launchers and the supervisor;
watching needs only the store and a process check. Those are imported where they are used,
so that ``corral ps`` with local jobs running starts as fast as without.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corral.backends.base import Backend, Capabilities, JobRef, LineSink, Plan
from corral.backends.local.agents import stop_agents
from corral.backends.local.options import LocalOptions
from corral.errors import MissingDependency, SubmitError
from corral.jobstate import JobState
from corral.logs import LogFollower, LogSource
from corral.rundir import runs_root
from corral.states import Source
from corral.status import JobStatus, RankStatus
from corral.store import JobRecord, Observation, Store

if TYPE_CHECKING:
    from corral.backends.local.render import LocalPlan
    from corral.queue.submission import Submission
    from corral.spec import JobSpec


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
    from corral.spec import Command, Module, Script

    entry = spec.entrypoint
    if isinstance(entry, Script):
        return entry.path
    if isinstance(entry, Module):
        return f"-m {entry.module}"
    if isinstance(entry, Command):
        return " ".join(entry.argv)
    return f"function {entry.label}"


def _check_mpi4py_matches(spec: JobSpec, workdir: str) -> None:
    """Refuse an MPI launcher that the program's mpi4py would not talk to.

    mpi4py loads whichever MPI library it finds (or ``MPI4PY_MPIABI`` names); started by
    the other MPI's launcher, every rank runs alone as a singleton of size 1 and the job
    "succeeds". Asked without initializing MPI, in the job's environment, before anything
    starts.
    """
    from corral.backends.local.preload import imported_roots, program_source

    source = program_source(spec, workdir)
    if source is None or "mpi4py" not in imported_roots(source):
        return
    probe = ("from mpi4py import rc; rc.initialize = rc.finalize = False; "
             "from mpi4py import MPI; print(MPI.Get_library_version())")
    try:
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=30, env={**os.environ, **spec.env}, cwd=workdir)
    except (OSError, subprocess.SubprocessError):
        return  # cannot tell: let the launcher try
    loaded = "mpich" if "MPICH" in done.stdout else "openmpi" if "Open MPI" in done.stdout else None
    if loaded is not None and loaded != spec.mpi:
        names = {"mpich": "MPICH", "openmpi": "Open MPI"}
        raise SubmitError(
            f"mpi: the program's mpi4py loads {names[loaded]}, but --mpi {spec.mpi} starts "
            f"the ranks with {names[spec.mpi]}'s launcher: each rank would run alone (size 1). "
            f"Use --mpi {loaded}, or point mpi4py at {names[spec.mpi]} (--env "
            f"MPI4PY_MPIABI={spec.mpi}, and LD_LIBRARY_PATH to its libmpi)")


class LocalBackend(Backend):
    name = "local"
    options_type = LocalOptions
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=True, arrays=True
    )
    # Describing a local job asks no engine (its supervisor writes the store); the watcher
    # only checks that the supervisor lives, at most this often.
    poll_interval = 0.2
    clears_owner_after_submit = False  # the supervisor owns the job while it runs

    def __init__(self, options: LocalOptions | None = None, root: Path | None = None,
                 store: Store | None = None, for_user: int | None = None) -> None:
        super().__init__(store)
        self.options = options or LocalOptions()
        self._root = root
        # A shared queue's agent (root) rendering another user's job: nothing of the job
        # is run or imported to check it (no mpi4py probe).
        self.for_user = for_user

    @property
    def root(self) -> Path:
        return self._root or runs_root()

    @property
    def cancel_grace(self) -> float:  # type: ignore[override]
        return self.options.grace_seconds + 5.0

    def options_data(self) -> dict[str, Any]:
        """Recorded with each job: the queue starts it later with the same options."""
        from dataclasses import asdict

        return asdict(self.options)

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        return {"entrypoint": _describe_entry(spec), "args": list(spec.args),
                "workdir": getattr(plan, "workdir", None), "grace": self.options.grace_seconds}

    # -- render ---------------------------------------------------------------------------

    def _check_runnable(self, spec: JobSpec, workdir: str) -> None:
        from corral.spec import Command, Script

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
        needs = {"torchrun": ("torch", None), "deepspeed": ("deepspeed", None),
                 "tensorflow": ("tensorflow", "tensorflow"), "jax": ("jax", "jax")}
        if spec.launcher in needs and importlib.util.find_spec(needs[spec.launcher][0]) is None:
            module, extra = needs[spec.launcher]
            raise MissingDependency(module, extra, purpose=f"by launcher {spec.launcher}")
        if spec.launcher == "mpirun":
            tool = "mpiexec.hydra" if spec.mpi == "mpich" else "mpirun"
            if shutil.which(tool) is None:
                package = "mpich" if spec.mpi == "mpich" else "openmpi-bin"
                raise SubmitError(
                    f"launcher: {tool!r} is not installed; install it (apt-get install {package})"
                )
            if self.for_user is None:
                _check_mpi4py_matches(spec, workdir)

    def render(self, spec: JobSpec, job_id: str | None = None) -> LocalPlan:
        """The plan as it would start now, on the GPUs this process sees (``--dry-run``;
        the queue renders again at dispatch with the GPUs it hands the job)."""
        return self.render_placed(spec, job_id, visible_gpus() if spec.resources.gpus else ())

    def render_placed(self, spec: JobSpec, job_id: str | None,
                      gpus: tuple[str, ...]) -> LocalPlan:
        """The plan on these GPUs (the queue's placement: each node's in turn)."""
        from corral.backends.local.preload import guess_preload
        from corral.backends.local.render import Machine, render
        from corral.ports import PORT_BLOCK, pick_port
        from corral.rundir import new_job_id

        workdir = os.path.abspath(spec.workdir or os.getcwd())
        self._check_runnable(spec, workdir)
        job_id = job_id or new_job_id(spec.name)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1
        )
        machine = Machine(cpu_count=cpus, gpus=gpus, python=sys.executable)
        if spec.launcher == "mpirun" and spec.mpi == "openmpi":
            extra = ["--oversubscribe"] if spec.world_size > cpus else []
            if os.geteuid() == 0:
                extra.append("--allow-run-as-root")
            spec = spec.replace(launcher_args=(*extra, *spec.launcher_args))
        # the job owns the PORT_BLOCK ports from MASTER_PORT (TensorFlow's workers use them)
        return render(
            spec, job_id=job_id, run_dir=str(self.root / job_id),
            master_port=pick_port(span=PORT_BLOCK), machine=machine, workdir=workdir,
            preload=guess_preload(spec, workdir), options=self.options,
        )

    # -- submit / run ---------------------------------------------------------------------
    # Every local job goes through the embedded queue (corral.queue): it never takes CPUs
    # or GPUs that another queued or running job holds.

    def _plan(self, spec: JobSpec, plan: Plan | None) -> LocalPlan:
        from corral.backends.local.render import LocalPlan

        if plan is None:
            return self.render(spec)
        if not isinstance(plan, LocalPlan):
            raise SubmitError(f"the local backend cannot submit a {type(plan).__name__}")
        return plan

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        raise SubmitError("the local backend starts jobs through its queue (submit_queued)")

    def submit_queued(self, spec: JobSpec, plan: Plan | None = None,
                      submission: Submission | None = None) -> list[str]:
        """Queue the job (each task of an array); the agent starts it when it fits."""
        if self.store.shared:
            from corral.queue.client import submit_shared

            return submit_shared(self, spec, self._plan(spec, plan), submission)
        from corral.queue.client import enqueue

        return enqueue(self, spec, self._plan(spec, plan), submission)

    def submit(self, spec: JobSpec, plan: Plan | None = None,
               submission: Submission | None = None) -> JobRef:
        return JobRef(self.name, self.submit_queued(spec, plan, submission)[0])

    def run(
        self, spec: JobSpec, sink: LineSink | None = None, plan: Plan | None = None,
        waiting: Callable[[JobStatus], None] | None = None,
        submission: Submission | None = None,
    ) -> JobStatus:
        """Queue the job, wait for its turn (at once on a free machine), then run it in
        this process until it ends. Ctrl-C cancels it (waiting or running) and then raises
        KeyboardInterrupt, so that a sweep loop stops too."""
        from corral.queue.agent import wake
        from corral.queue.client import enqueue, wait_for_turn
        from corral.queue.start import prepare

        if self.store.shared:  # root's agent starts it; this process follows it
            job_id = self.submit(spec, plan, submission).job_id
            return self.follow_run(job_id, sink, waiting)
        local_plan = self._plan(spec, plan)
        job_id = enqueue(self, spec, local_plan, submission, foreground=True)[0]
        spec = spec.replace(workdir=local_plan.workdir)
        while True:  # again after a retry or a preemption put it back in line
            try:
                token = wait_for_turn(self.store, job_id, waiting)
            except KeyboardInterrupt:
                self.cancel(job_id)
                raise
            supervisor = prepare(self.store, job_id, token, sink, environ=False, spec=spec,
                                 plan=local_plan) if token else None
            if supervisor is None:
                return self.store.status(job_id)
            previous: Any = None
            in_main = threading.current_thread() is threading.main_thread()
            if in_main:
                previous = signal.signal(signal.SIGINT,
                                         lambda *_, s=supervisor: s.request_cancel())
            try:
                status = supervisor.run_to_end()
            finally:
                if in_main:
                    signal.signal(signal.SIGINT, previous)
                wake(self.store)
            if supervisor.interrupted:
                raise KeyboardInterrupt
            if status.state is not JobState.PENDING:
                return status

    # -- observe --------------------------------------------------------------------------

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        """Only a job whose owner (supervisor, or a foreground `corral run`) died changes
        here; a live owner writes its job's state itself."""
        found: dict[str, Observation] = {}
        queued = False
        for record in records:
            if record.state is JobState.PENDING:
                queued = True  # in the queue: its agent starts it, or ends it if its
                continue  # foreground `corral run` is gone
            if record.owner is not None and record.owner.alive():
                continue
            fresh = self.store.get(record.id)  # it may have finished just now
            if fresh.state.is_terminal() or (fresh.owner and fresh.owner.alive()):
                continue
            stopped = stop_agents(fresh.details.get("agents", []), self.options.grace_seconds)
            who = f"pid {fresh.owner.pid}" if fresh.owner else "unknown pid"
            ranks = tuple(
                RankStatus(rank=r.rank, node=r.node, pid=r.pid, returncode=r.returncode,
                           host=r.host,
                           state=JobState.CANCELLED if not r.state.is_terminal() else r.state)
                for r in self.store.ranks(record.id)
            )
            found[record.id] = Observation(
                JobState.FAILED, f"supervisor died ({who}) before the job ended; "
                f"{stopped} leftover node process group(s) stopped",
                finished=time.time(), ranks=ranks)
        if queued:  # an agent killed meanwhile is started again by whoever looks
            from corral.queue.agent import ensure_agent

            ensure_agent(self.store)
        return found

    def logs(
        self, job_id: str, rank: int | None = None, follow: bool = False
    ) -> Iterator[tuple[LogSource, str]]:
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        logs = Path(record.run_dir or self.root / job_id) / "logs"
        if logs.parent.exists() and not os.access(logs.parent, os.R_OK | os.X_OK):
            from corral.errors import PermissionDenied

            raise PermissionDenied(f"the logs of job {job_id} are not readable for you: it "
                                   f"belongs to user {record.user}")
        return self.follow(job_id, LogFollower(logs, rank), follow)

    def _stop(self, record: JobRecord) -> None:
        """Ask the supervisor to stop: it polls for this file, stops every rank (SIGTERM,
        then SIGKILL after the grace period) and records CANCELLED."""
        if record.run_dir and os.path.isdir(record.run_dir):
            (Path(record.run_dir) / "cancel").touch()

    def cancel(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Stop every rank; return once the supervisor has recorded it and exited. A job
        still waiting in the queue is taken out of it (only its owner or root may)."""
        from corral.queue.agent import wake
        from corral.queue.ledger import Ledger

        if self.store.shared:
            from corral.queue.shared import Request, request

            request(self.store.path.parent, Request("cancel", job_ids=[job_id]))
            return self.wait(job_id, timeout=self.cancel_grace if timeout is None else timeout)
        ledger = Ledger(self.store)
        if ledger.row(job_id) is not None:
            ledger.check_owner(job_id, os.getuid())
            if ledger.cancel_waiting(job_id, "cancelled while queued", Source.USER):
                wake(self.store)
                return self.store.status(job_id)
        status = super().cancel(job_id, timeout)
        wake(self.store)
        owner = self.store.get(job_id).owner
        if owner is not None and owner.pid != os.getpid():
            deadline = time.monotonic() + self.cancel_grace
            while owner.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
        return status

    def _cancel_unconfirmed(self, record: JobRecord, waited: float) -> JobStatus:
        """The supervisor did not stop the job in time: stop its nodes ourselves."""
        fresh = self.store.get(record.id)
        stop_agents(fresh.details.get("agents", []), self.options.grace_seconds)
        self.store.apply(record.id, Observation(
            JobState.CANCELLED, "cancelled (the supervisor did not respond; its node "
            "processes were stopped)", finished=time.time()), Source.USER)
        return self.store.status(record.id)
