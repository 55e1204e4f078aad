"""The scheduling policy: a pure function ``schedule(state, now, policy) -> Decisions``.

No I/O, no wall clock, no randomness: the agent calls it with the store's state and the
time; the simulator calls the very same function with a virtual clock.

One pass:

1. Order the pending jobs: by submission (``fcfs``, ``easy``, ``easy-sjbf``; a higher QoS
   first) or by multifactor priority (``fairshare``, see :mod:`corral.queue.fairshare`).
2. Walk that order, starting every job that may start and fits now (a gang on all its
   nodes at once, or not at all), until the first job that does not fit: the top job.
   Held jobs, unmet dependencies, full queues and arrays at their ``%N`` cap are passed
   over with their reason; they never block the jobs behind them.
3. The top job gets a reservation: the earliest time (``shadow``) at which, as running
   jobs end by their time limits, it fits — and the nodes it will take then. If running
   preemptible jobs of no higher QoS stand in its way, they are preempted instead and the
   reservation is at once.
4. Backfilling (all but ``fcfs``): each later job (in priority order, or shortest time
   limit first for ``easy-sjbf``) starts now if it fits now and either ends
   by ``shadow`` or fits in what the reservation leaves spare at ``shadow`` — so it never
   delays the top job (EASY backfilling, Lifka 1995; Mu'alem and Feitelson 2001).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from corral.errors import SpecError
from corral.queue.capacity import Capacity
from corral.queue.fairshare import (
    FairShare,
    PriorityFactors,
    Weights,
    factors,
    negated_priorities,
)
from corral.queue.model import (
    Decisions,
    DependencyKind,
    Node,
    NodeShare,
    Outcome,
    PendingJob,
    Preemption,
    QueueState,
    Reason,
    Request,
    RunningJob,
    Start,
)


@dataclass(frozen=True, slots=True)
class Policy:
    """How a pass orders and backfills. ``weights`` set: multifactor priority order."""

    name: str
    backfill: bool = True
    shortest_first_backfill: bool = False
    weights: Weights | None = None
    preemption: bool = True
    summary: str = field(default="", compare=False)


POLICIES: dict[str, Policy] = {
    "fcfs": Policy("fcfs", backfill=False,
                   summary="first come, first served; the first job that waits blocks all"),
    "easy": Policy("easy", summary="FCFS order with EASY backfilling"),
    "easy-sjbf": Policy("easy-sjbf", shortest_first_backfill=True,
                        summary="EASY, backfill candidates shortest time limit first"),
    "fairshare": Policy("fairshare", weights=Weights(),
                        summary="multifactor priority (age, fair-share, size, QoS), EASY "
                                "backfilling in that priority order"),
}
DEFAULT_POLICY = "fairshare"


def policy_named(name: str) -> Policy:
    """The policy called ``name``; a SpecError naming the accepted ones otherwise."""
    try:
        return POLICIES[name]
    except KeyError:
        raise SpecError([("policy", name, "one of " + ", ".join(POLICIES))],
                        "queue policy") from None


def active_users(state: QueueState) -> dict[str, int]:
    """How many users have a job pending or running, per queue (they split its share)."""
    pairs = {(job.queue, job.user) for job in state.pending}
    pairs.update((job.queue, job.user) for job in state.running)
    return dict(Counter(queue for queue, _ in pairs))


def priority_factors(state: QueueState, now: float,
                     weights: Weights | None = None) -> dict[str, PriorityFactors]:
    """Every pending job's priority factors (for ``corral ps --priority``)."""
    weights = weights or Weights()
    fair = FairShare(state.usage, state.queues, active_users(state))
    return {job.id: factors(job, now, weights, fair) for job in state.pending}


def ordered(state: QueueState, now: float, policy: Policy) -> list[PendingJob]:
    """The pending jobs, highest priority first (ties: submission order)."""
    if policy.weights is None:
        return sorted(state.pending, key=lambda j: (-j.qos, j.submit, j.seq))
    weights = policy.weights
    fair = FairShare(state.usage, state.queues, active_users(state))
    pending = state.pending
    keys = list(zip(negated_priorities(pending, now, weights, fair),
                    [job.submit for job in pending], [job.seq for job in pending], strict=True))
    return [pending[i] for i in sorted(range(len(pending)), key=keys.__getitem__)]


def dependency_reason(job: PendingJob, outcomes: Mapping[str, Outcome]) -> Reason | None:
    """Why the job's dependencies keep it waiting, or None once they are met."""
    if not job.after:
        return None
    waiting = False
    for dep in job.after:
        outcome = outcomes.get(dep.job_id)
        if outcome is None:
            waiting = True
        elif (dep.kind is DependencyKind.AFTER_OK and outcome is not Outcome.OK) or (
                dep.kind is DependencyKind.AFTER_NOT_OK and outcome is Outcome.OK):
            return Reason.DEPENDENCY_NEVER_SATISFIED
    return Reason.DEPENDENCY if waiting else None


class _Pass:
    """The mutable bookkeeping of one pass (free capacity, counts, decisions so far)."""

    def __init__(self, state: QueueState, now: float) -> None:
        self.state = state
        self.now = now
        self.free = Capacity.empty(state.nodes)
        for job in state.running:
            for share in job.placement:
                if share.node in self.free.index:
                    self.free.remove(share)
        self.limited_queues = {name for name, queue in state.queues.items()
                               if queue.max_running is not None}
        self.kinds = Counter((n.cpus, n.memory, n.gpus) for n in state.nodes)
        self.by_queue: dict[str, int] = {}
        self.by_array: dict[str, int] = {}
        for job in state.running:
            self.by_queue[job.queue] = self.by_queue.get(job.queue, 0) + 1
            if job.array is not None:
                self.by_array[job.array] = self.by_array.get(job.array, 0) + 1
        self.starts: list[Start] = []
        self.started_ends: list[tuple[float, tuple[NodeShare, ...]]] = []
        self.reasons: dict[str, Reason] = {}
        self.never_fits: dict[tuple[int, float, float, float], bool] = {}
        self.no_room_now: set[tuple[int, float, float, float]] = set()

    def static_reason(self, job: PendingJob) -> Reason | None:
        if job.held:
            return Reason.HELD
        if job.after:
            reason = dependency_reason(job, self.state.outcomes)
            if reason is not None:
                return reason
        shape = job.request.shape
        never = self.never_fits.get(shape)
        if never is None:
            never = self._never_fits(job.request)
            self.never_fits[shape] = never
        return Reason.NEVER_FITS if never else None

    def _never_fits(self, request: Request) -> bool:
        """True if not even the empty cluster has ``request.nodes`` nodes big enough."""
        gpus = max(1.0, request.gpus) if request.gpus > 0 else 0.0
        big_enough = sum(count for (cpus, memory, node_gpus), count in self.kinds.items()
                         if cpus >= request.cpus and memory >= request.memory
                         and node_gpus >= gpus)
        return big_enough < request.nodes

    def limit_reason(self, job: PendingJob) -> Reason | None:
        if job.array is None and job.queue not in self.limited_queues:
            return None
        queue = self.state.queues.get(job.queue)
        if (queue is not None and queue.max_running is not None
                and self.by_queue.get(job.queue, 0) >= queue.max_running):
            return Reason.QUEUE_LIMIT
        if (job.array is not None and job.array_limit is not None
                and self.by_array.get(job.array, 0) >= job.array_limit):
            return Reason.ARRAY_TASK_LIMIT
        return None

    def try_start(self, job: PendingJob, spare: Capacity | None = None) -> bool:
        """Start the job now if it fits (in ``spare`` too, when given)."""
        request = job.request
        shape = request.shape
        if shape in self.no_room_now:
            return False
        nodes = self.free.fitting_nodes(request, spare)
        if nodes is None:
            if spare is None:
                self.no_room_now.add(shape)
            return False
        placement = self.free.take(nodes, request, spare)
        self.starts.append(Start(job.id, placement))
        self.started_ends.append((self.now + job.time_limit, placement))
        self.by_queue[job.queue] = self.by_queue.get(job.queue, 0) + 1
        if job.array is not None:
            self.by_array[job.array] = self.by_array.get(job.array, 0) + 1
        return True


def _release_until_fits(room: Capacity, request: Request,
                        releases: Sequence[tuple[float, tuple[NodeShare, ...]]]) -> int | None:
    """Give back ``releases`` in order (those with the same key together) until ``request``
    fits in ``room``; how many were given back (0: it fits already), or None if it never
    fits. Counts the nodes that fit as it goes, so each release costs its own nodes only."""
    fits = [room.node_fits(i, request) for i in range(len(room.cpus))]
    count = sum(fits)
    k = 0
    while count < request.nodes:
        if k >= len(releases):
            return None
        key = releases[k][0]
        while k < len(releases) and releases[k][0] == key:
            for share in releases[k][1]:
                if share.node in room.index:
                    i = room.give(share)
                    if not fits[i] and room.node_fits(i, request):
                        fits[i] = True
                        count += 1
            k += 1
    return k


def _victims(state: QueueState, top: PendingJob, free: Capacity) -> list[RunningJob] | None:
    """Preemptible running jobs to stop so ``top`` fits now (newest first), or None."""
    if top.preemptible:
        return None
    candidates = sorted((job for job in state.running if job.preemptible and not job.preempting
                         and job.qos <= top.qos), key=lambda j: (-j.start, j.id))
    stopping = [job for job in state.running if job.preempting]
    if not candidates and not stopping:
        return None
    room = free.copy()
    for job in stopping:
        for share in job.placement:
            if share.node in room.index:
                room.give(share)
    needed = _release_until_fits(room, top.request,
                                 [(float(k), job.placement) for k, job in enumerate(candidates)])
    return None if needed is None else candidates[:needed]


def _reservation(state: QueueState, now: float, top: PendingJob, work: _Pass,
                 ending_now: set[str]) -> tuple[float, Capacity]:
    """When ``top`` can start at the earliest, and what is spare then once it has its
    nodes. Running jobs end by their time limits (those in ``ending_now``: now)."""
    ends: list[tuple[float, tuple[NodeShare, ...]]] = [
        (now if job.id in ending_now else max(now, job.expected_end), job.placement)
        for job in state.running]
    ends.extend(work.started_ends)
    ends.sort(key=lambda e: e[0])
    future = work.free.copy()
    needed = _release_until_fits(future, top.request, ends)
    nodes = future.fitting_nodes(top.request)
    if needed is None or nodes is None:  # cannot happen for a job that fits the empty cluster
        return float("inf"), future
    shadow = ends[needed - 1][0] if needed else now
    future.take(nodes, top.request)
    return shadow, future


def schedule(state: QueueState, now: float, policy: Policy | None = None) -> Decisions:
    """One pass of ``policy`` (default: fairshare) over ``state`` at time ``now``."""
    policy = policy or POLICIES[DEFAULT_POLICY]
    work = _Pass(state, now)
    reasons = work.reasons
    queue = ordered(state, now, policy)
    top: PendingJob | None = None
    rest: list[PendingJob] = []
    for position, job in enumerate(queue):
        reason = work.static_reason(job) or work.limit_reason(job)
        if reason is not None:
            reasons[job.id] = reason
        elif not work.try_start(job):
            top = job
            rest = queue[position + 1:]
            break
    if top is None:
        return Decisions(tuple(work.starts), (), reasons)
    reasons[top.id] = Reason.RESOURCES

    preemptions: list[Preemption] = []
    ending_now: set[str] = {job.id for job in state.running if job.preempting}
    if policy.preemption:
        victims = _victims(state, top, work.free)
        if victims:
            preemptions = [Preemption(v.id, top.id) for v in victims]
            ending_now.update(v.id for v in victims)

    if not policy.backfill:
        limited = work.limited_queues
        for job in rest:
            if job.held or job.after or job.array is not None or job.queue in limited:
                reasons[job.id] = (work.static_reason(job) or work.limit_reason(job)
                                   or Reason.PRIORITY)
            elif work.never_fits.get(job.request.shape) is False:
                reasons[job.id] = Reason.PRIORITY
            else:
                reasons[job.id] = work.static_reason(job) or Reason.PRIORITY
        return Decisions(tuple(work.starts), tuple(preemptions), reasons, None)

    shadow, spare = _reservation(state, now, top, work, ending_now)
    if policy.shortest_first_backfill:
        rest = sorted(rest, key=lambda j: j.time_limit)  # stable: priority order on ties
    _backfill(rest, work, shadow, spare)
    return Decisions(tuple(work.starts), tuple(preemptions), reasons, (top.id, shadow))


def _backfill(candidates: Iterable[PendingJob], work: _Pass, shadow: float,
              spare: Capacity) -> None:
    """Start each candidate that fits now without delaying the reservation at ``shadow``.

    The common case, a plain job whose shape already failed in this pass, costs a few
    dictionary lookups: free capacity and ``spare`` only shrink during a pass."""
    reasons = work.reasons
    now = work.now
    no_room_now = work.no_room_now
    never_fits = work.never_fits
    no_spare: set[tuple[int, float, float, float]] = set()
    limited = work.limited_queues
    priority = Reason.PRIORITY
    for job in candidates:
        shape = job.request.shape
        if (job.held or job.after or job.array is not None or job.queue in limited
                or shape not in never_fits):
            reason = work.static_reason(job) or work.limit_reason(job)
            if reason is not None:
                reasons[job.id] = reason
                continue
        elif never_fits[shape]:
            reasons[job.id] = Reason.NEVER_FITS
            continue
        if shape in no_room_now:
            reasons[job.id] = priority
        elif now + job.time_limit <= shadow:
            if not work.try_start(job):
                reasons[job.id] = priority
        elif shape in no_spare or not work.try_start(job, spare):
            no_spare.add(shape)
            reasons[job.id] = priority


def single_pool(cpus: float) -> tuple[Node, ...]:
    """A cluster that is one pool of processors (how SWF traces see a machine)."""
    return (Node("pool", cpus),)


def pool_request(procs: float) -> Request:
    """A request for ``procs`` processors of a :func:`single_pool`."""
    return Request(nodes=1, cpus=procs)


def requeue_after_failure(job: PendingJob) -> PendingJob | None:
    """The job to queue again after a failed attempt (one retry fewer, same place in
    line: its submission time and order are kept), or None when no retry is left."""
    if job.retries_left <= 0:
        return None
    return replace(job, retries_left=job.retries_left - 1, held=False)
