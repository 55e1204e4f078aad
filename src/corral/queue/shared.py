"""A queue shared by the users of one machine: a root agent that owns the store.

Root runs ``corral queue serve DIR`` (e.g. under systemd); users set ``CORRAL_HOME=DIR``.
The store there is readable by everyone (``corral ps`` lists every user's jobs, as squeue
does; environments are never in it) and writable by the agent alone. Every change is a
request on ``DIR/queue.sock``; the agent takes the caller's uid from the socket's peer
credentials (SO_PEERCRED), never from the request, and refuses to cancel, hold or release
another user's job unless the caller is root. Ranks run as the job's user; the agent and
each job's supervisor stay root, as slurmd and slurmstepd do.

What the agent never does as root: unpickle anything a user sent (a job arrives as JSON
and is validated by the spec model; distributed functions are refused here), give a user's
environment to a root process (it is applied only after a rank drops to the user), or run
Python with a user's directory on ``sys.path`` (``python -I``).

The protocol: one JSON line each way, with a version field.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from corral.errors import BackendError, SpecError
from corral.store import SHARED_MARKER

PROTOCOL = 1
SOCKET_NAME = "queue.sock"
MAX_REQUEST = 4 * 2**20
OPS = ("submit", "cancel", "hold", "release", "set_queue")


class SharedQueueError(BackendError):
    """The shared queue's agent refused a request or cannot be reached."""


@dataclass(frozen=True)
class Request:
    """What a client asks; ``spec`` is the JobSpec as JSON (never a pickle)."""

    op: str
    v: int = PROTOCOL
    job_ids: list[str] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    submission: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: bytes) -> Request:
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != PROTOCOL:
                raise ValueError(f"protocol version {data.get('v')!r}, expected {PROTOCOL}")
            if data.get("op") not in OPS:
                raise ValueError(f"unknown op {data.get('op')!r}")
            return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:
            raise SharedQueueError(f"a malformed request: {exc}") from None


@dataclass(frozen=True)
class Reply:
    ok: bool
    v: int = PROTOCOL
    job_ids: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    error: str = ""


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of the socket, as the kernel says."""

    pid: int
    uid: int
    gid: int


def peer_of(conn: socket.socket) -> Peer:
    data = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return Peer(pid, uid, gid)


def marker(home: Path) -> Path:
    return home / SHARED_MARKER


def is_shared(home: Path) -> bool:
    return marker(home).exists()


def read_line(sock: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    """One message: bytes up to and with a newline (or what came before the peer closed)."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise SharedQueueError(f"a message is limited to {limit} bytes")
    return data


def request(home: Path, req: Request, timeout: float = 60.0) -> Reply:
    """Send one request to the shared queue's agent and return its reply (raises the
    agent's refusal as SharedQueueError)."""
    path = str(home / SOCKET_NAME)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(asdict(req)).encode() + b"\n")
            data = read_line(sock)
    except OSError as exc:
        raise SharedQueueError(
            f"cannot reach the shared queue's agent at {path} ({exc.strerror or exc}); it is "
            "started by root with `corral queue serve`") from None
    try:
        reply = Reply(**json.loads(data))
    except (ValueError, TypeError):
        raise SharedQueueError(f"the shared queue's agent gave no answer to {req.op}") from None
    if not reply.ok:
        raise SharedQueueError(reply.error)
    return reply


def submission_json(submission: Any) -> dict[str, Any]:
    return {"after": [[d.kind.value, d.job_id] for d in submission.after],
            "array": None if submission.array is None else {
                "indices": list(submission.array.indices), "limit": submission.array.limit},
            "retries": submission.retries, "preemptible": submission.preemptible,
            "hold": submission.hold}


def submission_from_json(data: dict[str, Any]) -> Any:
    from corral.queue.model import Dependency, DependencyKind
    from corral.queue.submission import MAX_ARRAY_TASKS, ArrayTasks, Submission

    try:
        array = data.get("array")
        tasks = None
        if array is not None:
            indices = tuple(int(i) for i in array["indices"])
            if not indices or len(indices) > MAX_ARRAY_TASKS or min(indices) < 0:
                raise ValueError("array indices")
            limit = array.get("limit")
            tasks = ArrayTasks(indices, None if limit is None else int(limit))
        return Submission(
            after=tuple(Dependency(DependencyKind(k), str(i)) for k, i in data.get("after", [])),
            array=tasks, retries=int(data.get("retries", 0)),
            preemptible=bool(data.get("preemptible", False)), hold=bool(data.get("hold", False)))
    except (ValueError, TypeError, KeyError) as exc:
        raise SpecError([("submission", str(data)[:200], f"well-formed queue options ({exc})")]
                        ) from None


def user_name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def groups_of(uid: int, gid: int) -> list[int]:
    import pwd

    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return [gid]
