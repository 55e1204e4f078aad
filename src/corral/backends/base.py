"""The contract every backend keeps.

A backend renders a spec into a plan without side effects, then submits that plan to its
engine. Everything else (describe, logs, cancel, list) addresses jobs by their id. What a
backend can do is declared as data (:class:`Capabilities`), not discovered by catching
``NotImplementedError``.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from corral.logs import LogFollower, LogSource
from corral.spec import JobSpec
from corral.status import JobStatus

LineSink = Callable[[LogSource, str], None]


@dataclass(frozen=True)
class Capabilities:
    gang: bool  # all ranks start together or not at all
    logs: bool  # per-rank logs can be read
    follow: bool  # logs can be followed while the job runs
    elastic: bool  # ranks can restart (torchrun --max-restarts)
    queues: bool  # jobs wait in a queue with priorities
    arrays: bool  # job arrays


class Plan(Protocol):
    @property
    def job_id(self) -> str: ...

    def dry_run_text(self) -> str: ...


@dataclass(frozen=True)
class JobRef:
    backend: str
    job_id: str


class Backend(abc.ABC):
    name: str
    capabilities: Capabilities

    @abc.abstractmethod
    def render(self, spec: JobSpec, job_id: str | None = None) -> Plan:
        """What would be sent, exactly; no side effects."""

    @abc.abstractmethod
    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        """Hand the job to the engine and return at once."""

    @abc.abstractmethod
    def describe(self, job_id: str) -> JobStatus: ...

    @abc.abstractmethod
    def logs(
        self, job_id: str, rank: int | None = None, follow: bool = False
    ) -> Iterator[tuple[LogSource, str]]: ...

    @abc.abstractmethod
    def cancel(self, job_id: str) -> JobStatus:
        """Stop every rank; cancelling a finished job changes nothing."""

    @abc.abstractmethod
    def list(self) -> list[JobStatus]: ...

    def follow(self, job_id: str, follower: LogFollower, follow: bool,
               poll: float = 0.1) -> Iterator[tuple[LogSource, str]]:
        """New lines from ``follower``, until the job ends when ``follow`` is set."""
        while True:
            done = not follow or self.describe(job_id).state.is_terminal()
            yield from follower.poll(final=done)
            if done:
                return
            time.sleep(poll)

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.1) -> JobStatus:
        """Block until the job ends or ``timeout`` seconds pass; return its status."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (status := self.describe(job_id)).state.is_terminal():
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(poll)
        return status

    def run(
        self, spec: JobSpec, sink: LineSink | None = None, plan: Plan | None = None
    ) -> JobStatus:
        """Submit, stream the ranks' output to ``sink``, and return the final status.

        Ctrl-C (KeyboardInterrupt) cancels the job and returns its final status, as a local
        run does: a foreground run never leaves ranks behind.
        """
        ref = self.submit(spec, plan)
        try:
            for source, line in self.logs(ref.job_id, follow=True):
                if sink is not None:
                    sink(source, line)
            return self.wait(ref.job_id)
        except KeyboardInterrupt:
            return self.cancel(ref.job_id)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "capabilities": self.capabilities}
