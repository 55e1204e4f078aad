"""The contract every backend keeps, and the job flow composed on top of it.

A backend supplies small hooks; this base class composes them into the public methods,
so that every backend records, submits, watches and cancels jobs the same way::

    render(spec) -> Plan               pure: what would be sent, exactly
    _launch(spec, plan, record)        side effects: hand the plan to the engine,
                                       return the engine's own job id
    describe_many(records)             read: one batched look at many jobs
    find_submitted(records)            read: which of these corral ids the engine has
    discard_lost(record)               side effects: what a half-done submission left
    _stop(record)                      side effects: ask the engine to stop a job
    logs(job_id, rank, follow)         read: per-rank lines

The flow of a job is one way: spec -> render -> store (SUBMITTING) -> engine ->
store (PENDING) -> watcher -> store -> readers (``ps``, ``wait``, handles). Readers never ask
the engine themselves; they ask the shared watcher (:mod:`corral.watcher`), which asks
each engine at most once per ``poll_interval`` across every corral process.
"""

from __future__ import annotations

import abc
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from corral.errors import CorralError, SubmitError
from corral.jobstate import JobState
from corral.logs import LogFollower, LogSource
from corral.states import Source
from corral.status import JobStatus
from corral.store import DuplicateJob, JobRecord, Observation, Owner, Store, open_store

if TYPE_CHECKING:  # the spec (pydantic) is imported by whoever builds one
    from corral.metrics import Point
    from corral.spec import JobSpec

LineSink = Callable[[LogSource, str], None]
# How often a waiter reads the store. Cheap: the engine itself is asked at most once per
# poll_interval, by whichever process's turn it is (corral.watcher).
READ_STEP = 0.05


@dataclass(frozen=True)
class Capabilities:
    gang: bool  # all ranks start together or not at all
    logs: bool  # per-rank logs can be read
    follow: bool  # logs can be followed while the job runs
    elastic: bool  # ranks can restart (torchrun --max-restarts)
    queues: bool  # jobs wait in a queue with priorities
    arrays: bool  # job arrays


class Plan(Protocol):
    @property
    def job_id(self) -> str: ...

    @property
    def run_dir(self) -> str: ...

    def dry_run_text(self) -> str: ...


@dataclass(frozen=True)
class JobRef:
    backend: str
    job_id: str


def spec_summary(spec: JobSpec) -> dict[str, Any]:
    """The spec as plain data for the record (a function is named, not pickled)."""
    from corral.spec import Function

    data = spec.model_dump(mode="json", exclude={"entrypoint"})
    entry = spec.entrypoint
    data["entrypoint"] = ({"kind": "function", "label": entry.label}
                          if isinstance(entry, Function) else entry.model_dump(mode="json"))
    return data


def check_workdir(spec: JobSpec, workdir: str) -> None:
    """Before a working directory is shipped with a job (a snapshot, a code package): it
    exists, and a script given by a relative path is in it; else nothing is submitted."""
    from corral.spec import Script

    if not os.path.isdir(workdir):
        raise SubmitError(f"workdir: {workdir!r} is not a directory")
    entry = spec.entrypoint
    if isinstance(entry, Script) and not entry.path.startswith("/") and not os.path.isfile(
            os.path.join(workdir, entry.path)):
        raise SubmitError(f"entrypoint: script {entry.path!r} not found in {workdir}; "
                          "nothing was submitted")


class Backend(abc.ABC):
    name: str
    capabilities: Capabilities
    poll_interval: float = 0.0  # the least time between two questions to the engine
    cancel_grace: float = 10.0  # how long a cancel waits for the engine to confirm

    def __init__(self, store: Store | None = None) -> None:
        self._store = store

    @property
    def store(self) -> Store:
        return self._store or open_store()

    # -- hooks -------------------------------------------------------------------------------

    @abc.abstractmethod
    def render(self, spec: JobSpec, job_id: str | None = None) -> Plan:
        """What would be sent, exactly; no side effects."""

    @abc.abstractmethod
    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        """Hand the plan to the engine; return the engine's job id. Raise SubmitError."""

    @abc.abstractmethod
    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        """What the engine says now about these (unfinished, submitted) jobs, by corral id.

        Jobs it has nothing new about may be left out. Raise a CorralError when the engine
        cannot be reached: the watcher then marks these jobs UNKNOWN with that reason.
        """

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        """Engine ids of jobs that carry these corral ids (for a crashed submission)."""
        return {}

    def discard_lost(self, record: JobRecord) -> None:
        """Remove what a submission that died half-way left on the engine (the workload
        itself never got there: it would have been adopted). Most engines leave nothing."""
        return None

    @abc.abstractmethod
    def _stop(self, record: JobRecord) -> None:
        """Ask the engine to stop every rank of the job."""

    @abc.abstractmethod
    def logs(
        self, job_id: str, rank: int | None = None, follow: bool = False
    ) -> Iterator[tuple[LogSource, str]]:
        """Lines of every rank (or one), labelled; until the job ends with ``follow``.
        A backend with job arrays also takes ``task=N``."""

    @staticmethod
    def check_rank(record: JobRecord, rank: int | None) -> None:
        """A rank that the job does not have is an error, not an empty log."""
        world = record.nodes * record.procs_per_node
        if rank is not None and not 0 <= rank < world:
            from corral.errors import SpecError

            raise SpecError([("rank", rank, f"job {record.id} has ranks 0 to {world - 1}")])

    def _read_run_file(self, record: JobRecord, relative: str) -> bytes | None:
        """A file of the job's run directory (None if it is not there)."""
        if not record.run_dir:
            return None
        try:
            with open(f"{record.run_dir}/{relative}", "rb") as handle:
                return handle.read()
        except FileNotFoundError:
            return None

    def read_result(self, job_id: str, rank: int) -> bytes | None:
        """What a distributed function's rank returned or raised (a result envelope)."""
        return self._read_run_file(self.store.get(job_id), f"results/rank-{rank}.pkl")

    def read_metrics(self, job_id: str, rank: int | None = None) -> list[Point]:
        """What ``corral.log`` recorded on every rank of the job (or one), in rank order."""
        from corral.metrics import parse_points

        record = self.store.get(job_id)
        self.check_rank(record, rank)
        ranks = range(record.nodes * record.procs_per_node) if rank is None else [rank]
        points: list[Point] = []
        for number in ranks:
            data = self._read_run_file(record, f"metrics/rank-{number}.jsonl")
            if data:
                points.extend(parse_points(number, data.decode("utf-8", "replace")))
        return points

    def read_profile(self, job_id: str) -> tuple[list[dict[str, Any]], list[str]]:
        """The node agents' samples of every rank's CPU, memory and GPU use, and what each
        node said about its GPUs (see :mod:`corral.runtime.sampler`)."""
        from corral.runtime.sampler import parse_profile

        record = self.store.get(job_id)
        samples: list[dict[str, Any]] = []
        notes: list[str] = []
        for node in range(record.nodes):
            data = self._read_run_file(record, f"profile/node-{node}.jsonl")
            if data:
                found, said = parse_profile(data.decode("utf-8", "replace"))
                samples.extend(found)
                notes.extend(said)
        return samples, notes

    def options_data(self) -> dict[str, Any] | None:
        """The backend's options as plain data, recorded with each job it submits."""
        return None

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        """Backend-specific facts to keep with the job record."""
        return {}

    def engine_address(self) -> dict[str, Any] | None:
        """The options that say which engine answers (a login host, an API server...)."""
        return None

    @property
    def poll_key(self) -> str:
        """Jobs with the same key are answered by the same engine (one poll for all)."""
        data = json.dumps(self.engine_address(), sort_keys=True, default=str)
        return f"{self.name}:{hashlib.sha1(data.encode()).hexdigest()[:12]}"

    # -- composed ----------------------------------------------------------------------------

    def record(self, spec: JobSpec, plan: Plan, owner: Owner | None = None) -> JobRecord:
        """The SUBMITTING record, committed before the engine is called."""
        return self.store.create(
            plan.job_id, name=spec.name, backend=self.name, poll_key=self.poll_key,
            nodes=spec.nodes, procs_per_node=spec.procs_per_node, launcher=spec.launcher,
            spec=spec_summary(spec), options=self.options_data(), run_dir=plan.run_dir,
            details=self.record_details(spec, plan), owner=owner or Owner.me(),
        )

    def _recorded_plan(self, spec: JobSpec, plan: Plan | None) -> tuple[Plan, JobRecord]:
        plan = plan or self.render(spec)
        for _ in range(5):
            try:
                return plan, self.record(spec, plan)
            except DuplicateJob:
                plan = self.render(spec)  # a new id
        raise SubmitError(f"could not find a free job id for {spec.name!r}")

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        """Record the job, hand it to the engine, and return at once."""
        plan, record = self._recorded_plan(spec, plan)
        try:
            engine_id = self._launch(spec, plan, record)
        except BaseException as exc:
            self._submission_failed(record, exc)
            raise
        record, _ = self.store.apply(record.id, Observation(JobState.PENDING), Source.SUBMIT,
                                     engine_id=engine_id,
                                     clear_owner=self.clears_owner_after_submit)
        if record.state is JobState.CANCELLED:  # cancelled while we were submitting it
            self._stop(record)
        return JobRef(self.name, record.id)

    clears_owner_after_submit = True  # the engine owns the job once it has it

    def _submission_failed(self, record: JobRecord, exc: BaseException) -> None:
        """Nothing (more) will run: record the job FAILED, saying why."""
        reason = f"submission failed: {exc}" if isinstance(exc, CorralError) else (
            f"submission interrupted ({type(exc).__name__})")
        self.store.apply(record.id, Observation(JobState.FAILED, reason, finished=time.time()),
                         Source.SUBMIT)

    def refresh(self, force: bool = False) -> None:
        from corral.watcher import refresh

        refresh(self, force=force)

    def describe(self, job_id: str) -> JobStatus:
        record = self.store.get(job_id)  # JobNotFound before anything else
        if record.poll_key == self.poll_key:
            self.refresh()
        elif not record.state.is_terminal():  # submitted to another engine than ours
            from corral.backends import backend_for_job

            backend_for_job(record).refresh()
        return self.store.status(job_id)

    def list(self) -> list[JobStatus]:
        self.refresh()
        return [self.store.status(r.id) for r in self.store.jobs(self.name)]

    def wait(self, job_id: str, timeout: float | None = None,
             poll: float | None = None) -> JobStatus:
        """Block until the job ends or ``timeout`` seconds pass; return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        step = READ_STEP if poll is None else poll
        while not (status := self.describe(job_id)).state.is_terminal():
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(step)
        return status

    def cancel(self, job_id: str, timeout: float | None = None) -> JobStatus:
        """Stop every rank; cancelling a finished job changes nothing (idempotent)."""
        record = self.store.get(job_id)
        if record.state.is_terminal():
            return self.store.status(job_id)
        if record.state is JobState.SUBMITTING and record.owner and record.owner.alive():
            # Its submitter is calling the engine right now: the cancel is recorded, and
            # the submitter stops whatever the engine accepted (see submit).
            self.store.apply(job_id, Observation(
                JobState.CANCELLED, "cancelled while being submitted", finished=time.time()),
                Source.USER)
            return self.store.status(job_id)
        if record.state is JobState.SUBMITTING or (record.engine_id is None and (
                not record.owner or not record.owner.alive())):
            # Nothing reached the engine that we know of: make sure nothing will run.
            self.refresh(force=True)
            record = self.store.get(job_id)
        if not record.state.is_terminal():
            self._stop(record)
        wait = self.cancel_grace if timeout is None else timeout
        status = self.wait(job_id, timeout=wait)
        if not status.state.is_terminal():
            status = self._cancel_unconfirmed(record, wait)
        return status

    def _cancel_unconfirmed(self, record: JobRecord, waited: float) -> JobStatus:
        """The engine did not confirm the cancel in time: say so, keep watching."""
        self.store.apply(record.id, Observation(
            JobState.UNKNOWN, f"cancel requested {waited:.0f}s ago and not yet confirmed by "
            f"{self.name}; corral keeps checking"), Source.USER)
        return self.store.status(record.id)

    def follow(self, job_id: str, follower: LogFollower, follow: bool,
               poll: float = 0.1) -> Iterator[tuple[LogSource, str]]:
        """New lines from ``follower``, until the job ends when ``follow`` is set."""
        while True:
            done = not follow or self.describe(job_id).state.is_terminal()
            yield from follower.poll(final=done)
            if done:
                return
            time.sleep(poll)

    def run(
        self, spec: JobSpec, sink: LineSink | None = None, plan: Plan | None = None,
        waiting: Callable[[JobStatus], None] | None = None,
    ) -> JobStatus:
        """Submit, stream the ranks' output to ``sink``, and return the final status.

        While the job waits to start, ``waiting`` hears of every change of its state or
        reason (Slurm's ``Resources``, ``Priority``...). Ctrl-C (KeyboardInterrupt) cancels
        the job, then raises KeyboardInterrupt again, so that a loop of runs stops: a
        foreground run never leaves ranks behind.
        """
        return self.follow_run(self.submit(spec, plan).job_id, sink, waiting)

    def follow_run(self, job_id: str, sink: LineSink | None = None,
                   waiting: Callable[[JobStatus], None] | None = None) -> JobStatus:
        """What ``run`` does once the job is submitted: wait for it to start, stream its
        lines, return its final status; Ctrl-C cancels it and raises again."""
        try:
            self._wait_to_start(job_id, waiting)
            for source, line in self._run_lines(job_id):
                if sink is not None:
                    sink(source, line)
            return self.wait(job_id)
        except KeyboardInterrupt:
            self.cancel(job_id)
            raise

    def _wait_to_start(self, job_id: str, waiting: Callable[[JobStatus], None] | None) -> None:
        """Until the job runs (or ends): tell ``waiting`` each new state and reason."""
        shown: tuple[JobState, str] | None = None
        while (status := self.describe(job_id)).state in (
                JobState.SUBMITTING, JobState.PENDING, JobState.UNKNOWN):
            if waiting is not None and (status.state, status.reason) != shown:
                shown = (status.state, status.reason)
                waiting(status)
            time.sleep(READ_STEP)

    def _run_lines(self, job_id: str) -> Iterator[tuple[LogSource, str]]:
        """What a foreground run streams: every rank's lines until the job ends."""
        return self.logs(job_id, follow=True)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "capabilities": self.capabilities}


class EngineOptions(Protocol):
    @property
    def poll_seconds(self) -> float: ...

    def model_dump(self, *, mode: str) -> dict[str, Any]: ...


OptionsT = TypeVar("OptionsT", bound=EngineOptions)


class ConfiguredBackend(Backend, Generic[OptionsT]):
    """A backend whose engine is described by typed options (a pydantic model with
    ``poll_seconds``, see :mod:`corral.backends.typed_options`): they are recorded with each
    job it submits, and ``poll_seconds`` is the least time between two looks at the engine."""

    options: OptionsT

    @property
    def poll_interval(self) -> float:  # type: ignore[override]
        return float(self.options.poll_seconds)

    def options_data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.options.model_dump(mode="json")
        return data
