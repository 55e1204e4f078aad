"""Run a rendered local plan: start one agent per emulated node, watch, fail fast, report.

The supervisor is the only place where the local backend has side effects on processes.
It runs inside ``corral run`` (foreground) or as its own process for ``submit``
(``python -m corral.backends.local.supervisor RUN_DIR STORE``), owns the job while it runs
(its PID and start time are in the job's record), and writes every change of the job and
its ranks to the job store, through the state machine, so that other processes
(``corral status``, handles) see them.

Fail fast: the first rank (or launcher) that exits non-zero stops the whole job: every
agent gets SIGTERM and passes it to its ranks; what still runs after the grace period is
SIGKILLed by process group. The agents are child subreapers, so nothing escapes.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from corral.backends.local.agents import identities, stop_agents
from corral.launchers.failures import first_failure
from corral.logs import LogFollower, LogSource
from corral.rundir import RunDir, tail_lines
from corral.runtime import procs
from corral.runtime.procs import describe_returncode
from corral.spec import JobState
from corral.states import Source
from corral.status import Failure, JobStatus, RankStatus
from corral.store import Observation, Owner, Store, open_store

POLL_SECONDS = 0.05
STOP_MARGIN_SECONDS = 5.0  # beyond the grace period, for an agent to finish stopping


@dataclass
class _Agent:
    node: int
    process: subprocess.Popen[bytes]
    stdout: IO[bytes]
    buffer: bytes = b""
    returncode: int | None = None
    fallback: str | None = None


@dataclass
class Supervisor:
    run: RunDir
    store: Store
    job_id: str
    plan: dict[str, Any]
    launcher: str
    grace: float = 1.0
    sink: Callable[[LogSource, str], None] | None = None
    agents: list[_Agent] = field(default_factory=list)
    _stop_reason: tuple[JobState, str] | None = None
    interrupted: bool = False  # stopped by request_cancel (Ctrl-C, SIGTERM)
    # How the end is recorded: the observation to apply, and more rows to write with it.
    ending: Callable[[Observation], tuple[Observation, Any]] | None = None
    # A shared queue's job: ranks run as this user (uid, gid, groups) with this environment.
    run_as: dict[str, Any] | None = None
    user_env: dict[str, str] | None = None

    def __post_init__(self) -> None:
        self.cancel_event = threading.Event()
        self.follower = LogFollower(self.run.logs)
        self.status: JobStatus = self.store.status(self.job_id)

    # -- public ---------------------------------------------------------------------------

    def request_cancel(self) -> None:
        self.interrupted = True
        self.cancel_event.set()

    def run_to_end(self) -> JobStatus:
        try:
            if self._start():
                self._watch()
        finally:
            self._stop_all()
            self._drain_logs(final=True)
        self._finish()
        return self.status

    # -- starting -------------------------------------------------------------------------

    def _start(self) -> bool:
        """Take the job over and start its nodes; False if it ended before it started."""
        run = self.run
        per_node = self.plan["procs_per_node"]
        self.status.ranks = [
            RankStatus(rank=r, node=r // per_node, host="127.0.0.1")
            for r in range(self.plan["world_size"])
        ]
        self.status.started = time.time()
        record, _ = self.store.apply(self.job_id, Observation(
            JobState.RUNNING, started=self.status.started, ranks=tuple(self.status.ranks)),
            Source.SUPERVISOR, owner=Owner.me(), engine_id=str(os.getpid()))
        if record.state is not JobState.RUNNING:  # cancelled (or lost) before it started
            self._stop_reason = (record.state, record.reason)
            return False
        self.status.state = JobState.RUNNING
        for node in self.plan["nodes"]:
            for path, text in node.get("files", {}).items():
                Path(path).write_text(text, encoding="utf-8")
        agent_dir = run.path / "agents"
        agent_dir.mkdir(exist_ok=True)
        for node in self.plan["nodes"]:
            node_rank = node["node_rank"]
            plan_file = agent_dir / f"node-{node_rank}.json"
            data = {**node, "grace": self.grace}
            python = [sys.executable, "-m"]
            if self.run_as is not None:
                data.update(user=self.run_as, user_env=self.user_env or {})
                python = [sys.executable, "-I", "-m"]  # no user directory on sys.path
            plan_file.write_text(json.dumps(data), encoding="utf-8")
            log = open(run.logs / f"node-{node_rank}.log", "ab")  # noqa: SIM115
            try:
                process = subprocess.Popen(
                    [*python, "corral.runtime.node", str(plan_file)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
                    cwd=self.plan["workdir"], start_new_session=True,
                )
            finally:
                log.close()
            assert process.stdout is not None
            os.set_blocking(process.stdout.fileno(), False)
            self.agents.append(_Agent(node_rank, process, process.stdout))
        self.store.update_details(
            self.job_id, agents=identities([a.process.pid for a in self.agents]))
        return True

    # -- watching -------------------------------------------------------------------------

    def _watch(self) -> None:
        selector = selectors.DefaultSelector()
        for agent in self.agents:
            selector.register(agent.stdout, selectors.EVENT_READ, agent)
        limit = self.plan.get("time_limit")
        deadline = self.status.started + limit if limit else None
        open_pipes = len(self.agents)
        while open_pipes or any(a.process.poll() is None for a in self.agents):
            for key, _ in selector.select(POLL_SECONDS):
                agent = key.data
                data = agent.stdout.read()
                if data:
                    self._events(agent, data)
                elif data == b"":
                    selector.unregister(agent.stdout)
                    open_pipes -= 1
            self._drain_logs()
            if self._stop_reason is not None:
                return
            if self.cancel_event.is_set() or (self.run.path / "cancel").exists():
                self._stop_reason = (JobState.CANCELLED, "cancelled")
                return
            preempted = self.run.path / "preempt"  # the queue's agent wants its resources
            if preempted.exists():
                why = preempted.read_text(encoding="utf-8", errors="replace").strip()
                self._stop_reason = (JobState.CANCELLED, why or "preempted")
                return
            if deadline is not None and time.time() > deadline:
                self._stop_reason = (JobState.TIMEOUT, f"time limit of {limit:g}s reached")
                return
            for agent in self.agents:
                if agent.returncode is None and agent.process.poll() is not None:
                    agent.returncode = agent.process.returncode
                    self._read_events_nonblocking()  # what it said before it exited
                    if self._stop_reason is not None:
                        return
                    if agent.returncode != 0:
                        self._launcher_failed(agent)
                        return
        selector.close()

    def _events(self, agent: _Agent, data: bytes) -> None:
        lines = (agent.buffer + data).split(b"\n")
        agent.buffer = lines.pop()
        for raw in lines:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            kind = event["event"]
            rank = event.get("rank")
            if kind == "fallback":
                agent.fallback = event["reason"]
                self.status.notes.append(f"node {agent.node}: {event['reason']}; ranks exec'd")
            elif kind == "started" and rank is not None:
                self.status.ranks[rank].pid = event["pid"]
                self.status.ranks[rank].state = JobState.RUNNING
            elif kind == "exited" and rank is not None:
                self._rank_exited(agent.node, rank, event["returncode"])
        if lines:
            self.store.update_ranks(self.job_id, self.status.ranks)

    def _rank_exited(self, node: int, rank: int, code: int) -> None:
        record = self.status.ranks[rank]
        record.returncode = code
        if self._stop_reason is not None:
            record.state = JobState.CANCELLED if code != 0 else JobState.SUCCEEDED
            return
        record.state = JobState.SUCCEEDED if code == 0 else JobState.FAILED
        if code != 0:
            self._fail(node, rank, code)

    def _launcher_failed(self, agent: _Agent) -> None:
        """A launcher (torchrun, mpirun, deepspeed) or agent exited non-zero."""
        code = agent.returncode
        assert code is not None
        log = self.run.logs / f"node-{agent.node}.log"
        text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
        found = first_failure(self.launcher, text)
        if found is not None:
            node = found.rank // self.plan["procs_per_node"]
            self.status.ranks[found.rank].returncode = found.returncode
            self.status.ranks[found.rank].state = JobState.FAILED
            self._fail(node, found.rank, found.returncode)
        else:
            self._fail(agent.node, None, code)

    def _fail(self, node: int, rank: int | None, code: int) -> None:
        log = f"rank-{rank}.log" if rank is not None else f"node-{node}.log"
        lines = tail_lines(self.run.logs / log, 20)
        if rank is not None and not lines:  # ranks of a launcher may log beside it
            log = f"node-{node}.log"
            lines = tail_lines(self.run.logs / log, 20)
        self.status.failure = Failure(
            node=node, rank=rank, returncode=code, reason=describe_returncode(code),
            last_lines=lines, log=str(self.run.logs / log), time=time.time(),
        )
        self._stop_reason = (JobState.FAILED, self.status.failure.describe())

    # -- stopping and finishing -----------------------------------------------------------

    def _stop_all(self) -> None:
        running = [a for a in self.agents if a.process.poll() is None]
        for agent in running:
            procs.kill_quietly(agent.process.pid, signal.SIGTERM)
        # Each agent gives its ranks the grace period, then SIGKILLs every descendant
        # itself; it is given that long plus a margin before anything is forced here.
        deadline = time.monotonic() + self.grace + STOP_MARGIN_SECONDS
        while time.monotonic() < deadline and any(a.process.poll() is None for a in running):
            self._read_events_nonblocking()
            time.sleep(0.01)
        stuck = [a.process.pid for a in self.agents if a.process.poll() is None]
        if stuck:
            stop_agents(identities(stuck), 0)  # agents and all descendants, other sessions too
        for agent in self.agents:
            # The agent's session: anything left in it.
            procs.killpg_quietly(agent.process.pid, signal.SIGKILL)
            agent.process.wait()
            if agent.returncode is None:
                agent.returncode = agent.process.returncode
        self._read_events_nonblocking()

    def _read_events_nonblocking(self) -> None:
        for agent in self.agents:
            try:
                data = agent.stdout.read()
            except (ValueError, OSError):
                continue
            if data:
                self._events(agent, data)

    def _drain_logs(self, final: bool = False) -> None:
        if self.sink is None:
            return
        for source, line in self.follower.poll(final=final):
            self.sink(source, line)

    def _finish(self) -> None:
        status = self.status
        status.finished = time.time()
        if self._stop_reason is not None:
            status.state, status.reason = self._stop_reason
        elif all(a.returncode == 0 for a in self.agents):
            status.state, status.reason = JobState.SUCCEEDED, ""
        else:
            status.state, status.reason = JobState.FAILED, "a node agent failed"
        for rank in status.ranks:
            if rank.state in (JobState.PENDING, JobState.RUNNING):
                rank.state = JobState.SUCCEEDED if status.state is JobState.SUCCEEDED else (
                    status.state if status.state is not JobState.FAILED else JobState.CANCELLED
                )
        for agent in self.agents:
            agent.stdout.close()
        observed = Observation(
            status.state, status.reason, finished=status.finished,
            ranks=tuple(status.ranks), failure=status.failure, notes=tuple(status.notes))
        source = Source.USER if status.state is JobState.CANCELLED else Source.SUPERVISOR
        also = None
        if self.ending is not None:  # the queue may take the job back in line instead
            observed, also = self.ending(observed)
        self.store.apply(self.job_id, observed, source, also=also)
        self.status = self.store.status(self.job_id)


def main(argv: list[str] | None = None) -> int:
    """Detached mode: ``python -m corral.backends.local.supervisor RUN_DIR [STORE]``."""
    args = sys.argv[1:] if argv is None else argv
    run = RunDir(Path(args[0]))
    store = open_store(Path(args[1]) if len(args) > 1 else None)
    record = store.get(run.job_id)
    supervisor = Supervisor(
        run=run, store=store, job_id=record.id, plan=run.read_json("plan.json"),
        launcher=record.launcher or "none", grace=float(record.details.get("grace", 1.0)),
    )
    signal.signal(signal.SIGTERM, lambda *_: supervisor.request_cancel())
    signal.signal(signal.SIGINT, lambda *_: supervisor.request_cancel())
    status = supervisor.run_to_end()
    return status.returncode


if __name__ == "__main__":
    sys.exit(main())
