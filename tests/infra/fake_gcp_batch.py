"""A FAKE of GCP Batch's REST API (``batch.googleapis.com/v1``) on loopback, for tests.

Not Google's service and not an emulator of it: a small stdlib HTTP server that answers the
calls corral's gcp-batch backend makes through the official SDK (``BatchServiceClient`` with
the REST transport, anonymous credentials), with the wire format the SDK reads and writes:

=======  ================================================================  =============
method   path (under /v1/)                                                 answers
=======  ================================================================  =============
POST     projects/P/locations/L/jobs?jobId=ID                              the Job
GET      projects/P/locations/L/jobs/ID                                    the Job
GET      projects/P/locations/L/jobs                                       {"jobs": [...]}
POST     projects/P/locations/L/jobs/ID:cancel                             an Operation
DELETE   projects/P/locations/L/jobs/ID                                    an Operation
GET      projects/P/locations/L/jobs/ID/taskGroups/group0/tasks            {"tasks": [...]}
=======  ================================================================  =============

Errors come as Google's JSON error body (``{"error": {"code", "message", "status"}}``).
Nothing runs: a job's state moves only when the test says so, through one state machine::

    QUEUED -> SCHEDULED -> RUNNING -> SUCCEEDED | FAILED
       any unfinished state -> CANCELLATION_IN_PROGRESS (cancel) -> CANCELLED (next read)
       any state -> DELETION_IN_PROGRESS (delete) -> gone (the next read answers 404)

:meth:`FakeGcpBatch.set_task` sets one task's state with a status event carrying its exit
code, as Batch reports it (``Task state is updated from RUNNING to FAILED ... with exit
code 3``).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")
MOVES = {
    "QUEUED": {"SCHEDULED", "FAILED"},
    "SCHEDULED": {"RUNNING", "FAILED"},
    "RUNNING": {"SUCCEEDED", "FAILED"},
    "CANCELLATION_IN_PROGRESS": {"CANCELLED"},
}
ERROR_CODES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               409: "ALREADY_EXISTS", 500: "INTERNAL"}


class FakeError(Exception):
    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.status = code, status or ERROR_CODES.get(code, "UNKNOWN")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class FakeGcpBatch:
    """The fake service: its jobs, the requests it got, and the test's levers."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}  # full resource name -> Job JSON
        self.requests: list[tuple[str, str, Any]] = []  # (method, path, body)
        self._lock = threading.Lock()
        self._uids = itertools.count(1)
        self._failures: list[FakeError] = []
        self._server: ThreadingHTTPServer | None = None

    # -- the test's levers ----------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeGcpBatch:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    code, body = 200, fake.handle(self.command, self.path, raw)
                except FakeError as exc:
                    code, body = exc.code, {"error": {"code": exc.code, "message": str(exc),
                                                      "status": exc.status}}
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def fail_next(self, code: int, message: str, status: str | None = None) -> None:
        """The next request is answered with this error instead."""
        self._failures.append(FakeError(code, message, status))

    def job(self, job_id: str) -> dict[str, Any]:
        return self.jobs[self._name(job_id)]

    def advance(self, job_id: str, state: str, description: str = "") -> None:
        """Move a job along the state machine (ValueError for a move it does not allow).
        RUNNING starts every pending task; SUCCEEDED ends every task with exit code 0."""
        with self._lock:
            job = self.job(job_id)
            old = job["status"]["state"]
            if state not in MOVES.get(old, ()):
                raise ValueError(f"the fake's state machine has no move {old} -> {state}")
            self._set_job(job, state, description)
            for index, task in enumerate(self._tasks(job)):
                task_state = task["status"]["state"]
                if state == "RUNNING" and task_state in ("PENDING", "ASSIGNED"):
                    self._set_task(job, index, "RUNNING", None)
                if state == "SUCCEEDED" and task_state not in ("SUCCEEDED", "FAILED"):
                    self._set_task(job, index, "SUCCEEDED", 0)

    def set_task(self, job_id: str, index: int, state: str, exit_code: int | None = None,
                 at: float | None = None) -> None:
        """One task's state, with the status event Batch writes (its exit code, when)."""
        with self._lock:
            self._set_task(self.job(job_id), index, state, exit_code, at)

    # -- the service ----------------------------------------------------------------------

    def _name(self, job_id: str) -> str:
        found = [n for n in self.jobs if n == job_id or n.rsplit("/", 1)[-1] == job_id]
        if not found:
            raise KeyError(job_id)
        return found[0]

    @staticmethod
    def _tasks(job: dict[str, Any]) -> list[dict[str, Any]]:
        tasks: list[dict[str, Any]] = job["_tasks"]
        return tasks

    def _set_job(self, job: dict[str, Any], state: str, description: str = "") -> None:
        old = job["status"]["state"]
        job["status"]["state"] = state
        job["updateTime"] = _now()
        job["status"].setdefault("statusEvents", []).append({
            "type": "STATUS_CHANGED", "eventTime": _now(),
            "description": description or f"Job state is set from {old} to {state} for job "
            f"{job['name']}."})

    def _set_task(self, job: dict[str, Any], index: int, state: str, code: int | None,
                  at: float | None = None) -> None:
        task = self._tasks(job)[index]
        old = task["status"]["state"]
        when = datetime.fromtimestamp(at, timezone.utc).strftime(
            "%Y-%m-%dT%H:%M:%S.%fZ") if at is not None else _now()
        event: dict[str, Any] = {
            "type": "STATUS_CHANGED", "eventTime": when, "taskState": state,
            "description": f"Task state is updated from {old} to {state} on "
            f"zones/us-central1-a/instances/{1000 + index}" + (
                f" with exit code {code}." if code is not None else ".")}
        if code is not None:
            event["taskExecution"] = {"exitCode": code}
        task["status"]["state"] = state
        task["status"].setdefault("statusEvents", []).append(event)

    def _shown(self, name: str) -> dict[str, Any]:
        """A job as a read sees it, after the step that a read completes (cancel, delete)."""
        job = self.jobs.get(name)
        if job is None:
            raise FakeError(404, f'Resource "{name}" was not found')
        state = job["status"]["state"]
        if state == "DELETION_IN_PROGRESS" and job.get("_seen_deleting"):
            del self.jobs[name]
            raise FakeError(404, f'Resource "{name}" was not found')
        if state == "DELETION_IN_PROGRESS":
            job["_seen_deleting"] = True
        elif state == "CANCELLATION_IN_PROGRESS":
            self._set_job(job, "CANCELLED")
            for index, task in enumerate(self._tasks(job)):
                if task["status"]["state"] not in ("SUCCEEDED", "FAILED"):
                    self._set_task(job, index, "FAILED", None)
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _operation(self, name: str, verb: str) -> dict[str, Any]:
        where = name.split("/jobs/")[0]
        return {"name": f"{where}/operations/{verb}-{next(self._uids)}", "done": False}

    def handle(self, method: str, target: str, raw: bytes) -> Any:
        split = urlsplit(target)
        path = split.path.removeprefix("/v1/")
        query = parse_qs(split.query)
        body = json.loads(raw) if raw else None
        with self._lock:
            self.requests.append((method, path, body))
            if self._failures:
                raise self._failures.pop(0)
            parts = path.split("/")
            if len(parts) < 5 or parts[0] != "projects" or parts[2] != "locations" \
                    or parts[4].split(":")[0] != "jobs":
                raise FakeError(404, f"the fake has no {method} {split.path}")
            if len(parts) == 5 and method == "POST":
                return self._create(path, query.get("jobId", [""])[0], body)
            if len(parts) == 5 and method == "GET":
                return {"jobs": [self._shown(n) for n in list(self.jobs)
                                 if n.startswith(path + "/") and n in self.jobs]}
            if len(parts) == 6 and method == "POST" and parts[5].endswith(":cancel"):
                return self._cancel(path.removesuffix(":cancel"))
            if len(parts) == 6 and method == "GET":
                return self._shown(path)
            if len(parts) == 6 and method == "DELETE":
                return self._delete(path)
            if len(parts) == 9 and parts[6] == "taskGroups" and parts[8] == "tasks" \
                    and method == "GET":
                self._shown("/".join(parts[:6]))  # 404 for a job that is gone
                return {"tasks": self.jobs["/".join(parts[:6])]["_tasks"]}
        raise FakeError(404, f"the fake has no {method} {split.path}")

    def _create(self, where: str, job_id: str, job: Any) -> dict[str, Any]:
        if not job_id:
            raise FakeError(400, "job_id is required by this fake")
        name = f"{where}/{job_id}"
        if name in self.jobs:
            raise FakeError(409, f'Resource "{name}" already exists')
        groups = (job or {}).get("taskGroups") or []
        if len(groups) != 1 or int(groups[0].get("taskCount", 1)) < 1:
            raise FakeError(400, "the fake takes exactly one task group with taskCount >= 1")
        count = int(groups[0].get("taskCount", 1))
        group = f"{name}/taskGroups/group0"
        job = {**job, "name": name, "uid": f"{job_id[:40]}-{next(self._uids):05d}-fake",
               "createTime": _now(), "updateTime": _now(),
               "taskGroups": [{**groups[0], "name": group}],
               "status": {"state": "QUEUED", "statusEvents": [{
                   "type": "STATUS_CHANGED", "eventTime": _now(),
                   "description": f"Job state is set from QUEUED to QUEUED for job {name}."}]},
               "_tasks": [{"name": f"{group}/tasks/{i}", "status": {"state": "PENDING"}}
                          for i in range(count)],
               "_created": time.time()}
        self.jobs[name] = job
        return {k: v for k, v in job.items() if not k.startswith("_")}

    def _delete(self, name: str) -> dict[str, Any]:
        job = self.jobs.get(name)
        if job is None:
            raise FakeError(404, f'Resource "{name}" was not found')
        if job["status"]["state"] != "DELETION_IN_PROGRESS":
            self._set_job(job, "DELETION_IN_PROGRESS")
        return self._operation(name, "delete")

    def _cancel(self, name: str) -> dict[str, Any]:
        job = self.jobs.get(name)
        if job is None:
            raise FakeError(404, f'Resource "{name}" was not found')
        state = job["status"]["state"]
        if state in TERMINAL or state in ("CANCELLATION_IN_PROGRESS", "DELETION_IN_PROGRESS"):
            raise FakeError(400, f"Job {name} is in state {state} and cannot be cancelled",
                            "FAILED_PRECONDITION")
        self._set_job(job, "CANCELLATION_IN_PROGRESS")
        return self._operation(name, "cancel")
