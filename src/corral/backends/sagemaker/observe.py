"""What SageMaker says about a training job, read: pure functions over the plain dicts of
``DescribeTrainingJob`` and the names of its CloudWatch log streams.

=====================  ==========================================  =========================
TrainingJobStatus      SecondaryStatus                             corral
=====================  ==========================================  =========================
InProgress             Starting, Pending, Downloading, Restarting,  PENDING (the reason: the
                       Interrupted (spot), LaunchingMLInstances...  last transition's message)
InProgress             Training, Uploading, Updating                RUNNING
Completed              Completed                                    SUCCEEDED
Failed                 Failed                                       FAILED (FailureReason; the
                                                                    rank from the node logs)
Stopping               Stopping                                     as before (RUNNING once it
                                                                    trained, else PENDING)
Stopped                MaxRuntimeExceeded, MaxWaitTimeExceeded      TIMEOUT
Stopped                Stopped                                      CANCELLED
=====================  ==========================================  =========================

A spot interruption takes a running job back to waiting for capacity: each ``Interrupted``
(or ``Restarting``) transition counts as a new start of the job (the engine's attempt), so
the store records a requeue rather than an illegal move back to PENDING. Each instance
writes one log stream per start, ``NAME/algo-N-<epoch seconds>``; host algo-N is corral's
node N-1 (:func:`corral.runtime.cloud_env.sagemaker`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from corral.jobstate import JobState
from corral.status import Failure, RankStatus

LOG_GROUP = "/aws/sagemaker/TrainingJobs"
RUNNING_SECONDARY = ("Training", "Uploading", "Updating")
TIMEOUT_SECONDARY = {
    "MaxRuntimeExceeded": "time limit reached (StoppingCondition.MaxRuntimeInSeconds)",
    "MaxWaitTimeExceeded": "spot capacity and run time exceeded "
                           "StoppingCondition.MaxWaitTimeInSeconds",
}
RESTART_SECONDARY = ("Interrupted", "Restarting")
_HOST = re.compile(r"\balgo-(\d+)\b")


def when(value: Any) -> float | None:
    """Seconds since the epoch from botocore's datetime (or an ISO text, or a number)."""
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def transitions(desc: dict[str, Any]) -> list[dict[str, Any]]:
    found = desc.get("SecondaryStatusTransitions") or []
    return [t for t in found if isinstance(t, dict)]


def engine_attempt(desc: dict[str, Any]) -> int:
    """1 + the number of times SageMaker restarted the job (spot interruptions, retries);
    consecutive restart transitions (Interrupted, then Restarting) count once."""
    count, previous = 0, ""
    for step in transitions(desc):
        status = str(step.get("Status", ""))
        if status in RESTART_SECONDARY and previous not in RESTART_SECONDARY:
            count += 1
        previous = status
    return 1 + count


def _message(desc: dict[str, Any]) -> str:
    steps = transitions(desc)
    secondary = str(desc.get("SecondaryStatus") or "")
    last = steps[-1] if steps else {}
    text = str(last.get("StatusMessage") or "")
    return f"SageMaker: {secondary}" + (f": {text}" if text else "")


def trained(desc: dict[str, Any]) -> bool:
    """Whether the job reached Training in its latest start."""
    seen = False
    for step in transitions(desc):
        status = step.get("Status")
        if status in RESTART_SECONDARY:
            seen = False
        elif status in RUNNING_SECONDARY:
            seen = True
    return seen or desc.get("SecondaryStatus") in RUNNING_SECONDARY


def job_state(desc: dict[str, Any]) -> tuple[JobState, str]:
    """corral's state of a training job, and why (see the table above)."""
    status = str(desc.get("TrainingJobStatus") or "")
    secondary = str(desc.get("SecondaryStatus") or "")
    if status == "Completed":
        return JobState.SUCCEEDED, ""
    if status == "Failed":
        return JobState.FAILED, f"SageMaker: {desc.get('FailureReason') or 'Failed'}"
    if status == "Stopped":
        if secondary in TIMEOUT_SECONDARY:
            return JobState.TIMEOUT, TIMEOUT_SECONDARY[secondary]
        return JobState.CANCELLED, "stopped (StopTrainingJob)"
    if status == "Stopping":
        return (JobState.RUNNING if trained(desc) else JobState.PENDING), "SageMaker: Stopping"
    if status == "InProgress":
        if secondary in RUNNING_SECONDARY:
            return JobState.RUNNING, "" if secondary == "Training" else _message(desc)
        return JobState.PENDING, _message(desc)
    if status == "Deleting":
        return JobState.CANCELLED, "SageMaker is deleting the training job"
    return JobState.UNKNOWN, (f"SageMaker reports TrainingJobStatus {status!r} (secondary "
                              f"{secondary!r}), which this corral does not know")


def times(desc: dict[str, Any], state: JobState) -> tuple[float | None, float | None]:
    """When the job started training and when it ended (None when not known)."""
    started = when(desc.get("TrainingStartTime"))
    if started is None:
        starts = [when(t.get("StartTime")) for t in transitions(desc)
                  if t.get("Status") == "Training"]
        started = next((s for s in starts if s is not None), None)
    finished = None
    if state.is_terminal():
        finished = when(desc.get("TrainingEndTime")) or when(desc.get("LastModifiedTime"))
    return started, finished


def failed_host(reason: str) -> int | None:
    """The node a FailureReason names (``... algo-2 ...`` is node 1), if it names one."""
    match = _HOST.search(reason or "")
    return int(match.group(1)) - 1 if match and int(match.group(1)) >= 1 else None


def stream_place(name: str, stream: str) -> tuple[int, int] | None:
    """(node, start) of a log stream ``NAME/algo-N-<epoch>``; None for another job's."""
    match = re.fullmatch(re.escape(name) + r"/algo-(\d+)-(\d+)", stream)
    if not match or int(match.group(1)) < 1:
        return None
    return int(match.group(1)) - 1, int(match.group(2))


def node_streams(name: str, streams: list[str]) -> dict[int, list[str]]:
    """Each node's streams, oldest start first."""
    placed = sorted((found, s) for s in streams if (found := stream_place(name, s)))
    by_node: dict[int, list[str]] = {}
    for (node, _), stream in placed:
        by_node.setdefault(node, []).append(stream)
    return by_node


def rank_statuses(nodes: int, per_node: int, launcher: str, state: JobState,
                  failure: Failure | None) -> tuple[RankStatus, ...]:
    """Every rank: SageMaker says nothing per host, so each rank has the job's state, except
    that of a failed job the failing rank FAILED and the others CANCELLED (stopped).

    Rank r runs on node r // per_node, host algo-(node + 1), except under torchrun, whose
    c10d rendezvous numbers the nodes in the order they join: there only the failing rank's
    host is known (from the log stream that named it)."""
    ranks = []
    for rank in range(nodes * per_node):
        node = rank // per_node
        host: str | None = f"algo-{node + 1}" if launcher != "torchrun" else None
        rank_state, code = state, None
        if state is JobState.SUCCEEDED:
            code = 0
        elif state is JobState.FAILED:
            if failure is not None and failure.rank == rank:
                code, node, host = failure.returncode, failure.node, f"algo-{failure.node + 1}"
            elif failure is not None and failure.rank is None and failure.node == node:
                pass
            else:
                rank_state = JobState.CANCELLED
        ranks.append(RankStatus(rank=rank, node=node, host=host, state=rank_state,
                                returncode=code))
    return tuple(ranks)


def notes(desc: dict[str, Any], region: str | None) -> tuple[str, ...]:
    name = str(desc.get("TrainingJobName") or "")
    resources = desc.get("ResourceConfig") or {}
    found = [f"SageMaker training job {name}: {desc.get('TrainingJobStatus')} / "
             f"{desc.get('SecondaryStatus')} on {resources.get('InstanceCount', '?')} x "
             f"{resources.get('InstanceType', '?')}",
             f"logs: CloudWatch {LOG_GROUP}, streams {name}/algo-N-*"]
    if region:
        found.append(f"console: https://{region}.console.aws.amazon.com/sagemaker/home?"
                     f"region={region}#/jobs/{name}")
    artifacts = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts")
    if artifacts and desc.get("TrainingJobStatus") == "Completed":
        found.append(f"model: {artifacts}")
    return tuple(found)
