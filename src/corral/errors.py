"""corral's exception tree. Every message says what went wrong, why, and how to fix it.

CorralError
 ├── SpecError            a job spec field has a bad value (field, value, what is accepted)
 ├── JobFileError         a YAML/TOML job file cannot be read or parsed
 ├── MissingDependency    an optional part is not installed (with the pip command)
 ├── MetricError          corral.log was given a value that is not a finite number
 ├── BackendError         a backend could not do what was asked
 │    ├── SubmitError     nothing was started
 │    ├── JobNotFound     no record of that job id
 │    ├── PermissionDenied  the job is another user's (cancel, hold, logs)
 │    ├── SharedQueueError  a shared queue's agent refused or cannot be reached
 │    └── StoreError      the job store cannot be opened, read or written (corral.store)
 │         └── DuplicateJob
 ├── IllegalTransition    a state change the state machine refuses (corral.states)
 ├── NodeStartError       a cloud node cannot start: the service's variables or files, or the
 │                        job's description, do not say what to run (corral.runtime.cloud_node)
 └── JobFailed            the job ran and did not succeed (state, first failing rank)
      ├── RankError       a distributed function raised on a rank (rank, node, traceback)
      └── ResultUnreadable  a rank's return value or exception cannot be unpickled here

Exit codes of the ``corral`` command: a job's own exit code passes through unchanged;
corral's own failures (any CorralError other than JobFailed: a bad spec, a failed
submission, an engine that cannot be reached) exit 125, as ``docker run`` does; 124 is a
``corral wait --timeout`` that ran out; 130 an interrupted command. A cloud batch node
(``python -m corral.runtime.cloud_node``) that cannot start exits 2, saying why in its log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.status import JobStatus


class CorralError(Exception):
    """Root of every error corral raises on purpose."""


class NodeStartError(CorralError):
    """A cloud node cannot start: where it stands, or what to run, is not known."""


class SpecError(CorralError, ValueError):
    """A job spec is invalid. ``problems`` lists (field, value, accepted) triples."""

    def __init__(self, problems: list[tuple[str, Any, str]], what: str = "job spec") -> None:
        self.problems = problems
        lines = [f"  {field}: got {value!r}; {accepted}" for field, value, accepted in problems]
        noun = "field" if len(problems) == 1 else "fields"
        super().__init__(f"invalid {what} ({len(problems)} {noun}):\n" + "\n".join(lines))


class JobFileError(CorralError):
    """A job file could not be read or parsed."""


class MissingDependency(CorralError, ImportError):
    """An optional dependency is missing."""

    def __init__(self, module: str, extra: str | None = None, purpose: str = "") -> None:
        hint = f"pip install 'corral[{extra}]'" if extra else f"pip install {module}"
        why = f" (needed {purpose})" if purpose else ""
        super().__init__(f"the Python package {module!r} is not installed{why}; run: {hint}")


class MetricError(CorralError, TypeError):
    """``corral.log`` was given something other than a finite number (or an int step)."""


class BackendError(CorralError):
    """A backend could not complete an operation."""


class SubmitError(BackendError):
    """Submission failed; nothing was started."""


class PermissionDenied(BackendError):
    """The job belongs to another user: only its owner or root may act on it."""


class JobNotFound(BackendError, KeyError):
    """No job with this id is recorded."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "job not found"


class JobFailed(CorralError):
    """The job finished in a state other than SUCCEEDED."""

    def __init__(self, status: JobStatus, message: str | None = None) -> None:
        self.status = status
        super().__init__(message or status.summary())


class RankError(JobFailed):
    """A distributed function raised an exception on one of its ranks."""

    def __init__(self, status: JobStatus, rank: int, node: int, remote_traceback: str) -> None:
        self.rank = rank
        self.node = node
        self.remote_traceback = remote_traceback
        super().__init__(
            status,
            f"rank {rank} (node {node}) raised an exception:\n\n{remote_traceback.rstrip()}",
        )


class ResultUnreadable(JobFailed):
    """A rank's return value (or exception) arrived but cannot be unpickled here."""

    def __init__(self, status: JobStatus, rank: int, type_name: str, cause: str,
                 remote_traceback: str = "") -> None:
        self.rank = rank
        self.type_name = type_name
        self.remote_traceback = remote_traceback
        detail = f"\n\nremote traceback:\n{remote_traceback.rstrip()}" if remote_traceback else ""
        super().__init__(
            status,
            f"the result of rank {rank} (a {type_name}) cannot be unpickled here: {cause}; "
            "make its module importable in this process, or return plain types" + detail,
        )
