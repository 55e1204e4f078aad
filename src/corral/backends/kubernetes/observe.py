"""What the cluster's objects say about a job: pure functions over plain dicts.

The client lists pods and workloads once per poll; these read them: which node a pod runs,
a workload's final state, why a job waits (the scheduler, Volcano's PodGroup, Kueue's
Workload), (a pod's labelled log is read by :mod:`corral.nodelog`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from corral.jobstate import JobState

INDEX_KEYS = ("batch.kubernetes.io/job-completion-index", "volcano.sh/task-index")
WAITING_TROUBLE = ("ImagePullBackOff", "ErrImagePull", "CrashLoopBackOff", "InvalidImageName",
                   "CreateContainerConfigError", "CreateContainerError")


def start_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    except ValueError:
        return None


def conditions_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def pod_index(pod: dict[str, Any]) -> int | None:
    """The node a pod runs, from its workload controller's annotation or label."""
    meta = pod.get("metadata", {})
    for source in (meta.get("annotations") or {}, meta.get("labels") or {}):
        for key in INDEX_KEYS:
            value = source.get(key)
            if value is not None and str(value).isdigit():
                return int(value)
    return None


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == "main" and "terminated" in (status.get("state") or {}):
            found: dict[str, Any] = status["state"]["terminated"]
            return found
    return None


def waiting_trouble(pod: dict[str, Any]) -> tuple[str, str] | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (status.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in WAITING_TROUBLE:
            return waiting["reason"], waiting.get("message", "")
    return None


def workload_state(flavour: str, workload: dict[str, Any]) -> tuple[JobState | None, str]:
    """A final (or suspended) state from the workload itself; None while it runs."""
    status = workload.get("status") or {}
    conditions = conditions_of(workload)
    if flavour == "volcano":
        phase = (status.get("state") or {}).get("phase", "")
        if phase == "Completed":
            return JobState.SUCCEEDED, ""
        if phase in ("Failed", "Terminated"):
            return JobState.FAILED, f"Volcano job {phase}"
        if phase == "Aborted":
            return JobState.CANCELLED, "aborted in Volcano"
        return None, ""
    done = [t for t in ("Complete", "Completed", "Failed") if conditions.get(
        t, {}).get("status") == "True"]
    if done:
        condition = conditions[done[0]]
        if done[0] != "Failed":
            return JobState.SUCCEEDED, ""
        if condition.get("reason") == "DeadlineExceeded" or "DeadlineExceeded" in str(
                condition.get("message", "")):
            return JobState.TIMEOUT, "time limit reached (activeDeadlineSeconds)"
        return JobState.FAILED, str(condition.get("message") or condition.get("reason")
                                    or "failed")
    if (workload.get("spec") or {}).get("suspend"):
        return JobState.PENDING, "suspended (waiting for Kueue to admit it)"
    return None, ""


def podgroup_reason(group: dict[str, Any], events: Sequence[dict[str, Any]] = ()) -> str:
    """Why a Volcano gang waits: its Unschedulable condition, or (while the PodGroup is
    still Pending, before Volcano sets conditions) its Unschedulable events."""
    phase = (group.get("status") or {}).get("phase", "") or "Pending"
    unschedulable = conditions_of(group).get("Unschedulable")
    if unschedulable and unschedulable.get("status") == "True":
        return (f"Volcano: pod group {phase}, unschedulable: "
                f"{unschedulable.get('message') or unschedulable.get('reason', '')}")
    name = group["metadata"]["name"]
    mine = [e for e in events if (e.get("involvedObject") or {}).get("name") == name
            and e.get("reason") == "Unschedulable"]
    if mine:  # Volcano repeats a few messages (counted); each once, the newest first
        messages: list[str] = []
        for event in sorted(mine, key=_event_time, reverse=True):
            if str(event.get("message", "")) not in messages:
                messages.append(str(event.get("message", "")))
        return f"Volcano: pod group {phase}, unschedulable: " + "; ".join(messages[:3])
    return f"Volcano: pod group {phase}"


def _event_time(event: dict[str, Any]) -> str:
    return str(event.get("lastTimestamp") or event.get("eventTime") or
               (event.get("metadata") or {}).get("creationTimestamp") or "")


def kueue_reason(workload: dict[str, Any]) -> str:
    conditions = conditions_of(workload)
    admitted = conditions.get("Admitted", {})
    if admitted.get("status") == "True":
        return "Kueue: admitted"
    reserved = conditions.get("QuotaReserved", {})
    message = reserved.get("message") or admitted.get("message") or ""
    queue_name = (workload.get("spec") or {}).get("queueName", "")
    return (f"Kueue: waiting in queue {queue_name}: {message}" if message
            else f"Kueue: waiting for admission in queue {queue_name}")


def pending_reason(by_node: dict[int, dict[str, Any]], nodes: int) -> str:
    for pod in by_node.values():
        scheduled = conditions_of(pod).get("PodScheduled", {})
        if scheduled.get("status") == "False":
            return (f"{scheduled.get('reason', 'Unschedulable')}: "
                    f"{scheduled.get('message', '')}").rstrip(": ")
    if len(by_node) < nodes:
        return f"{len(by_node)} of {nodes} pods created"
    return ""
