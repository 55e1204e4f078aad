"""The watcher: one batched look at an engine's unfinished jobs, written to the store.

Every reader (``corral ps``, ``wait``, ``logs -f``, handles, the Python API) calls
:func:`refresh` and then reads the store. ``refresh`` asks the engine only when it is this
process's turn: at most once per ``backend.poll_interval`` seconds for each engine (each
``poll_key``), across every corral process on this machine, however many jobs and waiters
there are. One question covers every unfinished job of that engine
(``backend.describe_many``).

It also reconciles submissions that crashed: a job still SUBMITTING whose submitting
process is gone is adopted when the engine has a job carrying its corral id, and marked
FAILED ("submission lost") when it has none after a grace period.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from corral.errors import CorralError
from corral.jobstate import JobState
from corral.states import Source
from corral.store import JobRecord, Observation

if TYPE_CHECKING:
    from corral.backends.base import Backend


def submit_grace() -> float:
    """Seconds a crashed submission may still appear on the engine before it is lost."""
    try:
        return max(0.0, float(os.environ.get("CORRAL_SUBMIT_GRACE", "30")))
    except ValueError:
        return 30.0


def refresh(backend: Backend, force: bool = False) -> None:
    """Bring the store up to date with ``backend``'s engine, if it is our turn to ask."""
    store = backend.store
    if store.read_only:  # a shared queue's store: its agent keeps it up to date
        return
    live = store.jobs(backend.name, live=True, poll_key=backend.poll_key)
    if not live:
        return
    if not force and not store.claim_poll(backend.poll_key, backend.poll_interval):
        return
    submitting = [r for r in live if r.state is JobState.SUBMITTING]
    if submitting:
        _reconcile(backend, submitting)
    watched = [r for r in live if r.state is not JobState.SUBMITTING]
    if not watched:
        return
    try:
        observations = backend.describe_many(watched)
    except CorralError as exc:
        reason = f"{backend.name} cannot be asked right now: {exc}"
        for record in watched:
            store.apply(record.id, Observation(JobState.UNKNOWN, reason), Source.ENGINE)
        return
    for job_id, observation in observations.items():
        store.apply(job_id, observation, Source.ENGINE)


def _reconcile(backend: Backend, records: list[JobRecord]) -> None:
    orphans = [r for r in records if r.owner is None or not r.owner.alive()]
    if not orphans:
        return
    store = backend.store
    try:
        found = backend.find_submitted(orphans)
    except CorralError:
        return  # the engine cannot be asked: try again next time
    now = time.time()
    for record in orphans:
        engine_id = found.get(record.id)
        if engine_id is not None:
            store.apply(record.id, Observation(
                JobState.PENDING, "adopted: the submitting process died after the engine "
                "accepted the job"), Source.RECONCILE, engine_id=engine_id, clear_owner=True)
        elif now - record.created >= submit_grace():
            who = f" (pid {record.owner.pid})" if record.owner else ""
            store.apply(record.id, Observation(
                JobState.FAILED, f"submission lost: the submitting process{who} died before "
                f"{backend.name} accepted the job; nothing runs; submit it again",
                finished=now), Source.RECONCILE, clear_owner=True)
            try:
                backend.discard_lost(record)
            except CorralError:
                pass  # left for the engine's own clean-up; the job is recorded lost anyway
