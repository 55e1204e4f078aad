"""The shared queue's agent side: set up its home, answer one request at a time.

Requests are answered inside the agent's single-threaded loop, between scheduling
passes; each is small (a job as JSON, a few ids). The caller's identity is the socket's
peer credentials; see :mod:`corral.queue.shared` for what is and is not trusted.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict
from pathlib import Path

from corral.errors import CorralError
from corral.queue.shared import (
    Peer,
    Reply,
    Request,
    marker,
    peer_of,
    read_line,
    submission_from_json,
)
from corral.states import Source
from corral.store import Store

READ_SECONDS = 5.0


def prepare_home(home: Path) -> None:
    """A corral home served by root: listed by all, changed only by the agent."""
    if os.geteuid() != 0:
        raise CorralError("a shared queue runs its jobs as their users, so its agent must "
                          "run as root (e.g. a systemd service running `corral queue serve`)")
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, 0, 0)
    home.chmod(0o755)
    runs = home / "runs"
    runs.mkdir(exist_ok=True)
    os.chown(runs, 0, 0)
    runs.chmod(0o711)  # each user reaches its own run directories, lists none
    marker(home).write_text(json.dumps({"socket": "queue.sock"}), encoding="utf-8")
    marker(home).chmod(0o644)


def answer(listener: socket.socket, store: Store) -> None:
    """Accept one connection, answer its request, close it."""
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return
    with conn:
        conn.settimeout(READ_SECONDS)
        try:
            peer = peer_of(conn)
            reply = handle(Request.from_json(read_line(conn)), peer, store)
        except CorralError as exc:
            reply = Reply(ok=False, error=str(exc))
        except OSError as exc:
            reply = Reply(ok=False, error=f"the request could not be read ({exc})")
        try:
            conn.sendall(json.dumps(asdict(reply)).encode() + b"\n")
        except OSError:
            pass


def handle(req: Request, peer: Peer, store: Store) -> Reply:
    """Do what ``peer`` asked, if it may."""
    from corral.queue.ledger import DISPATCHED, WAITING, Ledger

    ledger = Ledger(store)
    if req.op == "submit":
        return Reply(ok=True, job_ids=_submit(req, peer, store))
    if req.op == "set_queue":
        if peer.uid != 0:
            return Reply(ok=False, error="only root changes the shared queue's queues")
        data = req.queue
        ledger.set_queue(str(data["name"]), float(data["weight"]),
                         None if data.get("max_running") is None else int(data["max_running"]))
        return Reply(ok=True)
    messages = []
    for job_id in req.job_ids:
        row = ledger.check_owner(str(job_id), peer.uid)
        if req.op in ("hold", "release"):
            changed = ledger.set_held(row.job_id, req.op == "hold")
            messages.append(f"{row.job_id}: {req.op}{'ed' if req.op == 'hold' else 'd'}"
                            if changed else f"{row.job_id}: not waiting, unchanged")
        elif row.phase in (WAITING, DISPATCHED) and ledger.cancel_waiting(
                row.job_id, "cancelled while queued", Source.USER):
            messages.append(f"{row.job_id}: CANCELLED")
        elif row.run_dir and os.path.isdir(row.run_dir):
            (Path(row.run_dir) / "cancel").touch()  # its supervisor stops every rank
            messages.append(f"{row.job_id}: cancelling")
    return Reply(ok=True, job_ids=list(req.job_ids), messages=messages)


def _submit(req: Request, peer: Peer, store: Store) -> list[str]:
    from corral.backends.local.client import LocalBackend
    from corral.backends.local.options import LocalOptions
    from corral.errors import SpecError
    from corral.queue.client import enqueue
    from corral.spec import JobSpec

    entry = req.spec.get("entrypoint")
    if isinstance(entry, dict) and entry.get("kind") == "function":
        raise SpecError([("entrypoint", "function", "a script, module or command: a shared "
                          "queue does not unpickle a function as root")])
    spec = JobSpec(**req.spec)
    if not spec.workdir or not os.path.isabs(spec.workdir):
        raise SpecError([("workdir", spec.workdir, "an absolute path")])
    options = LocalOptions(**{k: v for k, v in req.options.items()
                              if k in LocalOptions.__dataclass_fields__})
    backend = LocalBackend(options=options, store=store, root=store.path.parent / "runs",
                           for_user=peer.uid)
    plan = backend.render(spec)
    return enqueue(backend, spec, plan, submission_from_json(req.submission), peer=peer,
                   environ={str(k): str(v) for k, v in req.environ.items()})
