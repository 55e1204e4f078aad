"""A FAKE of the Azure Batch REST API, for corral's tests: a small threaded HTTP server on
loopback that answers the requests the official SDK (azure-batch 14.2) sends for corral's
backend, with a state machine that the test drives. It is not Azure Batch, runs nothing, and
checks only what it says below; what corral sends is checked against the SDK's schema by
corral itself (corral.backends.azure_batch.validate).

Endpoints (``?api-version=...`` is recorded, not checked)::

    GET    /pools/{pool}                                 a pool the test declared
    POST   /jobs                                         201; 409 JobExists
    GET    /jobs/{job}                                   CloudJob; 404 JobNotFound
    PATCH  /jobs/{job}                                   onAllTasksComplete, priority
    DELETE /jobs/{job}                                   202 (gone at once)
    POST   /jobs/{job}/terminate                         202; 409 JobCompleted
    POST   /jobs/{job}/tasks                             201; 409 TaskExists
    GET    /jobs/{job}/tasks/{task}                      CloudTask
    GET    /jobs/{job}/tasks/{task}/subtasksinfo         the subtasks (ids 1..N-1)
    GET    /jobs/{job}/tasks/{task}/files/{path}         the primary's files (ocp-range)
    GET    /pools/{pool}/nodes/{node}/files/{path}       a node's files (a subtask's log)

Authentication: a request must carry ``Authorization: SharedKey ACCOUNT:SIGNATURE`` for the
fake's account name (else 403 AuthenticationFailed); the signature is NOT verified.

States (a test moves them; Azure's own rules where the fake implements them)::

    task:    active -> preparing -> running -> completed     (active -> running allowed)
    subtask:              preparing -> running -> completed
    job:     active -> terminating -> completed; deleted

``terminate`` completes the job at once: a running task completes with failureInfo
``TaskEnded`` and its subtasks with it; an active task stays active (as Azure leaves it).
``PATCH onAllTasksComplete=terminatejob`` completes the job when its task has completed.
A test injects one-shot failures with :meth:`FakeAzureBatch.fail_next`.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

TASK_STATES = {"active": {"preparing", "running"}, "preparing": {"running"},
               "running": {"completed"}, "completed": set()}
SUBTASK_STATES = {"preparing": {"running"}, "running": {"completed"}, "completed": set()}


def _when(stamp: float | None = None) -> str:
    stamp = time.time() if stamp is None else stamp
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1000):03d}Z"


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeTask:
    body: dict[str, Any]
    state: str = "active"
    nodes: list[str] = field(default_factory=list)  # the primary's first
    exit_code: int | None = None
    failure: dict[str, Any] | None = None
    started: float | None = None
    ended: float | None = None
    subtasks: dict[int, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # the primary's, by path


@dataclass
class FakeJob:
    body: dict[str, Any]
    state: str = "active"
    terminate_reason: str | None = None
    created: float = field(default_factory=time.time)
    ended: float | None = None
    tasks: dict[str, FakeTask] = field(default_factory=dict)


class FakeAzureBatch:
    """A fake Azure Batch account on 127.0.0.1 (see the module's docstring)."""

    def __init__(self, account: str = "fakeaccount", port: int = 0) -> None:
        self.account = account
        self.pools: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, FakeJob] = {}
        self.node_files: dict[tuple[str, str, str], bytes] = {}
        self.seen: list[Seen] = []
        self._failures: list[tuple[str, str, int, str]] = []
        self.lock = threading.RLock()
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeAzureBatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- what the test declares and drives ------------------------------------------------

    def add_pool(self, pool_id: str, nodes: int = 2, inter_node: bool = True,
                 slots: int = 1, containers: bool = True) -> None:
        vm: dict[str, Any] = {"imageReference": {"publisher": "microsoft-dsvm", "offer":
                                                 "ubuntu-hpc", "sku": "2204"},
                              "nodeAgentSKUId": "batch.node.ubuntu 22.04"}
        if containers:
            vm["containerConfiguration"] = {"type": "dockerCompatible"}
        self.pools[pool_id] = {
            "id": pool_id, "vmSize": "standard_nc24ads_a100_v4", "state": "active",
            "allocationState": "steady", "enableInterNodeCommunication": inter_node,
            "taskSlotsPerNode": slots, "targetDedicatedNodes": nodes,
            "currentDedicatedNodes": nodes, "enableAutoScale": False,
            "virtualMachineConfiguration": vm}

    def fail_next(self, method: str, pattern: str, status: int, code: str,
                  message: str = "injected by the test") -> None:
        """The next request whose method and path (re.search) match fails so, once."""
        with self.lock:
            self._failures.append((method, pattern, status, code + "\n" + message))

    def task(self, job_id: str, task_id: str = "corral") -> FakeTask:
        return self.jobs[job_id].tasks[task_id]

    def move(self, job_id: str, state: str, task_id: str = "corral") -> None:
        """The task to ``state`` (preparing, running), its nodes assigned when it runs."""
        with self.lock:
            task = self.task(job_id, task_id)
            assert state in TASK_STATES[task.state], f"task {task.state} -> {state}"
            task.state = state
            if state == "running":
                pool = self.jobs[job_id].body["poolInfo"]["poolId"]
                count = task.body.get("multiInstanceSettings", {}).get("numberOfInstances", 1)
                task.nodes = [f"tvm-{pool}-{i}" for i in range(count)]
                task.started = time.time()
                task.subtasks = {i: {"state": "running", "started": task.started}
                                 for i in range(1, count)}

    def finish(self, job_id: str, exit_code: int, subtask_codes: dict[int, int] | None = None,
               failure: dict[str, Any] | None = None, task_id: str = "corral") -> None:
        """The task completes with the primary's ``exit_code``; each subtask with its own
        (0 unless given), and the job too if it is to end with its tasks."""
        with self.lock:
            task = self.task(job_id, task_id)
            assert "completed" in TASK_STATES[task.state], f"task {task.state} -> completed"
            self._complete(self.jobs[job_id], task, exit_code, failure, subtask_codes or {})

    def _complete(self, job: FakeJob, task: FakeTask, exit_code: int,
                  failure: dict[str, Any] | None, subtask_codes: dict[int, int]) -> None:
        task.state, task.exit_code, task.ended = "completed", exit_code, time.time()
        if exit_code and failure is None:
            failure = {"category": "usererror", "code": "FailureExitCode",
                       "message": "The task process exited with an unexpected exit code"}
        task.failure = failure
        for number, sub in task.subtasks.items():
            assert "completed" in SUBTASK_STATES[sub["state"]]
            sub.update(state="completed", ended=task.ended,
                       exit_code=subtask_codes.get(number, 0))
        if job.body.get("onAllTasksComplete") == "terminatejob" and job.state == "active":
            job.state, job.terminate_reason, job.ended = "completed", "AllTasksComplete", \
                time.time()

    def set_output(self, job_id: str, node: int, text: str, task_id: str = "corral") -> None:
        """What a node wrote: node 0 the primary's stdout.txt, node k subtask k's agent log."""
        with self.lock:
            task = self.task(job_id, task_id)
            if node == 0:
                task.files["stdout.txt"] = text.encode()
            else:
                pool = self.jobs[job_id].body["poolInfo"]["poolId"]
                root = self._root(job_id, task_id, node)
                self.node_files[(pool, task.nodes[node], f"{root}/wd/corral-node.log")] = (
                    text.encode())

    @staticmethod
    def _root(job_id: str, task_id: str, subtask: int) -> str:
        return f"workitems/{job_id}/job-1/{task_id}" + (f"/{subtask}" if subtask else "")

    def requests(self, method: str | None = None) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if method is None or s.method == method]

    # -- the REST API ---------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               headers: dict[str, str], body: Any) -> tuple[int, Any]:
        with self.lock:
            self.seen.append(Seen(method, path, query, headers, copy.deepcopy(body)))
            for i, (m, pattern, status, said) in enumerate(self._failures):
                if m == method and re.search(pattern, path):
                    del self._failures[i]
                    code, message = said.split("\n", 1)
                    return status, self._error(code, message)
            auth = headers.get("authorization", "")
            if not auth.startswith(f"SharedKey {self.account}:"):
                return 403, self._error("AuthenticationFailed", "Server failed to authenticate "
                                        "the request (the fake checks the account name only)")
            return self._route(method, [unquote(p) for p in path.strip("/").split("/")],
                               headers, body)

    def _error(self, code: str, message: str) -> dict[str, Any]:
        return {"odata.metadata": f"{self.url}/$metadata#Microsoft.Azure.Batch.Protocol."
                                  "Entities.Container.errors/@Element",
                "code": code, "message": {"lang": "en-US", "value": message}}

    def _route(self, method: str, parts: list[str], headers: dict[str, str],
               body: Any) -> tuple[int, Any]:
        if parts[0] == "pools" and len(parts) == 2 and method == "GET":
            pool = self.pools.get(parts[1])
            return (200, pool) if pool else (404, self._error("PoolNotFound", "no such pool"))
        if parts[0] == "pools" and len(parts) >= 5 and parts[2] == "nodes" and \
                parts[4] == "files":
            data = self.node_files.get((parts[1], parts[3], "/".join(parts[5:])))
            return self._file(data, headers)
        if parts == ["jobs"] and method == "POST":
            if body["id"] in self.jobs:
                return 409, self._error("JobExists", "The specified job already exists.")
            self.jobs[body["id"]] = FakeJob(body=body)
            return 201, None
        if parts[0] != "jobs" or len(parts) < 2:
            return 404, self._error("ResourceNotFound", f"the fake has no /{'/'.join(parts)}")
        job = self.jobs.get(parts[1])
        if job is None:
            return 404, self._error("JobNotFound", "The specified job does not exist.")
        rest = parts[2:]
        if not rest:
            if method == "GET":
                return 200, self._job_json(job)
            if method == "PATCH":
                job.body.update({k: v for k, v in body.items() if v is not None})
                task = job.tasks.get("corral")
                if body.get("onAllTasksComplete") == "terminatejob" and task is not None and \
                        task.state == "completed" and job.state == "active":
                    job.state, job.terminate_reason = "completed", "AllTasksComplete"
                return 200, None
            if method == "DELETE":
                del self.jobs[parts[1]]
                return 202, None
        if rest == ["terminate"] and method == "POST":
            if job.state != "active":
                return 409, self._error("JobCompleted", "The specified job is already in a "
                                        "completed state.")
            job.state, job.ended = "completed", time.time()
            job.terminate_reason = (body or {}).get("terminateReason") or "UserTerminate"
            for task in job.tasks.values():
                if task.state in ("running", "preparing"):
                    self._complete(job, task, 137, {"category": "usererror", "code":
                                                    "TaskEnded", "message": "Task Was Ended "
                                                    "by User Request"}, {})
            return 202, None
        if rest == ["tasks"] and method == "POST":
            if job.state != "active":
                return 409, self._error("JobCompleted", "The job is completed.")
            if body["id"] in job.tasks:
                return 409, self._error("TaskExists", "The specified task already exists.")
            job.tasks[body["id"]] = FakeTask(body=body)
            return 201, None
        if len(rest) >= 2 and rest[0] == "tasks" and rest[1] in job.tasks:
            task = job.tasks[rest[1]]
            if len(rest) == 2 and method == "GET":
                return 200, self._task_json(parts[1], rest[1], job, task)
            if rest[2:] == ["subtasksinfo"] and method == "GET":
                return 200, {"value": [self._subtask_json(parts[1], rest[1], job, task, n, s)
                                       for n, s in sorted(task.subtasks.items())]}
            if len(rest) >= 4 and rest[2] == "files" and method == "GET":
                return self._file(task.files.get("/".join(rest[3:])), headers)
        if len(rest) >= 2 and rest[0] == "tasks":
            return 404, self._error("TaskNotFound", "The specified task does not exist.")
        return 404, self._error("ResourceNotFound", f"the fake has no /{'/'.join(parts)}")

    def _file(self, data: bytes | None, headers: dict[str, str]) -> tuple[int, Any]:
        if data is None:
            return 404, self._error("FileNotFound", "The specified file does not exist.")
        wanted = re.match(r"bytes=(\d+)-", headers.get("ocp-range", ""))
        return 200, data[int(wanted.group(1)):] if wanted else data

    def _job_json(self, job: FakeJob) -> dict[str, Any]:
        data = {k: v for k, v in job.body.items()
                if k in ("id", "displayName", "priority", "poolInfo", "onAllTasksComplete",
                         "onTaskFailure", "metadata", "constraints")}
        data.update(state=job.state, creationTime=_when(job.created),
                    stateTransitionTime=_when(), executionInfo={
                        "startTime": _when(job.created),
                        "poolId": job.body["poolInfo"]["poolId"]})
        if job.ended is not None:
            data["executionInfo"]["endTime"] = _when(job.ended)
        if job.terminate_reason:
            data["executionInfo"]["terminateReason"] = job.terminate_reason
        return data

    def _node_json(self, job_id: str, task_id: str, job: FakeJob, node: str,
                   subtask: int) -> dict[str, Any]:
        pool = job.body["poolInfo"]["poolId"]
        root = self._root(job_id, task_id, subtask)
        return {"poolId": pool, "nodeId": node, "affinityId": f"TVM:{node}",
                "nodeUrl": f"{self.url}/pools/{pool}/nodes/{node}",
                "taskRootDirectory": root,
                "taskRootDirectoryUrl": f"{self.url}/pools/{pool}/nodes/{node}/files/{root}"}

    def _task_json(self, job_id: str, task_id: str, job: FakeJob,
                   task: FakeTask) -> dict[str, Any]:
        data = {k: v for k, v in task.body.items() if k != "environmentSettings"}
        data.update(state=task.state, stateTransitionTime=_when(), creationTime=_when(job.created),
                    environmentSettings=task.body.get("environmentSettings", []))
        info: dict[str, Any] = {"retryCount": 0, "requeueCount": 0}
        if task.started is not None:
            info["startTime"] = _when(task.started)
            data["nodeInfo"] = self._node_json(job_id, task_id, job, task.nodes[0], 0)
        if task.state == "completed":
            info.update(endTime=_when(task.ended), exitCode=task.exit_code,
                        result="failure" if task.failure else "success")
            if task.failure:
                info["failureInfo"] = task.failure
        data["executionInfo"] = info
        return data

    def _subtask_json(self, job_id: str, task_id: str, job: FakeJob, task: FakeTask,
                      number: int, sub: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] = {"id": number, "state": sub["state"],
                                "startTime": _when(sub["started"]),
                                "nodeInfo": self._node_json(job_id, task_id, job,
                                                            task.nodes[number], number)}
        if sub["state"] == "completed":
            data.update(endTime=_when(sub["ended"]), exitCode=sub["exit_code"],
                        result="failure" if sub["exit_code"] else "success")
            if sub["exit_code"]:
                data["failureInfo"] = {"category": "usererror", "code": "FailureExitCode",
                                       "message": "The subtask exited with an unexpected "
                                                  "exit code"}
        return data


class _Handler(BaseHTTPRequestHandler):
    owner: FakeAzureBatch
    protocol_version = "HTTP/1.1"

    def log_message(self, *_: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = self.owner.handle(self.command, split.path, parse_qs(split.query),
                                           headers, body)
        if isinstance(answer, bytes):
            data, kind = answer, "application/octet-stream"
        elif answer is None:
            data, kind = b"", ""
        else:
            data, kind = json.dumps(answer).encode(), "application/json;odata=minimalmetadata"
        self.send_response(status)
        if kind:
            self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "00000000-0000-0000-0000-000000000000")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve
