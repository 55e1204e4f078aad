"""Flow runs and their tasks in the job store (tables ``flow_runs`` and ``flow_tasks``).

A run is written by the process that runs it (``corral flow run`` / ``resume``); a task's
row points at the corral job that ran it, so its logs and failure summary are the job's.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError
from corral.store import Owner, Store, _user

RUNNING, SUCCEEDED, FAILED = "RUNNING", "SUCCEEDED", "FAILED"
PENDING, CLONED = "PENDING", "CLONED"


class FlowRunNotFound(CorralError):
    """No flow run with that id (or no run of that flow) is recorded."""


@dataclass(frozen=True)
class RunRecord:
    id: str
    flow: str
    file: str
    user: str
    params: dict[str, Any]
    state: str
    reason: str
    datastore: str
    origin: str | None
    created: float
    finished: float | None
    owner: Owner | None = None

    @property
    def lost(self) -> bool:
        """Recorded RUNNING, but the process that ran it is gone (killed, or its machine
        restarted): nothing will finish it; ``corral flow resume`` picks it up."""
        return self.state == RUNNING and self.owner is not None and not self.owner.alive()

    @property
    def shown_state(self) -> str:
        return "LOST" if self.lost else self.state


@dataclass(frozen=True)
class TaskRecord:
    run_id: str
    step: str
    task_id: str
    state: str
    job_id: str | None
    attempt: int
    cloned_from: str | None
    reason: str
    started: float | None
    finished: float | None


def _run(row: sqlite3.Row) -> RunRecord:
    owner = (Owner(int(row["owner_pid"]), float(row["owner_start"] or 0))
             if row["owner_pid"] is not None else None)
    return RunRecord(row["id"], row["flow"], row["file"], row["user"],
                     json.loads(row["params"] or "{}"), row["state"], row["reason"] or "",
                     row["datastore"], row["origin"], float(row["created"]), row["finished"],
                     owner)


def _task(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(row["run_id"], row["step"], row["task_id"], row["state"], row["job_id"],
                      int(row["attempt"]), row["cloned_from"], row["reason"] or "",
                      row["started"], row["finished"])


class FlowRecords:
    """Read and write flow runs in one job store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create_run(self, run_id: str, flow: str, file: str, params: Mapping[str, Any],
                   datastore: str, origin: str | None = None) -> RunRecord:
        owner = Owner.me()
        with self.store.transaction() as db:
            db.execute("INSERT INTO flow_runs (id, flow, file, user, params, state, datastore, "
                       "origin, created, owner_pid, owner_start) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (run_id, flow, file, _user(), json.dumps(dict(params), default=str),
                        RUNNING, datastore, origin, time.time(), owner.pid, owner.start))
        return self.run(run_id)

    def finish_run(self, run_id: str, state: str, reason: str = "") -> None:
        with self.store.transaction() as db:
            db.execute("UPDATE flow_runs SET state = ?, reason = ?, finished = ? WHERE id = ?",
                       (state, reason, time.time(), run_id))

    def set_task(self, run_id: str, step: str, task_id: str, state: str, *,
                 job_id: str | None = None, attempt: int | None = None,
                 cloned_from: str | None = None, reason: str = "") -> None:
        now = time.time()
        done = state in (SUCCEEDED, FAILED, CLONED)
        with self.store.transaction() as db:
            db.execute(
                "INSERT INTO flow_tasks (run_id, step, task_id, state, job_id, attempt, "
                "cloned_from, reason, started, finished) VALUES (?,?,?,?,?,?,?,?,?,?) "
                "ON CONFLICT (run_id, step, task_id) DO UPDATE SET state = excluded.state, "
                "job_id = COALESCE(excluded.job_id, job_id), "
                "attempt = COALESCE(?, attempt), reason = excluded.reason, "
                "finished = excluded.finished",
                (run_id, step, task_id, state, job_id, attempt or 1, cloned_from, reason,
                 now, now if done else None, attempt))

    def run(self, run_id: str) -> RunRecord:
        row = self.store.read(lambda db: db.execute(
            "SELECT * FROM flow_runs WHERE id = ?", (run_id,)).fetchone())
        if row is None:
            raise FlowRunNotFound(f"no flow run {run_id!r}; `corral flow ls` lists them")
        return _run(row)

    def runs(self, flow: str | None = None) -> list[RunRecord]:
        where, params = ("WHERE flow = ?", (flow,)) if flow else ("", ())
        rows = self.store.read(lambda db: db.execute(
            f"SELECT * FROM flow_runs {where} ORDER BY created DESC, id", params).fetchall())
        return [_run(r) for r in rows]

    def tasks(self, run_id: str, step: str | None = None) -> list[TaskRecord]:
        where, params = ("AND step = ?", (run_id, step)) if step else ("", (run_id,))
        rows = self.store.read(lambda db: db.execute(
            f"SELECT * FROM flow_tasks WHERE run_id = ? {where} ORDER BY started, task_id",
            params).fetchall())
        return [_task(r) for r in rows]
