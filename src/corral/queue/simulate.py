"""Replay a workload trace through the queue policy on a virtual clock.

Event-driven: the clock jumps from one event to the next (a submission, a job's end) and
every event runs one pass of the very function the agent runs,
:func:`corral.queue.policy.schedule`, so the top job's reservation is recomputed at every
event. Events at the same time are taken as the reference simulator (pyss, used by the
published figures) takes them: submissions first, in trace order, then ends, in the order
the jobs started.

The machine is one pool of processors (an SWF trace knows no nodes); a job holds its
processors from its start for its (capped) run time; the policy plans with the requested
time. Fair-share usage (processor-seconds) is charged when a job ends.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.queue.fairshare import UsageLedger, Weights
from corral.queue.model import NodeShare, PendingJob, Queue, QueueState, Request, RunningJob
from corral.queue.policy import Policy, schedule, single_pool
from corral.queue.swf import TraceJob

BOUNDED_SLOWDOWN_THRESHOLD = 10.0  # seconds: short jobs do not inflate slowdown


@dataclass(frozen=True, slots=True)
class JobResult:
    """One simulated job: when it came, started, and for how long it ran."""

    id: str
    user: str
    submit: float
    start: float
    run: float
    procs: int

    @property
    def wait(self) -> float:
        return self.start - self.submit

    @property
    def flow(self) -> float:
        """Wait plus run: the time from submission to the end."""
        return self.start - self.submit + self.run

    @property
    def bounded_slowdown(self) -> float:
        """max(1, (wait + run) / max(run, 10 s))."""
        return max(1.0, self.flow / max(self.run, BOUNDED_SLOWDOWN_THRESHOLD))


@dataclass(frozen=True, slots=True)
class Summary:
    """The figures of a set of jobs (the whole trace, or one user's jobs)."""

    jobs: int
    mean_wait: float
    max_wait: float
    mean_bounded_slowdown: float
    max_bounded_slowdown: float
    mean_flow: float
    utilization: float  # busy processor-seconds over capacity x (last end - first submit)

    @classmethod
    def of(cls, results: Sequence[JobResult], procs: int) -> Summary:
        if not results:
            return cls(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
        n = len(results)
        slowdowns = [r.bounded_slowdown for r in results]
        waits = [r.wait for r in results]
        span = max(r.start + r.run for r in results) - min(r.submit for r in results)
        busy = sum(r.procs * r.run for r in results)
        return cls(n, sum(waits) / n, max(waits), sum(slowdowns) / n, max(slowdowns),
                   sum(r.flow for r in results) / n, busy / (procs * span) if span > 0 else 0.0)


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """What :func:`simulate` returns: each job's result, the summary, the per-user ones."""

    policy: str
    procs: int
    jobs: tuple[JobResult, ...]
    summary: Summary
    per_user: dict[str, Summary]
    passes: int


def _pending(job: TraceJob) -> PendingJob:
    return PendingJob(id=job.id, seq=job.seq, user=job.user, submit=job.submit,
                      request=Request(nodes=1, cpus=float(job.procs)),
                      time_limit=job.estimate, queue=job.queue)


def simulate(jobs: Sequence[TraceJob], procs: int, policy: Policy,
             queues: Mapping[str, Queue] | None = None) -> SimulationResult:
    """Run ``jobs`` on a pool of ``procs`` processors under ``policy``."""
    nodes = single_pool(procs)
    queues = dict(queues or {})
    ledger = UsageLedger((policy.weights or Weights()).half_life)
    usage = ledger.as_mapping()
    arrivals = sorted(jobs, key=lambda j: (j.submit, j.seq))
    by_id = {job.id: job for job in arrivals}
    pending: dict[str, PendingJob] = {}
    running: dict[str, RunningJob] = {}
    ends: list[tuple[float, int, str]] = []  # (end, start order, job id)
    started: dict[str, float] = {}
    start_order = 0
    passes = 0
    next_arrival = 0

    def run_pass(now: float) -> None:
        nonlocal start_order, passes
        passes += 1
        state = QueueState(nodes, tuple(pending.values()), tuple(running.values()),
                           queues=queues, usage=usage)
        for start in schedule(state, now, policy).starts:
            job = by_id[start.job_id]
            waiting = pending.pop(start.job_id)
            running[job.id] = RunningJob(job.id, job.user, now, job.estimate,
                                         (NodeShare("pool", float(job.procs)),),
                                         queue=waiting.queue)
            started[job.id] = now
            heapq.heappush(ends, (now + job.run, start_order, job.id))
            start_order += 1

    while next_arrival < len(arrivals) or ends:
        if next_arrival < len(arrivals) and (not ends or arrivals[next_arrival].submit
                                             <= ends[0][0]):
            job = arrivals[next_arrival]
            next_arrival += 1
            pending[job.id] = _pending(job)
            run_pass(job.submit)
        else:
            now, _, job_id = heapq.heappop(ends)
            job = by_id[job_id]
            del running[job_id]
            if policy.weights is not None:
                ledger.charge(job.user, job.queue, job.procs * job.run, now)
            run_pass(now)

    results = tuple(JobResult(j.id, j.user, j.submit, started[j.id], j.run, j.procs)
                    for j in arrivals)
    per_user: dict[str, list[JobResult]] = {}
    for result in results:
        per_user.setdefault(result.user, []).append(result)
    return SimulationResult(policy.name, procs, results, Summary.of(results, procs),
                            {u: Summary.of(rs, procs) for u, rs in per_user.items()}, passes)
