"""The job state machine: which state changes are allowed, and what each one records.

Every state change of every job, on every backend, goes through :func:`transition`; the
store (:mod:`corral.store`) applies the result and logs it as an event with its source.

::

    SUBMITTING -> PENDING -> RUNNING -> SUCCEEDED | FAILED | CANCELLED | TIMEOUT
         |           |          |
         +-----------+----------+--> any terminal state (a job may end before it is seen
                                     running), or UNKNOWN (the engine cannot say now)
    UNKNOWN  -> whatever the engine says next (never back to SUBMITTING)
    requeue  -> PENDING with attempt + 1: from RUNNING, UNKNOWN or a terminal state, only
                when the engine itself requeued the job (its attempt count went up)

A terminal state is final except through an engine requeue. Nothing returns to
SUBMITTING. Only the submitting process, the reconciler and the user make the first move
out of SUBMITTING; an observation made while still SUBMITTING is taken as it comes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from corral.errors import CorralError
from corral.jobstate import JobState


class Source(str, enum.Enum):
    """Who made a state change (recorded with every event)."""

    SUBMIT = "submit"  # the submitting process, around the engine call
    ENGINE = "engine"  # the watcher, from what the engine reported
    SUPERVISOR = "supervisor"  # the local backend's supervisor, which runs the ranks
    USER = "user"  # corral cancel, Ctrl-C, a signal
    RECONCILE = "reconcile"  # a later corral command fixing a crashed submission or owner


class IllegalTransition(CorralError):
    """A state change that the state machine does not allow (a bug, or a stale writer)."""


@dataclass(frozen=True)
class Change:
    """The outcome of one allowed move: the new state and attempt, and whether it changed."""

    state: JobState
    attempt: int
    changed: bool
    requeued: bool = False


_FROM_SUBMITTING = frozenset(JobState) - {JobState.SUBMITTING}


def allowed(current: JobState, new: JobState) -> bool:
    """Whether ``current -> new`` is a legal move without an engine requeue."""
    if current is new:
        return True
    if new is JobState.SUBMITTING:
        return False
    if current.is_terminal():
        return False
    if current is JobState.SUBMITTING:
        return new in _FROM_SUBMITTING
    # PENDING/RUNNING/UNKNOWN -> a later state, UNKNOWN, or back from UNKNOWN; only a
    # requeue takes a running job back to PENDING.
    return not (current is JobState.RUNNING and new is JobState.PENDING)


def transition(current: JobState, attempt: int, new: JobState,
               engine_attempt: int | None = None) -> Change:
    """The move from ``current`` (at ``attempt``) to what was observed.

    ``engine_attempt`` is the engine's own count of starts (Slurm's restart count + 1),
    when it keeps one: a higher count than ours means the engine requeued the job, which
    is the only way out of a terminal state. Raises :class:`IllegalTransition` for a move
    that is not allowed; a repeat of the current state is allowed and changes nothing.
    """
    if (engine_attempt is not None and engine_attempt > attempt
            and current is not JobState.SUBMITTING and new is not JobState.SUBMITTING):
        # The engine started the job again: it went back to PENDING (recorded as its own
        # event), and whatever it does now belongs to the new attempt.
        return Change(new, engine_attempt, True, requeued=True)
    if not allowed(current, new):
        raise IllegalTransition(
            f"a job cannot go from {current.value} to {new.value}"
            + (" (a terminal state changes only when the engine requeues the job)"
               if current.is_terminal() else "")
        )
    return Change(new, attempt, current is not new)
