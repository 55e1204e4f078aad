"""What a backend reports about a job: its state, each rank, and the first failure."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from corral.jobstate import JobState


@dataclass
class RankStatus:
    """One rank: where it runs, its process, its state and exit code."""

    rank: int
    node: int
    pid: int | None = None
    returncode: int | None = None
    state: JobState = JobState.PENDING
    host: str | None = None


@dataclass
class TaskStatus:
    """One task of an array job: its state, exit code and why it failed."""

    task: int
    state: JobState = JobState.PENDING
    returncode: int | None = None
    reason: str = ""
    engine_id: str | None = None  # Slurm's own job id of the task


@dataclass
class Failure:
    """The first rank (or node process) that failed, and its last words."""

    node: int
    rank: int | None
    returncode: int | None
    reason: str
    last_lines: list[str] = field(default_factory=list)
    log: str | None = None
    time: float | None = None  # when corral saw it

    def describe(self) -> str:
        who = f"rank {self.rank} on node {self.node}" if self.rank is not None else (
            f"node {self.node}"
        )
        return f"{who} failed: {self.reason}"


@dataclass
class JobStatus:
    """What is known of a job now: its state and why, its ranks, the first failure."""

    job_id: str
    name: str
    backend: str
    state: JobState
    reason: str = ""
    nodes: int = 1
    procs_per_node: int = 1
    created: float | None = None
    started: float | None = None
    finished: float | None = None
    run_dir: str | None = None
    ranks: list[RankStatus] = field(default_factory=list)
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)
    attempt: int = 1
    user: str | None = None
    engine_id: str | None = None  # the engine's own id (Slurm job id, supervisor pid ...)
    tasks: list[TaskStatus] = field(default_factory=list)  # an array job's tasks

    @property
    def returncode(self) -> int:
        """A process exit code for the job: 0 only when it succeeded."""
        if self.state is JobState.SUCCEEDED:
            return 0
        if self.state is JobState.CANCELLED:
            return 130
        if self.state is JobState.TIMEOUT:
            return 124
        if self.failure and self.failure.returncode:
            code = self.failure.returncode
            return code if 0 < code < 256 else 128 + abs(code) if code < 0 else 1
        return 1

    @property
    def duration(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started

    def summary(self) -> str:
        """A few lines a person can act on."""
        head = f"job {self.job_id} {self.state.value}"
        if self.attempt > 1:
            head += f" (attempt {self.attempt})"
        if self.duration is not None:
            head += f" after {self.duration:.1f}s"
        lines = [head + (f": {self.reason}" if self.reason else "")]
        if self.failure is not None:
            if self.failure.describe() != self.reason:
                lines.append(self.failure.describe())
            if self.failure.last_lines:
                label = f"rank {self.failure.rank}" if self.failure.rank is not None else "node"
                lines.append(f"last lines of {label}'s log ({self.failure.log}):")
                lines.extend("  " + line for line in self.failure.last_lines)
        lines.extend(self.notes)
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        for rank in data["ranks"]:
            rank["state"] = rank["state"].value
        for task in data["tasks"]:
            task["state"] = task["state"].value
        return data
