"""What GCP Batch says of a job, as corral's states. Pure: reads the SDK's ``Job`` and
``Task`` messages (by attribute; nothing is imported) and asks nothing.

=========================  ===================================================
Job.status.state           corral
=========================  ===================================================
QUEUED, SCHEDULED          PENDING (the newest status event says why)
RUNNING                    RUNNING
SUCCEEDED                  SUCCEEDED
FAILED                     FAILED, or TIMEOUT when the first failing task ran
                           past maxRunDuration (exit code 50005)
CANCELLATION_IN_PROGRESS   unchanged (PENDING or RUNNING), "being cancelled"
CANCELLED                  CANCELLED
DELETION_IN_PROGRESS       CANCELLED (deleted; soon gone)
=========================  ===================================================

Task N of the job's one task group is corral's node N. A failed task's status events carry
its container's exit code (``taskExecution.exitCode``): the node agent exits with the code of
the rank that failed first on that node, so the first failing task names the node and the
code. Which rank it was is written to the task's log only (Cloud Logging).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from corral.jobstate import JobState
from corral.runtime.procs import describe_returncode
from corral.status import Failure, RankStatus
from corral.store import JobRecord, Observation

# Exit codes that GCP Batch itself gives a task (cloud.google.com/batch/docs/troubleshooting
# #reserved-exit-codes); any other code is the container's own (the node agent's).
BATCH_EXIT_CODES = {
    50000: "the task failed for a reason GCP Batch does not name (see its status events)",
    50001: "its VM was preempted (Spot)",
    50002: "its VM stopped reporting to Batch",
    50003: "its VM rebooted while the task ran",
    50004: "the task stopped responding",
    50005: "the task ran past maxRunDuration (the job's time limit)",
    50006: "its VM was recreated while the task ran",
}
TIMED_OUT = 50005
TASK_STATES = {"PENDING": JobState.PENDING, "ASSIGNED": JobState.PENDING,
               "RUNNING": JobState.RUNNING, "SUCCEEDED": JobState.SUCCEEDED,
               "FAILED": JobState.FAILED, "UNEXECUTED": JobState.CANCELLED}


def _state_name(status: Any) -> str:
    state = getattr(status, "state", None)
    return str(getattr(state, "name", state) or "STATE_UNSPECIFIED")


def _when(event: Any) -> float | None:
    stamp = getattr(event, "event_time", None)
    try:
        return float(stamp.timestamp()) if stamp is not None else None
    except (AttributeError, OverflowError, ValueError):
        return None


def task_index(task: Any) -> int | None:
    tail = str(getattr(task, "name", "")).rsplit("/", 1)[-1]
    return int(tail) if tail.isdigit() else None


def _exit_code(event: Any) -> int | None:
    try:
        if "task_execution" not in event:  # proto-plus: is the field set?
            return None
    except TypeError:
        pass
    execution = getattr(event, "task_execution", None)
    code = getattr(execution, "exit_code", None)
    return int(code) if code is not None else None


def _failure_event(task: Any) -> Any:
    events = list(getattr(task.status, "status_events", None) or [])
    failed = [e for e in events if getattr(getattr(e, "task_state", None), "name", "")
              == "FAILED"]
    return (failed or events or [None])[-1]


def first_failure(tasks: Sequence[Any]) -> tuple[int, int | None, str, float] | None:
    """(node, exit code, Batch's description, when) of the task that failed first."""
    found = []
    for task in tasks:
        index = task_index(task)
        if index is None or _state_name(task.status) != "FAILED":
            continue
        event = _failure_event(task)
        when = _when(event) if event is not None else None
        found.append((when if when is not None else float("inf"), index,
                      _exit_code(event) if event is not None else None,
                      str(getattr(event, "description", "") or "")))
    if not found:
        return None
    when, index, code, description = min(found)
    return index, code, description, when


def _cause(code: int | None) -> str:
    if code is None:
        return "the task failed"
    return BATCH_EXIT_CODES.get(code) or describe_returncode(code)


def _job_events(job: Any) -> list[Any]:
    return list(getattr(job.status, "status_events", None) or [])


def _started(job: Any) -> float | None:
    for event in _job_events(job):
        if "to RUNNING" in str(getattr(event, "description", "")):
            return _when(event)
    return None


def observe(record: JobRecord, job: Any, tasks: Sequence[Any]) -> Observation:
    """The job as corral sees it, from its Job and (where listed) its tasks."""
    state_name = _state_name(job.status)
    events = _job_events(job)
    said = str(getattr(events[-1], "description", "")) if events else ""
    now = time.time()
    failure = None
    if state_name in ("QUEUED", "SCHEDULED", "STATE_UNSPECIFIED"):
        state, reason = JobState.PENDING, said or f"GCP Batch: {state_name}"
    elif state_name == "RUNNING":
        state, reason = JobState.RUNNING, ""
    elif state_name == "SUCCEEDED":
        state, reason = JobState.SUCCEEDED, ""
    elif state_name == "CANCELLATION_IN_PROGRESS":
        state = record.state if record.state in (JobState.PENDING, JobState.RUNNING) else (
            JobState.PENDING)
        reason = "being cancelled: GCP Batch is stopping its tasks"
    elif state_name == "CANCELLED":
        state, reason = JobState.CANCELLED, "cancelled"
    elif state_name == "DELETION_IN_PROGRESS":
        state, reason = JobState.CANCELLED, f"cancelled: its GCP Batch job {job.name} is " \
            "being deleted"
    elif state_name == "FAILED":
        first = first_failure(tasks)
        if first is None:  # nothing ran: no VMs, a bad image, a quota...
            failure = Failure(node=0, rank=None, returncode=None,
                              reason=said or "GCP Batch failed the job", time=now)
        else:
            node, code, description, _ = first
            failure = Failure(node=node, rank=None, returncode=code,
                              reason=f"{_cause(code)} (GCP Batch task {node}: "
                              f"{description or 'failed'})", time=now)
        state = JobState.TIMEOUT if failure.returncode == TIMED_OUT else JobState.FAILED
        reason = failure.describe()
        if state is JobState.TIMEOUT:
            failure = None
    else:
        state, reason = JobState.UNKNOWN, f"GCP Batch reports a state corral does not " \
            f"know: {state_name}"
    started = None
    if state not in (JobState.PENDING, JobState.UNKNOWN):
        started = record.started or _started(job) or now
    finished = None
    if state.is_terminal():
        finished = (_when(events[-1]) if events else None) or now
    by_node = {i: t for t in tasks if (i := task_index(t)) is not None}
    notes = (f"GCP Batch job {job.name} (uid {getattr(job, 'uid', '') or '?'}): {state_name}",
             *(f"node {i}: task {i}: {_state_name(t.status)}" for i, t in sorted(
                 by_node.items())))
    return Observation(state, reason, started=started, finished=finished, failure=failure,
                       notes=notes, ranks=ranks(record, state, by_node, failure))


def ranks(record: JobRecord, state: JobState, by_node: dict[int, Any],
          failure: Failure | None) -> tuple[RankStatus, ...] | None:
    """Every rank, in the state of its node's task; the failing node's ranks FAILED (which
    of them failed first is in its log only), other failed nodes' ranks CANCELLED."""
    if not by_node:
        return None
    per_node = record.procs_per_node
    found = []
    for rank in range(record.nodes * per_node):
        node = rank // per_node
        task = by_node.get(node)
        rank_state = TASK_STATES.get(_state_name(task.status), JobState.PENDING) if task \
            else JobState.PENDING
        if state.is_terminal() and rank_state in (JobState.PENDING, JobState.RUNNING):
            rank_state = JobState.CANCELLED if state is not JobState.SUCCEEDED else state
        code = 0 if rank_state is JobState.SUCCEEDED else None
        if failure is not None and rank_state is JobState.FAILED and node != failure.node:
            rank_state = JobState.CANCELLED  # stopped because another node failed
        found.append(RankStatus(rank=rank, node=node, state=rank_state, returncode=code))
    return tuple(found)
