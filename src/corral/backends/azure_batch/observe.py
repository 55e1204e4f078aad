"""What Azure Batch says of a job, as corral's states. Pure: reads the SDK's models (the job,
its multi-instance task and the task's subtasks, by attribute; nothing is imported) and the
nodes' output the client read, and asks nothing.

======================  ===================================================================
the job and its task    corral
======================  ===================================================================
job gone                CANCELLED (deleted)
task gone               FAILED while the job is active, else CANCELLED (deleted)
task active, preparing  PENDING (waiting for the pool's nodes, or preparing them; the job's
                        scheduling error), CANCELLED when the job is terminating, completed
                        or being deleted
task running            RUNNING
task completed          CANCELLED when corral (or a user) terminated the job; TIMEOUT when
                        it failed at maxWallClockTime or the job's time limit; FAILED when
                        it failed or a node's output says a rank did (the rank named from
                        that output, else the failing subtask, else the primary); else
                        SUCCEEDED
======================  ===================================================================

Node 0 is the primary (its agent ran in the foreground: the task's ``stdout.txt``); each
subtask's agent log says at its start which corral node it is (:data:`PLACE`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from corral.jobstate import JobState
from corral.nodelog import first_exit, parse_pod_log
from corral.status import Failure, RankStatus
from corral.store import JobRecord, Observation

from .render import TASK_ID

CANCEL_REASON = "corral: cancelled"  # the terminate reason corral's cancel gives
PLACE = re.compile(r"^\[corral\] azure-batch node (\d+) is corral node (\d+) of \d+")


def value(state: Any) -> str:
    """An SDK enum (or a plain string) as its wire value."""
    return str(getattr(state, "value", state) or "")


def stamp(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


@dataclass(frozen=True)
class NodeLog:
    """One node's output: corral's node rank, the Azure node it ran on, its lines."""

    node: int
    azure_node: str
    lines: list[str]


def place(lines: Sequence[str], default: int) -> int:
    """The corral node a node's output says it is (else ``default``)."""
    for line in lines:
        match = PLACE.match(line)
        if match:
            return int(match.group(2))
    return default


def _terminate_reason(job: Any) -> str:
    return value(job.execution_info.terminate_reason) if job.execution_info else ""


def job_deleted(azure_id: str) -> Observation:
    return Observation(JobState.CANCELLED, f"cancelled: its Azure Batch job {azure_id} "
                       "was deleted", finished=time.time())


def task_deleted(azure_id: str, job: Any) -> Observation:
    job_state = value(job.state)
    gone = JobState.CANCELLED if job_state != "active" else JobState.FAILED
    return Observation(gone, f"Azure Batch job {azure_id} ({job_state}) has no task "
                       f"{TASK_ID!r}: it was deleted", finished=time.time())


def queued(task: Any) -> bool:
    """Whether the task waits for its nodes (it has not started)."""
    return value(task.state) in ("active", "preparing")


def head(job: Any, task: Any) -> str:
    node = task.node_info.node_id if task.node_info else "(not scheduled)"
    return (f"Azure Batch job {job.id} on pool {job.pool_info.pool_id}: task {TASK_ID} "
            f"{value(task.state)}; node 0 (primary): {node}")


def waiting(record: JobRecord, job: Any, task: Any) -> Observation:
    """A task that has not started: PENDING (why), or CANCELLED when its job has ended."""
    job_state, terminate = value(job.state), _terminate_reason(job)
    if job_state in ("terminating", "completed", "deleting"):
        return Observation(JobState.CANCELLED, f"cancelled before it started (job "
                           f"{job_state}: {terminate or 'terminated'})", finished=time.time())
    reason = (f"waiting for {record.nodes} node(s) of pool {job.pool_info.pool_id}"
              if value(task.state) == "active" else "preparing its nodes")
    error = job.execution_info.scheduling_error if job.execution_info else None
    if error is not None:
        reason += f": {error.code}: {error.message}"
    return Observation(JobState.PENDING, reason, notes=(head(job, task),))


def _notes(job: Any, task: Any, subtasks: Sequence[Any]) -> tuple[str, ...]:
    return (head(job, task), *(
        f"subtask {s.id}: {s.node_info.node_id if s.node_info else '?'}: "
        f"{value(s.state)}" + (f", exit code {s.exit_code}" if s.exit_code is not None
                               else "") for s in subtasks))


def _started(record: JobRecord, task: Any) -> float:
    info = task.execution_info
    return stamp(info.start_time if info else None) or record.started or time.time()


def _finished(task: Any) -> float:
    info = task.execution_info
    return stamp(info.end_time if info else None) or time.time()


def task_failed(task: Any) -> bool:
    """Whether Azure says the task failed (its result, exit code or failure info)."""
    info = task.execution_info
    code = info.exit_code if info else None
    trouble = info.failure_info if info else None
    return value(info.result if info else None) == "failure" or bool(code) or bool(trouble)


def timed_out(record: JobRecord, info: Any, terminate: str) -> bool:
    trouble = info.failure_info if info else None
    said = f"{terminate} {trouble.code if trouble else ''} {trouble.message if trouble else ''}"
    if "MaxWallClockTime" in said or "wall clock" in said.lower():
        return True
    limit = (record.spec or {}).get("time_limit") or (record.options or {}).get(
        "max_wall_clock")
    if not limit or info is None or not info.start_time or not info.end_time:
        return False
    ran = float((info.end_time - info.start_time).total_seconds())
    return ran >= float(limit) - 1


def without_output(record: JobRecord, job: Any, task: Any, subtasks: Sequence[Any]
                   ) -> Observation | None:
    """A started task's state where the nodes' output is not needed to tell it: RUNNING,
    CANCELLED (its job terminated), TIMEOUT. None: it ended, SUCCEEDED or FAILED."""
    begun, notes = _started(record, task), _notes(job, task, subtasks)
    if value(task.state) != "completed":
        return Observation(JobState.RUNNING, "", started=begun, notes=notes,
                           ranks=ranks(record, JobState.RUNNING, task, None))
    finished = _finished(task)
    terminate = _terminate_reason(job)
    if terminate in (CANCEL_REASON, "UserTerminate"):
        return Observation(JobState.CANCELLED, f"cancelled (job terminated: {terminate})",
                           started=begun, finished=finished, notes=notes,
                           ranks=ranks(record, JobState.CANCELLED, task, None))
    if task_failed(task) and timed_out(record, task.execution_info, terminate):
        return Observation(JobState.TIMEOUT, "time limit reached (maxWallClockTime)",
                           started=begun, finished=finished, notes=notes,
                           ranks=ranks(record, JobState.TIMEOUT, task, None))
    return None


def any_exit(logs: Sequence[NodeLog]) -> bool:
    """Whether a node's output reports a failure (a rank's, or its launcher's)."""
    return any(first_exit(log.lines, log.node) for log in logs)


def ended(record: JobRecord, job: Any, task: Any, subtasks: Sequence[Any],
          logs: Sequence[NodeLog], failure: Failure | None) -> Observation:
    """A task that ended: SUCCEEDED, or FAILED as ``failure`` says."""
    begun, finished = _started(record, task), _finished(task)
    notes = _notes(job, task, subtasks)
    if failure is None:
        return Observation(JobState.SUCCEEDED, "", started=begun, finished=finished,
                           notes=notes, ranks=ranks(record, JobState.SUCCEEDED, task, None,
                                                    logs))
    return Observation(JobState.FAILED, failure.describe(), started=begun,
                       finished=finished, failure=failure, notes=notes,
                       ranks=ranks(record, JobState.FAILED, task, failure, logs))


# -- which rank failed ----------------------------------------------------------------------

def failure_from_output(record: JobRecord, logs: Sequence[NodeLog]) -> Failure | None:
    """The rank that failed first, from the nodes' own news of it."""
    from corral.launchers.failures import parse_torchrun
    from corral.runtime.procs import describe_returncode

    exits = sorted((found, log.node, log) for log in logs
                   if (found := first_exit(log.lines, log.node)))
    if not exits:
        return None
    (_, rank, code), node, log = exits[0]
    if rank is None and record.launcher == "torchrun":  # its report names the rank
        inner = parse_torchrun("\n".join(
            t for s, t in parse_pod_log(log.lines, node) if s.kind == "node"))
        if inner is not None:
            rank, code = inner.rank, inner.returncode
    own = [t for s, t in parse_pod_log(log.lines, node)
           if rank is None or (s.kind == "rank" and s.number == rank)]
    return Failure(node=node, rank=rank, returncode=code,
                   reason=f"{describe_returncode(code)} (Azure Batch node "
                          f"{log.azure_node})", last_lines=own[-20:], time=time.time(),
                   log=f"corral logs {record.id}" + (
                       f" --rank {rank}" if rank is not None else ""))


def failure_of_subtask(subtasks: Sequence[Any], logs: Sequence[NodeLog]) -> Failure | None:
    """The subtask that Azure says failed first, with the last lines its node wrote."""
    bad = sorted((s.end_time.timestamp() if s.end_time else 0.0, s.id, s) for s in subtasks
                 if s.exit_code or s.failure_info)
    if not bad:
        return None
    sub = bad[0][2]
    azure_node = sub.node_info.node_id if sub.node_info else "?"
    seen = next((found for found in logs if found.azure_node == azure_node), None)
    return Failure(node=seen.node if seen else sub.id, rank=None,
                   returncode=sub.exit_code, reason=_trouble(
                       sub.failure_info, sub.exit_code) + f" (Azure Batch subtask "
                   f"{sub.id} on node {azure_node})",
                   last_lines=seen.lines[-20:] if seen else [], time=time.time())


def primary_lines(logs: Sequence[NodeLog]) -> list[str]:
    """What node 0 (the primary) wrote."""
    return next((log.lines for log in logs if log.node == 0), [])


def failure_of_primary(record: JobRecord, task: Any, lines: list[str]) -> Failure:
    """The primary, as Azure says it failed, with the last of ``lines`` (its output; corral's
    agent may not have started: a missing corral or Python says so on stderr)."""
    info = task.execution_info
    azure_node = task.node_info.node_id if task.node_info else "?"
    return Failure(node=0, rank=None, returncode=info.exit_code if info else None,
                   reason=_trouble(info.failure_info if info else None,
                                   info.exit_code if info else None)
                   + f" (Azure Batch node {azure_node}, the primary)",
                   last_lines=lines[-20:], time=time.time(), log=f"corral logs {record.id}")


def _trouble(failure_info: Any, code: int | None) -> str:
    if failure_info is not None:
        return f"{failure_info.code}: {failure_info.message}"
    from corral.runtime.procs import describe_returncode

    return describe_returncode(code)


def ranks(record: JobRecord, state: JobState, task: Any, failure: Failure | None,
          logs: Sequence[NodeLog] = ()) -> tuple[RankStatus, ...]:
    """Every rank in the job's state, except that of a failed job the failing rank (or the
    failing node's ranks, where no rank is named) FAILED and the others CANCELLED."""
    hosts = {log.node: log.azure_node for log in logs}
    if task.node_info:
        hosts.setdefault(0, task.node_info.node_id)
    per_node = record.procs_per_node
    found = []
    for rank in range(record.nodes * per_node):
        node = rank // per_node
        rank_state, code = state, 0 if state is JobState.SUCCEEDED else None
        if failure is not None:
            hit = rank == failure.rank or (failure.rank is None and node == failure.node)
            rank_state = JobState.FAILED if hit else JobState.CANCELLED
            code = failure.returncode if hit else None
        found.append(RankStatus(rank=rank, node=node, host=hosts.get(node),
                                state=rank_state, returncode=code))
    return tuple(found)
