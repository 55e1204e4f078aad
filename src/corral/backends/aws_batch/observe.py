"""What AWS Batch's ``DescribeJobs`` says about a multi-node parallel job: pure functions over
its answers (plain dicts).

AWS Batch gives a multi-node job the state of its main node alone: a child node that fails
while the main node goes on does not fail the job. corral therefore looks at every node
(``jobId#N``), and a job with a failed node is failed, naming the node that failed first.
"""

from __future__ import annotations

from typing import Any

from corral.jobstate import JobState

WAITING = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING")
CANCEL_REASON = "cancelled by corral"
TIMEOUT_REASONS = ("Job attempt duration exceeded timeout",)
WAITING_WHY = {
    "SUBMITTED": "submitted: AWS Batch has not yet looked at it",
    "PENDING": "pending: waiting for the jobs it depends on",
    "RUNNABLE": "runnable: waiting in the queue for compute resources",
    "STARTING": "starting: the nodes' containers are being started",
}


def node_id(job_id: str, index: int) -> str:
    return f"{job_id}#{index}"


def node_index(node: dict[str, Any]) -> int | None:
    details = node.get("nodeDetails") or {}
    if isinstance(details.get("nodeIndex"), int):
        return int(details["nodeIndex"])
    job_id = str(node.get("jobId", ""))
    tail = job_id.rpartition("#")[2]
    return int(tail) if "#" in job_id and tail.isdigit() else None


def container_of(node: dict[str, Any]) -> dict[str, Any]:
    """The node's container as its last attempt left it (or as it runs now)."""
    attempts = node.get("attempts") or []
    last = (attempts[-1].get("container") or {}) if attempts else {}
    return {**last, **(node.get("container") or {})}


def exit_code(node: dict[str, Any]) -> int | None:
    code = container_of(node).get("exitCode")
    return int(code) if isinstance(code, int) else None


def failed(node: dict[str, Any]) -> bool:
    code = exit_code(node)
    return node.get("status") == "FAILED" or (code is not None and code != 0)


def failed_nodes(nodes: dict[int, dict[str, Any]]) -> list[int]:
    """Nodes that failed, the first to stop first."""
    return [i for _, i in sorted((n.get("stoppedAt") or 2**62, i)
                                 for i, n in nodes.items() if failed(n))]


def main_state(job: dict[str, Any]) -> tuple[JobState, str]:
    """The state of the main node's job as corral names it, and why."""
    status = str(job.get("status", ""))
    said = str(job.get("statusReason") or "")
    if status in WAITING:
        why = WAITING_WHY[status]
        return JobState.PENDING, f"{why} ({said})" if said else why
    if status == "RUNNING":
        return JobState.RUNNING, ""
    if status == "SUCCEEDED":
        return JobState.SUCCEEDED, ""
    if status == "FAILED":
        if said.startswith(CANCEL_REASON):
            return JobState.CANCELLED, said
        if any(said.startswith(t) for t in TIMEOUT_REASONS):
            return JobState.TIMEOUT, said
        return JobState.FAILED, said or "failed"
    return JobState.UNKNOWN, f"AWS Batch says {status or 'nothing'} ({said})"


def node_cause(node: dict[str, Any]) -> str:
    """Why a node's container ended, in AWS's words: its exit code and reason."""
    container = container_of(node)
    parts = []
    if exit_code(node) is not None:
        parts.append(f"exit code {exit_code(node)}")
    for text in (container.get("reason"), node.get("statusReason")):
        if text and text not in parts:
            parts.append(str(text))
    return ", ".join(parts) or "failed"


def node_state(node: dict[str, Any] | None) -> JobState:
    status = (node or {}).get("status", "")
    if status in WAITING or not status:
        return JobState.PENDING
    if status == "RUNNING":
        return JobState.RUNNING
    return JobState.FAILED if failed(node or {}) else JobState.SUCCEEDED
