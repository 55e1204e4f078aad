"""The job states. Standard library only: ``corral ps`` reads states without pydantic.

:mod:`corral.spec` re-exports :class:`JobState`; the allowed moves between states are in
:mod:`corral.states`.
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """Where a job is in its life. Terminal states change only through an engine requeue.

    SUBMITTING: recorded, the engine not yet (known to be) called. UNKNOWN: the engine cannot
    say right now (the reason says why); the job is checked again. The allowed moves between
    states are in :mod:`corral.states`.
    """

    SUBMITTING = "SUBMITTING"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    UNKNOWN = "UNKNOWN"

    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT})

__all__ = ["JobState"]
