"""The queue's rows in the job store: enqueue, read the state, dispatch, claim, finish.

Every change here is one store transaction, so that a process killed at any moment (the
agent, a submitter, a job's starter) leaves the queue consistent:

- a job and its queue entry are written together (``enqueue``);
- a dispatch gives the entry a fresh token; only a process that shows that token may
  claim it (``claim``: dispatched -> running, the claimer becomes the job's owner), and a
  dispatch nobody claimed in time is revoked (``revoke``), so no job starts twice;
- a job's end, its requeue and the usage it is charged are one transaction (``finish``).

Phases of an entry: ``waiting`` -> ``dispatched`` -> ``running`` -> ``done`` (or back to
``waiting`` by a revoke, a preemption or a retry).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from corral.errors import JobNotFound, PermissionDenied
from corral.jobstate import JobState
from corral.queue.fairshare import QUEUE_PREFIX, TOTAL_QUEUES, TOTAL_USERS, Weights
from corral.queue.model import (
    Dependency,
    DependencyKind,
    Node,
    NodeShare,
    Outcome,
    PendingJob,
    Queue,
    QueueState,
    Request,
    RunningJob,
)
from corral.states import Source
from corral.store import JobRecord, Observation, Owner, Store

WAITING, DISPATCHED, RUNNING, DONE = "waiting", "dispatched", "running", "done"
EPOCH_KEY = "*epoch"
GPU_BILLING = 8.0  # one GPU-second is charged as this many CPU-seconds (Slurm's TRES billing)


@dataclass(frozen=True)
class Entry:
    """One job's queue entry, as submitted."""

    user: str
    uid: int
    request: Request
    time_limit: float | None
    queue: str = "default"
    qos: float = 0.5
    preemptible: bool = False
    after: tuple[Dependency, ...] = ()
    array_id: str | None = None
    array_limit: int | None = None
    array_index: int | None = None
    retries_left: int = 0
    held: bool = False
    foreground: bool = False


@dataclass(frozen=True)
class Row:
    """An entry as read back, with its job's state."""

    job_id: str
    seq: int
    user: str
    uid: int
    queue: str
    request: Request
    time_limit: float | None
    qos: float
    preemptible: bool
    after: tuple[Dependency, ...]
    array_id: str | None
    array_limit: int | None
    array_index: int | None
    retries_left: int
    held: bool
    foreground: bool
    submitted: float
    phase: str
    token: str | None
    dispatched: float | None
    placement: dict[str, Any] | None
    preempt_at: float | None
    preempt_for: str | None
    job_state: JobState
    reason: str
    charged_until: float | None
    owner: Owner | None
    started: float | None
    attempt: int
    run_dir: str | None

    def pending(self, no_limit: float) -> PendingJob:
        return PendingJob(
            id=self.job_id, seq=self.seq, user=self.user, submit=self.submitted,
            request=self.request, time_limit=self.time_limit or no_limit, queue=self.queue,
            qos=self.qos, preemptible=self.preemptible, after=self.after,
            array=self.array_id, array_limit=self.array_limit,
            retries_left=self.retries_left, held=self.held)

    def running(self, no_limit: float, now: float) -> RunningJob:
        shares = tuple(share_from_json(s) for s in (self.placement or {}).get("shares", []))
        return RunningJob(
            id=self.job_id, user=self.user, start=self.started or self.dispatched or now,
            time_limit=self.time_limit or no_limit, placement=shares, queue=self.queue,
            qos=self.qos, preemptible=self.preemptible,
            preempting=self.preempt_at is not None, array=self.array_id)


def share_to_json(share: NodeShare) -> dict[str, Any]:
    return {"node": share.node, "cpus": share.cpus, "memory": share.memory,
            "gpus": [list(g) for g in share.gpus]}


def share_from_json(data: Mapping[str, Any]) -> NodeShare:
    return NodeShare(str(data["node"]), float(data["cpus"]), float(data.get("memory", 0.0)),
                     tuple((int(i), float(f)) for i, f in data.get("gpus", [])))


def _request_json(request: Request) -> str:
    return json.dumps({"nodes": request.nodes, "cpus": request.cpus, "gpus": request.gpus,
                       "memory": request.memory})


def _row(row: sqlite3.Row) -> Row:
    request = json.loads(row["request"])
    owner = (Owner(int(row["owner_pid"]), float(row["owner_start"] or 0))
             if row["owner_pid"] is not None else None)
    try:
        state = JobState(row["job_state"])
    except ValueError:
        state = JobState.UNKNOWN
    return Row(
        job_id=row["job_id"], seq=int(row["seq"]), user=row["user"], uid=int(row["uid"]),
        queue=row["queue"], request=Request(int(request["nodes"]), float(request["cpus"]),
                                            float(request["gpus"]), float(request["memory"])),
        time_limit=row["time_limit"], qos=float(row["qos"]),
        preemptible=bool(row["preemptible"]),
        after=tuple(Dependency(DependencyKind(k), i) for k, i in json.loads(row["after"] or "[]")),
        array_id=row["array_id"], array_limit=row["array_limit"],
        array_index=row["array_index"], retries_left=int(row["retries_left"]),
        held=bool(row["held"]), foreground=bool(row["foreground"]),
        submitted=float(row["submitted"]), phase=row["phase"], token=row["token"],
        dispatched=row["dispatched"],
        placement=json.loads(row["placement"]) if row["placement"] else None,
        preempt_at=row["preempt_at"], preempt_for=row["preempt_for"], job_state=state,
        reason=row["reason"] or "", charged_until=row["charged_until"], owner=owner,
        started=row["started"],
        attempt=int(row["attempt"] or 1), run_dir=row["run_dir"])


_SELECT = ("SELECT q.*, j.state AS job_state, j.reason AS reason, j.owner_pid AS owner_pid, "
           "j.owner_start AS owner_start, j.started AS started, j.attempt AS attempt, "
           "j.run_dir AS run_dir FROM queue q JOIN jobs j ON j.id = q.job_id")


def outcome_of(state: JobState) -> Outcome | None:
    """A finished job's outcome for dependencies (None while it has not ended)."""
    if not state.is_terminal():
        return None
    return Outcome.OK if state is JobState.SUCCEEDED else Outcome.FAILED


class Ledger:
    """The queue's tables in one job store."""

    def __init__(self, store: Store, weights: Weights | None = None) -> None:
        self.store = store
        self.weights = weights or Weights()
        self.half_life = self.weights.half_life

    # -- submitting --------------------------------------------------------------------------

    def insert(self, db: sqlite3.Connection, job_id: str, entry: Entry, now: float) -> None:
        """The entry's row, inside the transaction that records its job."""
        seq = int(db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM queue").fetchone()[0])
        db.execute(
            "INSERT INTO queue (job_id, seq, user, uid, queue, request, time_limit, qos, "
            "preemptible, after, array_id, array_limit, array_index, retries_left, held, "
            "foreground, submitted, phase) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (job_id, seq, entry.user, entry.uid, entry.queue, _request_json(entry.request),
             entry.time_limit, entry.qos, int(entry.preemptible),
             json.dumps([[d.kind.value, d.job_id] for d in entry.after]), entry.array_id,
             entry.array_limit, entry.array_index, entry.retries_left, int(entry.held),
             int(entry.foreground), now, WAITING))

    def known_jobs(self, job_ids: Iterable[str]) -> set[str]:
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return set()
        marks = ", ".join("?" for _ in ids)
        rows = self.store.read(lambda db: db.execute(
            f"SELECT id FROM jobs WHERE id IN ({marks})", ids).fetchall())
        return {r["id"] for r in rows}

    # -- reading -----------------------------------------------------------------------------

    def rows(self, live_only: bool = True) -> list[Row]:
        where = f" WHERE q.phase != '{DONE}'" if live_only else ""
        found = self.store.read(lambda db: db.execute(
            f"{_SELECT}{where} ORDER BY q.seq").fetchall())
        return [_row(r) for r in found]

    def row(self, job_id: str) -> Row | None:
        found = self.store.read(lambda db: db.execute(
            f"{_SELECT} WHERE q.job_id = ?", (job_id,)).fetchone())
        return None if found is None else _row(found)

    def outcomes(self, rows: Sequence[Row]) -> dict[str, Outcome]:
        """Outcomes of the jobs that waiting entries depend on (finished ones only)."""
        wanted = sorted({d.job_id for r in rows if r.phase == WAITING for d in r.after})
        if not wanted:
            return {}
        found: dict[str, Outcome] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            query = f"SELECT id, state FROM jobs WHERE id IN ({marks})"

            def select(db: sqlite3.Connection, q: str = query,
                       c: list[str] = chunk) -> list[sqlite3.Row]:
                return db.execute(q, c).fetchall()

            for r in self.store.read(select):
                try:
                    outcome = outcome_of(JobState(r["state"]))
                except ValueError:
                    outcome = None
                if outcome is not None:
                    found[r["id"]] = outcome
        return found

    def queues(self) -> dict[str, Queue]:
        rows = self.store.read(lambda db: db.execute("SELECT * FROM queues").fetchall())
        return {r["name"]: Queue(r["name"], float(r["weight"]), r["max_running"]) for r in rows}

    def set_queue(self, name: str, weight: float, max_running: int | None) -> None:
        with self.store.transaction() as db:
            db.execute("INSERT INTO queues (name, weight, max_running) VALUES (?, ?, ?) ON "
                       "CONFLICT (name) DO UPDATE SET weight = excluded.weight, "
                       "max_running = excluded.max_running", (name, weight, max_running))

    def usage(self) -> dict[str, float]:
        """Scaled usage per user and ``queue:NAME`` (ratios are what the policy reads)."""
        rows = self.store.read(lambda db: db.execute("SELECT * FROM queue_usage").fetchall())
        return {r["key"]: float(r["value"]) for r in rows if r["key"] != EPOCH_KEY}

    def decayed_usage(self, now: float) -> dict[str, float]:
        """Usage per key as of ``now``, in CPU-seconds (for ``corral queue``)."""
        rows = self.store.read(lambda db: db.execute("SELECT * FROM queue_usage").fetchall())
        values = {r["key"]: float(r["value"]) for r in rows}
        epoch = values.pop(EPOCH_KEY, now)
        decay = 2.0 ** (-(now - epoch) / self.half_life)
        return {k: v * decay for k, v in values.items()}

    def state(self, rows: Sequence[Row], node: Node, now: float, no_limit: float) -> QueueState:
        pending = tuple(r.pending(no_limit) for r in rows if r.phase == WAITING)
        running = tuple(r.running(no_limit, now) for r in rows
                        if r.phase in (DISPATCHED, RUNNING) and r.placement is not None)
        return QueueState(nodes=(node,), pending=pending, running=running,
                          outcomes=self.outcomes(rows), queues=self.queues(),
                          usage=self.usage())

    # -- dispatching -------------------------------------------------------------------------

    def dispatch(self, starts: Mapping[str, tuple[str, dict[str, Any]]], now: float) -> set[str]:
        """Mark waiting entries dispatched (token, placement); the ids that were."""
        done: set[str] = set()
        with self.store.transaction() as db:
            for job_id, (token, placement) in starts.items():
                cursor = db.execute(
                    "UPDATE queue SET phase = ?, token = ?, dispatched = ?, placement = ? "
                    "WHERE job_id = ? AND phase = ?",
                    (DISPATCHED, token, now, json.dumps(placement), job_id, WAITING))
                if cursor.rowcount:
                    db.execute("UPDATE jobs SET reason = ?, updated = ? WHERE id = ? AND "
                               "state = ?", ("starting", now, job_id, JobState.PENDING.value))
                    done.add(job_id)
        return done

    def set_reasons(self, reasons: Mapping[str, str], now: float) -> None:
        """Each waiting job's reason, written only where it changed."""
        if not reasons:
            return
        with self.store.transaction() as db:
            db.executemany(
                "UPDATE jobs SET reason = ?, updated = ? WHERE id = ? AND state = ? AND "
                "reason != ?", [(why, now, job_id, JobState.PENDING.value, why)
                                for job_id, why in reasons.items()])

    def claim(self, job_id: str, token: str, owner: Owner) -> Row | None:
        """Take a dispatched entry (the token must match); its row, or None if revoked."""
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE queue SET phase = ? WHERE job_id = ? AND phase = ? AND token = ?",
                (RUNNING, job_id, DISPATCHED, token))
            if not cursor.rowcount:
                return None
            db.execute("UPDATE jobs SET owner_pid = ?, owner_start = ? WHERE id = ?",
                       (owner.pid, owner.start, job_id))
        return self.row(job_id)

    def revoke(self, job_id: str, token: str) -> bool:
        """Take back a dispatch that nobody claimed; False if it was claimed meanwhile."""
        with self.store.transaction() as db:
            cursor = db.execute(
                "UPDATE queue SET phase = ?, token = NULL, dispatched = NULL, placement = NULL"
                " WHERE job_id = ? AND phase = ? AND token = ?",
                (WAITING, job_id, DISPATCHED, token))
            return bool(cursor.rowcount)

    def mark_preempting(self, job_id: str, for_job: str, now: float) -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE queue SET preempt_at = ?, preempt_for = ? WHERE job_id = ? AND "
                       "preempt_at IS NULL", (now, for_job, job_id))

    # -- ending ------------------------------------------------------------------------------

    def _charge(self, db: sqlite3.Connection, row: Row, amount: float, now: float) -> None:
        if amount <= 0:
            return
        epoch_row = db.execute("SELECT value FROM queue_usage WHERE key = ?",
                               (EPOCH_KEY,)).fetchone()
        if epoch_row is None:
            epoch = now
            db.execute("INSERT INTO queue_usage (key, value) VALUES (?, ?)", (EPOCH_KEY, now))
        else:
            epoch = float(epoch_row["value"])
        scaled = amount * 2.0 ** ((now - epoch) / self.half_life)
        if not math.isfinite(scaled):
            return
        for key in (row.user, QUEUE_PREFIX + row.queue, TOTAL_USERS, TOTAL_QUEUES):
            db.execute("INSERT INTO queue_usage (key, value) VALUES (?, ?) ON CONFLICT (key) "
                       "DO UPDATE SET value = value + excluded.value", (key, scaled))

    def _requeue_rows(self, db: sqlite3.Connection, row: Row, retries: int, amount: float,
                      now: float) -> None:
        self._charge(db, row, amount, now)
        db.execute("UPDATE queue SET phase = ?, token = NULL, dispatched = NULL, "
                   "placement = NULL, preempt_at = NULL, preempt_for = NULL, "
                   "charged_until = NULL, retries_left = ? WHERE job_id = ?",
                   (WAITING, retries, row.job_id))
        db.execute("UPDATE jobs SET owner_pid = NULL, owner_start = NULL, started = NULL, "
                   "engine_id = NULL WHERE id = ?", (row.job_id,))

    def _close_rows(self, db: sqlite3.Connection, row: Row, state: JobState, amount: float,
                    now: float) -> None:
        outcome = outcome_of(state)
        cursor = db.execute("UPDATE queue SET phase = ?, outcome = ? WHERE job_id = ? AND "
                            "phase != ?", (DONE, outcome.value if outcome else None,
                                           row.job_id, DONE))
        if cursor.rowcount:
            self._charge(db, row, amount, now)

    @staticmethod
    def _again(row: Row, state: JobState, reason: str) -> tuple[str, int] | None:
        """Why and with how many retries left the job goes back in line, or None."""
        if row.preempt_at is not None and state is JobState.CANCELLED and "preempted" in reason:
            return f"requeued: preempted for job {row.preempt_for}", row.retries_left
        if state in (JobState.FAILED, JobState.TIMEOUT) and row.retries_left > 0:
            left = row.retries_left - 1
            return (f"requeued after attempt {row.attempt} {state.value.lower()} ({reason}); "
                    f"{left} retries left"), left
        return None

    @staticmethod
    def _amount(row: Row, started: float | None, finished: float) -> float:
        """What is left to charge: from the start (or the last charge) to ``finished``."""
        since = max(started or 0.0, row.charged_until or 0.0)
        ran = max(0.0, finished - since) if started else 0.0
        return ran * (row.request.cpus + GPU_BILLING * row.request.gpus) * row.request.nodes

    def charge_running(self, rows: Sequence[Row], now: float) -> None:
        """Charge running jobs for the time since their last charge, so that a long job
        weighs on its user's fair share while it runs, not only once it ends."""
        running = [r for r in rows if r.phase == RUNNING and r.started
                   and not r.job_state.is_terminal()]
        if not running:
            return
        with self.store.transaction() as db:
            for row in running:
                self._charge(db, row, self._amount(row, row.started, now), now)
                db.execute("UPDATE queue SET charged_until = ? WHERE job_id = ?",
                           (now, row.job_id))

    def ending(self, job_id: str, observed: Observation
               ) -> tuple[Observation, Callable[[sqlite3.Connection, bool], None] | None]:
        """How the supervisor of a queued job records its end, in one transaction: as
        observed (and the entry closed, usage charged), or queued again at once (a
        preemption, a failure with retries left) so that no reader sees it end first."""
        row = self.row(job_id)
        if row is None:
            return observed, None
        now = time.time()
        amount = self._amount(row, row.started, observed.finished or now)
        again = self._again(row, observed.state, observed.reason)
        if again is None:
            def close(db: sqlite3.Connection, moved: bool) -> None:
                if moved:
                    self._close_rows(db, row, observed.state, amount, now)
            return observed, close
        why, retries = again

        def requeue(db: sqlite3.Connection, moved: bool) -> None:
            if moved:
                self._requeue_rows(db, row, retries, amount, now)

        ranks = tuple(replace(r, state=JobState.PENDING, returncode=None, pid=None)
                      for r in observed.ranks or ())
        return Observation(JobState.PENDING, why, engine_attempt=row.attempt + 1,
                           ranks=ranks or None, notes=observed.notes), requeue

    def finish(self, row: Row, record: JobRecord, now: float) -> bool:
        """A dispatched/running entry whose job ended without its supervisor closing it
        (it died, or the job was cancelled before it started): close the entry, or queue
        the job again. Returns True if it was queued again."""
        amount = self._amount(row, record.started, record.finished or now)
        # A foreground job whose `corral run` is gone has nobody left to run it again.
        again = None if row.foreground else self._again(row, record.state, record.reason)
        if again is not None:
            why, retries = again

            def requeue(db: sqlite3.Connection, moved: bool) -> None:
                if moved:
                    self._requeue_rows(db, row, retries, amount, now)

            _, moved = self.store.apply(row.job_id, Observation(
                JobState.PENDING, why, engine_attempt=record.attempt + 1), Source.ENGINE,
                also=requeue)
            return moved
        with self.store.transaction() as db:
            self._close_rows(db, row, record.state, amount, now)
        return False

    def cancel_waiting(self, job_id: str, reason: str, source: Source) -> bool:
        """End an entry that has not started (nothing runs): CANCELLED, closed."""
        def close(db: sqlite3.Connection, moved: bool) -> None:
            if moved:
                db.execute("UPDATE queue SET phase = ?, outcome = ? WHERE job_id = ?",
                           (DONE, Outcome.FAILED.value, job_id))

        row = self.row(job_id)
        if row is None or row.phase not in (WAITING, DISPATCHED):
            return False
        record, moved = self.store.apply(job_id, Observation(
            JobState.CANCELLED, reason, finished=time.time()), source, also=close)
        return moved and record.state is JobState.CANCELLED

    def set_held(self, job_id: str, held: bool) -> bool:
        with self.store.transaction() as db:
            cursor = db.execute("UPDATE queue SET held = ? WHERE job_id = ? AND phase = ?",
                                (int(held), job_id, WAITING))
            return bool(cursor.rowcount)

    def check_owner(self, job_id: str, uid: int) -> Row:
        """The job's entry, if ``uid`` may act on it (its submitter, or root)."""
        row = self.row(job_id)
        if row is None:
            raise JobNotFound(f"job {job_id!r} is not in the queue")
        if uid not in (0, row.uid):
            raise PermissionDenied(f"job {job_id} belongs to user {row.user} (uid {row.uid});"
                                   " only its owner or root may change it")
        return row
