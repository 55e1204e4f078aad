"""Putting local jobs in the queue, and a foreground run's wait for its turn.

``enqueue`` records each job (one per array task) together with its queue entry in one
transaction, after everything it needs to start later is on disk; then it makes sure an
agent runs. A foreground ``corral run`` also enqueues, then runs one scheduling pass itself
(under the pass lock): on a free machine its job starts at once, with no agent at all.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from corral.errors import SpecError, SubmitError
from corral.jobstate import JobState
from corral.queue.agent import Scheduler, ensure_agent, pass_lock, wake
from corral.queue.ledger import DISPATCHED, Entry, Ledger
from corral.queue.machine import Machine, probe, request_for
from corral.queue.model import PendingJob, QueueState
from corral.queue.policy import _Pass
from corral.queue.shared import Peer, user_name
from corral.queue.start import save_function, save_submission
from corral.queue.submission import Submission
from corral.rundir import RunDir
from corral.status import JobStatus
from corral.store import DuplicateJob, Owner, Store, _user

if TYPE_CHECKING:
    from corral.backends.local.client import LocalBackend
    from corral.backends.local.render import LocalPlan
    from corral.spec import JobSpec

QOS_SCALE = 2000.0  # spec.priority -1000..1000 -> QoS 0..1
WAIT_STEP = 0.02


def qos_of(spec: JobSpec) -> float:
    return (spec.priority + 1000) / QOS_SCALE


def _check_fits(spec: JobSpec, machine: Machine) -> None:
    """Refuse at once a job that no amount of waiting would start here."""
    request = request_for(spec, machine)
    job = PendingJob("check", 0, "", 0.0, request, 1.0)
    if _Pass(QueueState(nodes=(machine.node,)), 0.0).static_reason(job) is not None:
        have = (f"{machine.cpus:g} CPUs, {machine.memory:g} MiB, {len(machine.gpu_ids)} GPU(s)"
                f" ({machine.gpu_source})")
        raise SpecError([("resources", spec.resources.model_dump(exclude_none=True),
                          f"at most what this machine has: {have}")])


def enqueue(backend: LocalBackend, spec: JobSpec, plan: LocalPlan,
            submission: Submission | None = None, foreground: bool = False,
            peer: Peer | None = None, environ: dict[str, str] | None = None) -> list[str]:
    """Record the job(s) as PENDING in the queue; their ids (one per array task).

    ``peer``: a shared queue's agent records the job for the user on the other end of its
    socket, with that user's ``environ`` (see :mod:`corral.queue.shared`)."""
    submission = submission or Submission()
    store = backend.store
    ledger = Ledger(store)
    machine = probe()
    _check_fits(spec, machine)
    spec = spec.replace(workdir=plan.workdir)
    missing = sorted({d.job_id for d in submission.after} - ledger.known_jobs(
        d.job_id for d in submission.after))
    if missing:
        raise SpecError([("after", missing[0], "the id of a job in this corral home "
                          "(`corral ps -a` lists them)")])
    if foreground and submission.array is not None:
        raise SpecError([("array", submission.array, "arrays are for `corral submit`")])
    request = request_for(spec, machine)
    user, uid = (_user(), os.getuid()) if peer is None else (user_name(peer.uid), peer.uid)
    entry = Entry(user=user, uid=uid, request=request, time_limit=spec.time_limit,
                  queue=spec.queue or "default", qos=qos_of(spec),
                  preemptible=submission.preemptible, after=submission.after,
                  retries_left=submission.retries, held=submission.hold,
                  foreground=foreground)
    tasks: list[tuple[str, int | None]] = [(plan.job_id, None)]
    if submission.array is not None:
        tasks = [(f"{plan.job_id}_{i}", i) for i in submission.array.indices]
        entry = replace(entry, array_id=plan.job_id, array_limit=submission.array.limit)
    if peer is None:
        environ = None if foreground else dict(os.environ)
    ids = []
    for job_id, index in tasks:
        ids.append(_record(backend, store, ledger, spec, plan, job_id,
                           replace(entry, array_index=index), environ, foreground, peer))
    if not foreground and peer is None:
        ensure_agent(store)
    wake(store)
    return ids


def _record(backend: LocalBackend, store: Store, ledger: Ledger, spec: JobSpec,
            plan: LocalPlan, job_id: str, entry: Entry, environ: dict[str, str] | None,
            foreground: bool, peer: Peer | None) -> str:
    from corral.backends.base import spec_summary
    from corral.rundir import new_job_id

    for _ in range(5):
        try:
            run = RunDir.create(job_id, backend.root)
        except FileExistsError:
            job_id = new_job_id(spec.name)
            continue
        def insert(db: sqlite3.Connection, job_id: str = job_id) -> None:
            ledger.insert(db, job_id, entry, time.time())

        try:
            if not foreground:  # a foreground run keeps its spec in memory
                save_submission(run, spec, environ, peer)
            else:
                save_function(run, spec)
            summary = spec_summary(spec)
            if peer is not None:  # a shared store is read by every user: values stay private
                summary["env"] = {key: "(hidden)" for key in summary.get("env", {})}
            store.create(
                job_id, name=spec.name, backend=backend.name, poll_key=backend.poll_key,
                nodes=spec.nodes, procs_per_node=spec.procs_per_node, launcher=spec.launcher,
                spec=summary, options=backend.options_data(),
                run_dir=str(run.path), details=backend.record_details(spec, plan),
                owner=Owner.me() if foreground else None, state=JobState.PENDING,
                reason="queued", user=entry.user, also=insert)
            return job_id
        except DuplicateJob:
            job_id = new_job_id(spec.name)
        except BaseException:
            import shutil

            shutil.rmtree(run.path, ignore_errors=True)
            raise
    raise SubmitError(f"could not find a free job id for {spec.name!r}")


def wait_for_turn(store: Store, job_id: str,
                  waiting: Callable[[JobStatus], None] | None = None) -> str | None:
    """A foreground run's job: one pass of its own, then wait for the agent to dispatch
    it. Its dispatch token, or None if it ended first (cancelled)."""
    ledger = Ledger(store)
    with pass_lock(store):
        Scheduler(store, probe()).run_pass(only=job_id, fork=False)
    row = ledger.row(job_id)
    if row is not None and row.phase != DISPATCHED and not row.job_state.is_terminal():
        ensure_agent(store)
        wake(store)
    shown: tuple[JobState, str] | None = None
    checked = time.monotonic()
    while True:
        if time.monotonic() - checked > 1.0:  # an agent killed meanwhile is started again
            ensure_agent(store)
            checked = time.monotonic()
        row = ledger.row(job_id)
        if row is None or row.job_state.is_terminal():
            return None
        if row.phase == DISPATCHED and row.token:
            return row.token
        if waiting is not None and (row.job_state, row.reason) != shown:
            shown = (row.job_state, row.reason)
            waiting(store.status(job_id))
        time.sleep(WAIT_STEP)


def submit_shared(backend: LocalBackend, spec: JobSpec, plan: LocalPlan,
                  submission: Submission | None) -> list[str]:
    """Ask a shared queue's agent to queue the job for us (see corral.queue.shared)."""
    from dataclasses import asdict

    from corral.queue.shared import Request, request, submission_json
    from corral.spec import Function

    if isinstance(spec.entrypoint, Function):
        raise SpecError([("entrypoint", spec.entrypoint.label, "a script, module or command: "
                          "a shared queue does not unpickle a function as root")])
    data = spec.replace(workdir=plan.workdir).model_dump(mode="json")
    reply = request(backend.store.path.parent, Request(
        "submit", spec=data, environ=dict(os.environ),
        submission=submission_json(submission or Submission()),
        options=asdict(backend.options)))
    return list(reply.job_ids)
