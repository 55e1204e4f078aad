"""The queue's state and the scheduler's decisions, as plain frozen dataclasses.

Everything the policy reads is here and nothing else: the policy is a pure function of
a :class:`QueueState` and a clock reading (``now``, seconds). Times are seconds on any
clock the caller likes (the agent's wall clock, the simulator's virtual one). Memory is in
MiB. GPUs are counted per node: a request below 1.0 is a fraction of one GPU (two jobs of
``gpus=0.5`` share a GPU), a request of 1.0 or more must be whole GPUs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from corral.errors import SpecError

GPU_EPSILON = 1e-9  # fractions are summed as floats; 0.1 * 10 must still fit one GPU


class Reason(str, enum.Enum):
    """Why a job is still pending, as squeue's reason column spells it."""

    RESOURCES = "Resources"  # the top job: waits for resources to free up
    PRIORITY = "Priority"  # a job of higher priority goes first
    DEPENDENCY = "Dependency"  # a job it depends on has not ended yet
    DEPENDENCY_NEVER_SATISFIED = "DependencyNeverSatisfied"  # and it ended the wrong way
    QUEUE_LIMIT = "QueueLimit"  # its queue runs as many jobs as the queue allows
    ARRAY_TASK_LIMIT = "JobArrayTaskLimit"  # its array runs as many tasks as ``%N`` allows
    HELD = "Held"  # held by its user or an admin
    NEVER_FITS = "PartitionConfig"  # asks for more than any set of nodes here has


class DependencyKind(str, enum.Enum):
    """Slurm's ``--dependency`` kinds that corral supports."""

    AFTER_OK = "afterok"  # start after the other job succeeded
    AFTER_ANY = "afterany"  # start after the other job ended, however it ended
    AFTER_NOT_OK = "afternotok"  # start after the other job failed (or was cancelled)


class Outcome(str, enum.Enum):
    """How a finished job ended, as far as dependencies care."""

    OK = "ok"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Node:
    """One machine: its whole capacity (what is free is derived from running jobs)."""

    name: str
    cpus: float
    memory: float = 0.0
    gpus: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """A gang's request: ``nodes`` nodes, each with this much CPU, GPU and memory."""

    nodes: int = 1
    cpus: float = 1.0
    gpus: float = 0.0
    memory: float = 0.0
    shape: tuple[int, float, float, float] = field(init=False, repr=False, compare=False)
    """What two requests share when they fit exactly the same places."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", (self.nodes, self.cpus, self.gpus, self.memory))
        problems: list[tuple[str, object, str]] = []
        if self.nodes < 1:
            problems.append(("nodes", self.nodes, "a whole number of nodes, at least 1"))
        if self.cpus < 0 or self.memory < 0:
            problems.append(("cpus/memory", (self.cpus, self.memory), "zero or more"))
        if self.gpus < 0 or (self.gpus > 1 and self.gpus != int(self.gpus)):
            problems.append(("gpus", self.gpus,
                             "a fraction of one GPU (0 < gpus < 1) or a whole number of GPUs"))
        if problems:
            raise SpecError(problems, "queue request")


@dataclass(frozen=True, slots=True)
class Dependency:
    """``kind`` on job ``job_id`` (``--after``)."""

    kind: DependencyKind
    job_id: str


@dataclass(frozen=True, slots=True)
class PendingJob:
    """A job waiting in the queue. ``seq`` is the submission order (ties of ``submit``);
    ``time_limit`` is what backfilling plans with (a user's estimate or the limit)."""

    id: str
    seq: int
    user: str
    submit: float
    request: Request
    time_limit: float
    queue: str = "default"
    qos: float = 0.0  # 0..1, more is more urgent; also who may preempt whom
    preemptible: bool = False
    after: tuple[Dependency, ...] = ()
    array: str | None = None  # the array this task belongs to
    array_limit: int | None = None  # ``--array 0-99%8``: at most 8 tasks running at once
    retries_left: int = 0
    held: bool = False


@dataclass(frozen=True, slots=True)
class NodeShare:
    """What one job holds on one node; ``gpus`` pairs a GPU index with the fraction held."""

    node: str
    cpus: float
    memory: float = 0.0
    gpus: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class RunningJob:
    """A job that holds resources until ``start + time_limit`` at the latest."""

    id: str
    user: str
    start: float
    time_limit: float
    placement: tuple[NodeShare, ...]
    queue: str = "default"
    qos: float = 0.0
    preemptible: bool = False
    preempting: bool = False  # told to stop already: its resources are about to come back
    array: str | None = None

    @property
    def expected_end(self) -> float:
        return self.start + self.time_limit


@dataclass(frozen=True, slots=True)
class Queue:
    """A named queue. ``weight`` splits capacity between queues (Volcano's Queue weight);
    ``max_running`` caps how many of its jobs run at once (None: no cap)."""

    name: str
    weight: float = 1.0
    max_running: int | None = None


@dataclass(frozen=True, slots=True)
class QueueState:
    """Everything one policy pass reads. ``outcomes`` holds finished jobs' outcomes (for
    dependencies); ``usage`` each user's and queue's decayed usage (CPU-seconds, see
    :mod:`corral.queue.fairshare`), keyed ``user`` and ``queue:NAME``."""

    nodes: tuple[Node, ...]
    pending: tuple[PendingJob, ...] = ()
    running: tuple[RunningJob, ...] = ()
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    queues: Mapping[str, Queue] = field(default_factory=dict)
    usage: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Start:
    """Start this job now, on these nodes (all of a gang's nodes, never fewer)."""

    job_id: str
    placement: tuple[NodeShare, ...]


@dataclass(frozen=True, slots=True)
class Preemption:
    """Stop running job ``victim`` (signal, grace, kill, requeue) so ``for_job`` can start."""

    victim: str
    for_job: str


@dataclass(frozen=True, slots=True)
class Decisions:
    """A pass's answer: who starts where, who is preempted, why everyone else waits.
    ``reservation`` is when the top waiting job is planned to start (None if none)."""

    starts: tuple[Start, ...]
    preemptions: tuple[Preemption, ...]
    reasons: Mapping[str, Reason]
    reservation: tuple[str, float] | None = None
