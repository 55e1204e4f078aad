"""The queue's agent: one per job store, started by the first submission, gone when idle.

``python -m corral.queue.agent STORE`` holds ``queue-agent.lock`` beside the store for as
long as it lives (so at most one runs, and a killed one frees it at once). Its loop is a
scheduling pass (:class:`Scheduler`), then a wait on a wake-up socket (submitters, jobs
that end and ``corral cancel`` nudge it) or a short timeout. Everything it knows is in the
store: SIGKILL it at any moment and the next agent carries on (see :mod:`ledger`).

Dispatched jobs are started by a forked child of the agent (``start_job`` in its own
session): the agent never waits for a job, and a job never depends on the agent living.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from corral.queue.ledger import DISPATCHED, RUNNING, WAITING, Ledger, Row, share_to_json
from corral.queue.machine import NO_LIMIT, Machine, probe
from corral.queue.policy import DEFAULT_POLICY, Policy, policy_named, schedule
from corral.states import Source
from corral.store import Store, open_store

CLAIM_SECONDS = 30.0  # a dispatch nobody claimed by then is taken back
CHARGE_SECONDS = 30.0  # how often running jobs are charged to their users' fair share
WAKE_SECONDS = 1.0  # the longest an agent sleeps between passes
DEFAULT_IDLE = 60.0
DEFAULT_PREEMPT_GRACE = 30.0


def _lock_path(store: Store, name: str) -> Path:
    return store.path.parent / name


def wake_address(store: Store) -> bytes:
    """The agent's wake-up socket: an abstract name, so a long CORRAL_HOME path is fine.
    A datagram there only means "look at the store"; it carries nothing to trust."""
    digest = hashlib.sha1(str(store.path.resolve()).encode()).hexdigest()[:20]
    return f"\0corral-queue-{digest}".encode()


def wake(store: Store) -> None:
    """Nudge the agent (nothing happens if none listens)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(b"w", wake_address(store))
    except OSError:
        pass


def _try_lock(path: Path) -> int | None:
    """An open fd holding an exclusive flock on ``path``, or None if another holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    return fd


def agent_running(store: Store) -> bool:
    fd = _try_lock(_lock_path(store, "queue-agent.lock"))
    if fd is None:
        return True
    os.close(fd)
    return False


def ensure_agent(store: Store) -> bool:
    """Start an agent for this store unless one runs; True if one was started. A shared
    queue's agent is root's service (``corral queue serve``): never started from here."""
    if store.shared or agent_running(store):
        return False
    try:
        with open(_lock_path(store, "queue-agent.log"), "ab") as log:
            subprocess.Popen([sys.executable, "-m", "corral.queue.agent", str(store.path)],
                             stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             start_new_session=True, cwd="/")
    except OSError as exc:  # the job stays queued: the next corral command tries again
        print(f"corral: warning: cannot start the queue agent ({exc}); queued jobs start "
              "once one runs (any `corral ps` or `corral wait` tries again)", file=sys.stderr)
        return False
    return True


@contextmanager
def pass_lock(store: Store) -> Iterator[int]:
    """Held during one scheduling pass (by the agent or a foreground ``corral run``)."""
    fd = os.open(_lock_path(store, "queue-pass.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _alive(row: Row) -> bool:
    return row.owner is not None and row.owner.alive()


def _seconds(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= 0 else default


@dataclass
class Scheduler:
    """One store's scheduling passes: reconcile what changed, schedule, dispatch, and
    start each dispatched background job in a forked child (a foreground job is started
    by its own `corral run`). ``close_fds``: the agent's own locks and sockets, which a
    forked job must not keep open."""

    store: Store
    machine: Machine
    policy: Policy = field(default_factory=lambda: policy_named(
        os.environ.get("CORRAL_QUEUE_POLICY", DEFAULT_POLICY)))
    preempt_grace: float = field(default_factory=lambda: _seconds(
        "CORRAL_QUEUE_PREEMPT_GRACE", DEFAULT_PREEMPT_GRACE))
    close_fds: tuple[int, ...] = ()
    charge_every: float = field(default_factory=lambda: _seconds(
        "CORRAL_QUEUE_CHARGE_SECONDS", CHARGE_SECONDS))

    def __post_init__(self) -> None:
        self.ledger = Ledger(self.store, self.policy.weights)
        self.charged = 0.0

    def run_pass(self, only: str | None = None, fork: bool = True) -> tuple[bool, set[str]]:
        """Reconcile, then schedule. With ``only``, dispatch that job alone (a foreground
        run's own pass; the agent starts the rest). Returns whether anything is live that
        is not held (held jobs alone let an agent go idle; `release` starts one), and
        the jobs dispatched."""
        now = time.time()
        rows = self.ledger.rows()
        if self._reconcile(rows, now):
            rows = self.ledger.rows()
        if only is None and now - self.charged >= self.charge_every:
            self.ledger.charge_running(rows, now)
            self.charged = now
            rows = self.ledger.rows()
        state = self.ledger.state(rows, self.machine.node, now, NO_LIMIT)
        decisions = schedule(state, now, self.policy)
        by_id = {row.job_id: row for row in rows}
        starts = {}
        for start in decisions.starts:
            if only is not None and start.job_id != only:
                continue
            placement = {"shares": [share_to_json(s) for s in start.placement],
                         "gpus": [self.machine.gpu_ids[i] for s in start.placement
                                  for i, _ in s.gpus if i < len(self.machine.gpu_ids)]}
            starts[start.job_id] = (secrets.token_hex(8), placement)
        dispatched = self.ledger.dispatch(starts, now)
        if only is None:
            self.ledger.set_reasons({job_id: reason.value for job_id, reason
                                     in decisions.reasons.items()}, now)
            for preemption in decisions.preemptions:
                self._preempt(by_id.get(preemption.victim), preemption.for_job, now)
        if fork:
            for job_id in dispatched:
                if not by_id[job_id].foreground:
                    self._start(job_id, starts[job_id][0])
        return any(not row.held for row in rows), dispatched

    # -- reconciling -------------------------------------------------------------------------

    def _reconcile(self, rows: list[Row], now: float) -> bool:
        """Close what ended, requeue what should run again, revoke stale dispatches, stop
        preempted jobs after their grace. True if anything changed."""
        changed = False
        owners_dead = []
        for row in rows:
            if row.phase == WAITING:
                if row.job_state.is_terminal():  # cancelled, or its foreground run died
                    changed |= self.ledger.cancel_waiting(row.job_id, row.reason,
                                                          Source.RECONCILE) or self._close(row)
                elif row.foreground and row.owner is not None and not _alive(row):
                    changed |= self.ledger.cancel_waiting(
                        row.job_id, f"its `corral run` (pid {row.owner.pid}) ended before "
                        "the job started", Source.RECONCILE)
                continue
            if row.job_state.is_terminal():
                self.ledger.finish(row, self.store.get(row.job_id), now)
                changed = True
            elif row.phase == DISPATCHED:
                if now - (row.dispatched or now) > CLAIM_SECONDS and row.token:
                    changed |= self.ledger.revoke(row.job_id, row.token)
            elif row.phase == RUNNING and not _alive(row):
                owners_dead.append(row)
            elif row.preempt_at is not None and now >= row.preempt_at + self.preempt_grace:
                self._stop_preempted(row)
        if owners_dead:
            from corral.backends.local.client import LocalBackend

            records = [self.store.get(row.job_id) for row in owners_dead]
            for job_id, seen in LocalBackend(store=self.store).describe_many(records).items():
                self.store.apply(job_id, seen, Source.RECONCILE)
                changed = True
        return changed

    def _close(self, row: Row) -> bool:
        self.ledger.finish(row, self.store.get(row.job_id), time.time())
        return True

    # -- preempting --------------------------------------------------------------------------

    def _preempt(self, row: Row | None, for_job: str, now: float) -> None:
        """Signal a preemptible job's ranks (SIGUSR1: checkpoint now); it is stopped after
        the grace period and queued again."""
        if row is None or row.preempt_at is not None:
            return
        self.ledger.mark_preempting(row.job_id, for_job, now)
        for rank in self.store.ranks(row.job_id):
            if rank.pid and not rank.state.is_terminal():
                try:
                    os.kill(rank.pid, signal.SIGUSR1)
                except OSError:
                    pass
        if self.preempt_grace == 0:
            self._stop_preempted(row, for_job)

    def _stop_preempted(self, row: Row, for_job: str | None = None) -> None:
        if row.run_dir and os.path.isdir(row.run_dir):
            marker = Path(row.run_dir) / "preempt"
            if not marker.exists():
                marker.write_text(f"preempted for job {for_job or row.preempt_for}",
                                  encoding="utf-8")

    # -- starting ----------------------------------------------------------------------------

    def _start(self, job_id: str, token: str) -> None:
        """Fork a child that claims and runs the job in a session of its own."""
        pid = os.fork()
        if pid:
            return
        code = 1
        try:
            for fd in self.close_fds:
                os.close(fd)
            os.setsid()
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            from corral.queue.start import start_job

            code = start_job(self.store.path, job_id, token)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)


# -- the agent process ---------------------------------------------------------------------


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(store: Store, idle: float, shared: bool = False) -> int:
    """The agent's loop. ``shared``: serve requests from every user on the queue's socket
    and never exit when idle (see :mod:`corral.queue.shared`)."""
    lock = None
    for _ in range(10):  # a prober may hold the lock for an instant
        lock = _try_lock(_lock_path(store, "queue-agent.lock"))
        if lock is not None:
            break
        time.sleep(0.02)
    if lock is None:
        return 0  # another agent runs
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(wake_address(store))
    except OSError as exc:
        print(f"corral queue agent: cannot bind its wake-up socket ({exc}); polling",
              file=sys.stderr)
    os.set_inheritable(sock.fileno(), False)
    listener = _listen(store) if shared else None
    _lock_path(store, "queue-agent.pid").write_text(
        json.dumps({"pid": os.getpid(), "started": time.time()}), encoding="utf-8")
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    _warm_up()
    own_fds = (lock, sock.fileno(), *((listener.fileno(),) if listener else ()))
    scheduler = Scheduler(store, probe(), close_fds=own_fds)
    print(f"corral queue agent {os.getpid()}: {json.dumps(scheduler.machine.to_json())}, "
          f"policy {scheduler.policy.name}", file=sys.stderr, flush=True)
    last_busy = time.monotonic()
    while not stopping:
        with pass_lock(store) as fd:
            scheduler.close_fds = (*own_fds, fd)
            busy, _ = scheduler.run_pass()
        _reap()
        if busy or shared:
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy > idle:
            os.close(lock)  # then look once more: a submitter may have just missed us
            if all(row.held for row in scheduler.ledger.rows()):
                break
            again = _try_lock(_lock_path(store, "queue-agent.lock"))
            if again is None:
                break  # a new agent took over
            lock, last_busy = again, time.monotonic()
            continue
        _wait_for_news(sock, listener, store)
    sock.close()
    if listener is not None:
        listener.close()
    return 0


def _warm_up() -> None:
    """Import and build once, here, what every job's start needs (the spec's validators,
    the local backend's render and supervisor, cloudpickle): each forked start inherits
    them instead of paying for them again."""
    try:
        import cloudpickle  # noqa: F401

        from corral.backends.local.client import LocalBackend
        from corral.backends.local.supervisor import Supervisor  # noqa: F401
        from corral.spec import JobSpec

        spec = JobSpec(name="warm-up", entrypoint={"kind": "command", "argv": ["true"]},
                       workdir="/")
        LocalBackend().render(spec)
        JobSpec(**spec.model_dump(mode="json"))
    except Exception as exc:  # only slower starts follow
        print(f"corral queue agent: warm-up failed ({exc})", file=sys.stderr)


def _wait_for_news(sock: socket.socket, listener: socket.socket | None, store: Store) -> None:
    """Until a nudge, a request (answered here) or WAKE_SECONDS; then drain the nudges."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        if listener is not None:
            selector.register(listener, selectors.EVENT_READ)
        ready = selector.select(WAKE_SECONDS)
    for key, _ in ready:
        if key.fileobj is listener and listener is not None:
            from corral.queue.serve import answer

            answer(listener, store)
    sock.setblocking(False)
    try:
        while True:  # drain: one pass answers every nudge so far
            sock.recv(16)
    except OSError:
        pass


def _listen(store: Store) -> socket.socket:
    """The shared queue's request socket, open to every local user."""
    from corral.queue.shared import SOCKET_NAME

    path = store.path.parent / SOCKET_NAME
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    path.chmod(0o666)
    listener.listen(64)
    listener.setblocking(False)
    os.set_inheritable(listener.fileno(), False)
    return listener


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    store = open_store(Path(args[0]) if args else None)
    idle = _seconds("CORRAL_QUEUE_IDLE", DEFAULT_IDLE)
    return serve(store, idle, shared=store.shared)


if __name__ == "__main__":
    sys.exit(main())

