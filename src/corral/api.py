"""The Python API: run or submit a spec, and distributed functions.

>>> @corral.distributed(nodes=2, procs_per_node=2)
... def train(cfg): ...
>>> result = train(cfg)   # rank 0's return value
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from corral.backends import backend_for_job, configured_backend
from corral.backends.base import Backend
from corral.console import LinePrinter
from corral.errors import JobFailed, RankError, ResultUnreadable
from corral.logs import LogSource
from corral.spec import Function, JobSpec, JobState
from corral.status import JobStatus
from corral.store import open_store

if TYPE_CHECKING:
    from corral.queue.submission import Submission

P = ParamSpec("P")
R = TypeVar("R")
Sink = Callable[[LogSource, str], None]


def _backend(backend: str | Backend) -> Backend:
    """A backend by name, with the same defaults the CLI reads (corral.toml, [tool.corral])."""
    if not isinstance(backend, str):
        return backend
    from corral.config import backend_defaults

    return configured_backend(backend, backend_defaults(backend))


def run(
    spec: JobSpec, backend: str | Backend = "local", *, stream: bool | Sink = True,
    check: bool = False,
) -> JobStatus:
    """Run ``spec`` until it ends, streaming rank-prefixed output; return its status.

    ``check=True`` raises :class:`JobFailed` unless the job succeeded.
    """
    engine = _backend(backend)
    sink: Sink | None = LinePrinter(spec.procs_per_node) if stream is True else stream or None
    status = engine.run(spec, sink=sink)
    if check and status.state is not JobState.SUCCEEDED:
        raise JobFailed(status)
    return status


def submit(spec: JobSpec, backend: str | Backend = "local", *,
           after: Sequence[str] = (), retries: int = 0, preemptible: bool = False,
           hold: bool = False) -> JobHandle:
    """Queue ``spec`` and return a handle at once. On the local backend the queue options
    apply: ``after`` (``"ID"``, ``"afterany:ID"``, ``"afternotok:ID"``), ``retries``,
    ``preemptible``, ``hold``; :func:`submit_array` queues an array."""
    from corral.queue.submission import Submission, parse_after

    engine = _backend(backend)
    submission = Submission(after=parse_after(after), retries=retries,
                            preemptible=preemptible, hold=hold)
    return JobHandle(engine, _queued(engine, spec, submission)[0])


def submit_array(spec: JobSpec, array: str, backend: str | Backend = "local", *,
                 after: Sequence[str] = (), retries: int = 0) -> list[JobHandle]:
    """Queue one job per index of ``array`` (``"0-99%8"``: at most 8 at once) on the local
    queue; each task reads its index from ``CORRAL_ARRAY_TASK_ID``."""
    from corral.queue.submission import Submission, parse_after, parse_array

    engine = _backend(backend)
    submission = Submission(after=parse_after(after), array=parse_array(array),
                            retries=retries)
    return [JobHandle(engine, job_id) for job_id in _queued(engine, spec, submission)]


def _queued(engine: Backend, spec: JobSpec, submission: Submission) -> list[str]:
    from corral.backends.local.client import LocalBackend
    from corral.queue.submission import Submission as Plain

    if isinstance(engine, LocalBackend):
        return engine.submit_queued(spec, submission=submission)
    if submission != Plain():
        from corral.errors import SpecError

        raise SpecError([("after/array/retries/preemptible/hold", engine.name,
                          "options of the local queue; a cluster has its own")])
    return [engine.submit(spec).job_id]


def attach(job_id: str) -> JobHandle:
    """A handle for a job submitted earlier (by this process or any other)."""
    return JobHandle(backend_for_job(open_store().get(job_id)), job_id)


class JobHandle:
    """A submitted job: ``.state``, ``.wait()``, ``.logs()``, ``.cancel()``, ``.result()``."""

    def __init__(self, backend: Backend, job_id: str) -> None:
        self.backend = backend
        self.job_id = job_id

    def __repr__(self) -> str:
        return f"corral.attach({self.job_id!r})"

    def status(self) -> JobStatus:
        return self.backend.describe(self.job_id)

    @property
    def state(self) -> JobState:
        return self.status().state

    def wait(self, timeout: float | None = None, poll: float | None = None) -> JobStatus:
        """Block until the job ends (or ``timeout`` seconds pass); return its status."""
        return self.backend.wait(self.job_id, timeout, poll)

    def logs(self, rank: int | None = None) -> str:
        """Everything written so far (one rank's output, or all of it labelled)."""
        lines = self.backend.logs(self.job_id, rank=rank)
        if rank is not None:
            return "".join(line + "\n" for _, line in lines)
        status = self.status()
        return "".join(
            f"[{src.label(status.procs_per_node)}] {line}\n" for src, line in lines
        )

    def cancel(self) -> JobStatus:
        return self.backend.cancel(self.job_id)

    def result(self, rank: int | None = 0) -> Any:
        """The return value of a distributed function (rank 0, one rank, or all with None)."""
        return collect_results(self.backend, self.wait(), rank)


def _envelope(status: JobStatus, rank: int, data: bytes) -> dict[str, Any]:
    import pickle

    try:
        envelope: dict[str, Any] = pickle.loads(data)
        if not isinstance(envelope, dict) or "ok" not in envelope:
            raise ValueError("not a corral result")
    except Exception as exc:
        raise ResultUnreadable(status, rank, "result file", f"{type(exc).__name__}: {exc}"
                               ) from None
    return envelope


def _unpickle(status: JobStatus, rank: int, envelope: dict[str, Any]) -> Any:
    import cloudpickle

    try:
        return cloudpickle.loads(envelope["payload"])
    except Exception as exc:
        raise ResultUnreadable(status, rank, str(envelope.get("type")),
                               f"{type(exc).__name__}: {exc}",
                               str(envelope.get("traceback") or "")) from None


def collect_results(backend: Backend, status: JobStatus, rank: int | None = 0) -> Any:
    """Return values of a function job, read through its backend (only the ranks asked
    for); raise what a rank raised."""
    world = status.nodes * status.procs_per_node
    failed_rank = status.failure.rank if status.failure else None
    wanted = list(range(world)) if rank is None else [rank]
    if failed_rank is not None and failed_rank not in wanted:
        wanted.insert(0, failed_rank)  # its exception is the answer
    if rank is not None and not 0 <= rank < world:
        raise JobFailed(status, f"job {status.job_id} has ranks 0..{world - 1}, not {rank}")
    envelopes: dict[int, dict[str, Any]] = {}
    for r in wanted:
        data = backend.read_result(status.job_id, r)
        if data is not None:
            envelopes[r] = _envelope(status, r, data)
    failed = [r for r in wanted if r in envelopes and not envelopes[r]["ok"]]
    if failed:
        chosen = failed_rank if failed_rank in failed else failed[0]
        outcome = envelopes[chosen]
        error = RankError(status, chosen, chosen // status.procs_per_node,
                          str(outcome.get("traceback") or ""))
        cause = _unpickle(status, chosen, outcome) if outcome.get("payload") else None
        if isinstance(cause, BaseException):
            raise error from cause
        raise error
    if status.state is not JobState.SUCCEEDED:
        raise JobFailed(status)
    missing = [r for r in wanted if r not in envelopes]
    if missing:
        raise JobFailed(status, f"job {status.job_id}: no result from rank(s) {missing}")
    values = [_unpickle(status, r, envelopes[r]) for r in wanted]
    return values if rank is None else values[0]


class DistributedFunction(Generic[P, R]):
    """A function that runs on every rank of a job when called."""

    def __init__(self, fn: Callable[P, R], all_ranks: bool, backend: str | Backend,
                 stream: bool | Sink, spec_fields: dict[str, Any]) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.all_ranks = all_ranks
        self.backend = backend
        self.stream = stream
        self.spec_fields = spec_fields
        self.last_status: JobStatus | None = None

    def spec(self, *args: P.args, **kwargs: P.kwargs) -> JobSpec:
        fields = {"name": getattr(self.fn, "__name__", "function"), **self.spec_fields}
        return JobSpec(
            entrypoint=Function(fn=self.fn, call_args=args, call_kwargs=kwargs), **fields
        )

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        engine = _backend(self.backend)
        status = run(self.spec(*args, **kwargs), engine, stream=self.stream)
        self.last_status = status
        return collect_results(engine, status, None if self.all_ranks else 0)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> JobHandle:
        return submit(self.spec(*args, **kwargs), self.backend)


def distributed(
    fn: Callable[P, R] | None = None, *, nodes: int = 1, procs_per_node: int = 1,
    launcher: str = "torchrun", all_ranks: bool = False, backend: str | Backend = "local",
    stream: bool | Sink = True, **spec_fields: Any,
) -> Any:
    """Make ``fn`` run on ``nodes * procs_per_node`` ranks when called.

    Calling it returns rank 0's return value (every rank's, in rank order, with
    ``all_ranks=True``). An exception on any rank is raised here as
    :class:`corral.errors.RankError`, naming the rank and carrying its traceback. Other
    :class:`JobSpec` fields (``env``, ``time_limit``, ``resources``...) pass through.
    """
    fields = {"nodes": nodes, "procs_per_node": procs_per_node, "launcher": launcher,
              **spec_fields}
    if all_ranks and launcher == "ray":
        from corral.errors import SpecError

        raise SpecError([("all_ranks", True, "with launcher 'ray' the function runs once, as "
                          "the Ray driver on node 0: it has one return value")])

    def wrap(inner: Callable[P, R]) -> DistributedFunction[P, R]:
        return DistributedFunction(inner, all_ranks, backend, stream, fields)

    return wrap(fn) if fn is not None else wrap
