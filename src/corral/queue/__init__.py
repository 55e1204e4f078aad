"""corral's embedded queue: the scheduling policy (pure), SWF traces and their simulation.

:func:`corral.queue.policy.schedule` decides, from a :class:`~corral.queue.model.QueueState`
and the time, which jobs start where, which are preempted and why the rest wait;
:mod:`corral.queue.simulate` replays a workload trace through the same function.
"""

from corral.queue.model import (
    Decisions,
    Dependency,
    DependencyKind,
    Node,
    NodeShare,
    Outcome,
    PendingJob,
    Preemption,
    Queue,
    QueueState,
    Reason,
    Request,
    RunningJob,
    Start,
)
from corral.queue.policy import POLICIES, Policy, policy_named, priority_factors, schedule

__all__ = [
    "POLICIES",
    "Decisions",
    "Dependency",
    "DependencyKind",
    "Node",
    "NodeShare",
    "Outcome",
    "PendingJob",
    "Policy",
    "Preemption",
    "Queue",
    "QueueState",
    "Reason",
    "Request",
    "RunningJob",
    "Start",
    "policy_named",
    "priority_factors",
    "schedule",
]
