"""The queue policy, a pure function of (state, now), tested with a fake clock.

Gangs start whole or not at all; backfilling never delays the top job (a property over
random small workloads); fair-share follows decayed usage and queue weights split
capacity; preemption, arrays, dependencies, retries, holds and queue limits; fractional
GPUs never add up to more than one GPU.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from corral.errors import SpecError
from corral.queue import (
    Dependency,
    DependencyKind,
    Node,
    Outcome,
    PendingJob,
    Preemption,
    Queue,
    QueueState,
    Reason,
    Request,
    RunningJob,
    policy_named,
    priority_factors,
    schedule,
)
from corral.queue.capacity import Capacity
from corral.queue.fairshare import FairShare, UsageLedger, Weights, negated_priorities
from corral.queue.model import NodeShare
from corral.queue.policy import POLICIES, Policy, active_users, requeue_after_failure
from corral.queue.simulate import simulate
from corral.queue.swf import TraceJob

EASY = POLICIES["easy"]
FCFS = POLICIES["fcfs"]


def job(job_id: str, seq: int = 0, *, nodes: int = 1, cpus: float = 1, gpus: float = 0,
        limit: float = 100, user: str = "alice", submit: float = 0, **extra: object) -> PendingJob:
    return PendingJob(id=job_id, seq=seq, user=user, submit=submit,
                      request=Request(nodes=nodes, cpus=cpus, gpus=gpus), time_limit=limit,
                      **extra)  # type: ignore[arg-type]


def running(job_id: str, node: str, cpus: float, *, start: float = 0, limit: float = 100,
            gpus: tuple[tuple[int, float], ...] = (), **extra: object) -> RunningJob:
    return RunningJob(id=job_id, user="zoe", start=start, time_limit=limit,
                      placement=(NodeShare(node, cpus, 0.0, gpus),), **extra)  # type: ignore[arg-type]


def nodes(count: int, cpus: float = 4, gpus: int = 0) -> tuple[Node, ...]:
    return tuple(Node(f"n{i}", cpus, 0.0, gpus) for i in range(count))


def started(state: QueueState, now: float = 0, policy: Policy = EASY) -> list[str]:
    return [s.job_id for s in schedule(state, now, policy).starts]


# -- gangs ---------------------------------------------------------------------------------

def test_a_gang_starts_on_all_its_nodes_at_once_or_not_at_all() -> None:
    busy = running("r", "n1", 4, limit=50)
    state = QueueState(nodes(3), pending=(job("gang", nodes=3, cpus=4),), running=(busy,))
    decisions = schedule(state, 0, FCFS)
    assert decisions.starts == ()
    assert decisions.reasons == {"gang": Reason.RESOURCES}
    state = QueueState(nodes(3), pending=(job("gang", nodes=3, cpus=4),))
    (start,) = schedule(state, 0, FCFS).starts
    assert sorted(share.node for share in start.placement) == ["n0", "n1", "n2"]


def test_a_job_no_set_of_nodes_can_hold_never_blocks_the_queue() -> None:
    state = QueueState(nodes(2), pending=(job("huge", nodes=3), job("small", 1)))
    decisions = schedule(state, 0, FCFS)
    assert started(state, 0, FCFS) == ["small"]
    assert decisions.reasons == {"huge": Reason.NEVER_FITS}


# -- backfilling ---------------------------------------------------------------------------

def test_easy_backfills_a_job_that_ends_before_the_reservation_and_not_one_after() -> None:
    state = QueueState(nodes(1), running=(running("r", "n0", 3, limit=10),), pending=(
        job("top", 0, cpus=4, limit=5), job("short", 1, limit=10), job("long", 2, limit=11)))
    decisions = schedule(state, 0, EASY)
    assert [s.job_id for s in decisions.starts] == ["short"]
    assert decisions.reservation == ("top", 10)
    assert decisions.reasons == {"top": Reason.RESOURCES, "long": Reason.PRIORITY}
    assert started(state, 0, FCFS) == []


def test_a_long_job_backfills_on_what_the_reservation_leaves_spare() -> None:
    # top needs two whole nodes: n0 (free at 10) and n1 (free now); n2 is not needed
    state = QueueState(nodes(3), running=(running("r", "n0", 4, limit=10),
                                          running("s", "n2", 2, limit=20)),
                       pending=(job("top", 0, nodes=2, cpus=4, limit=5),
                                job("too-big", 1, cpus=3, limit=1000),
                                job("beside", 2, cpus=2, limit=1000),
                                job("short", 3, cpus=3, limit=10)))
    decisions = schedule(state, 0, EASY)
    placed = {s.job_id: s.placement[0].node for s in decisions.starts}
    assert placed == {"beside": "n2", "short": "n1"}
    assert decisions.reservation == ("top", 10)
    assert decisions.reasons["too-big"] is Reason.PRIORITY


def test_sjbf_tries_the_shortest_candidate_first() -> None:
    pending = (job("top", 0, cpus=4), job("longer", 1, limit=50), job("shorter", 2, limit=40))
    state = QueueState(nodes(1), running=(running("r", "n0", 3, limit=60),), pending=pending)
    assert started(state, 0, EASY) == ["longer"]
    assert started(state, 0, POLICIES["easy-sjbf"]) == ["shorter"]


def _run_until_started(state: QueueState, policy: Policy, target: str) -> float:
    """Run passes from t=10, each job lasting exactly its limit, until ``target`` starts
    (usage stays as it was, so the priority order does not change on the way)."""
    now = 10.0
    pending = {j.id: j for j in state.pending}
    active = {j.id: j for j in state.running}
    for _ in range(200):
        current = QueueState(state.nodes, tuple(pending.values()), tuple(active.values()),
                             usage=state.usage)
        for start in schedule(current, now, policy).starts:
            if start.job_id == target:
                return now
            waiting = pending.pop(start.job_id)
            active[start.job_id] = RunningJob(waiting.id, waiting.user, now,
                                              waiting.time_limit, start.placement)
        now = min(j.expected_end for j in active.values())
        active = {k: j for k, j in active.items() if j.expected_end > now}
    raise AssertionError(f"{target} never started")


requests = st.tuples(st.integers(1, 2), st.integers(1, 4), st.sampled_from([0, 0.5, 1]),
                     st.integers(1, 12))


@settings(max_examples=int(os.environ.get("CORRAL_HYPOTHESIS_EXAMPLES", "150")), deadline=None)
@given(node_count=st.integers(1, 3), gpus=st.integers(0, 2),
       workload=st.lists(requests, min_size=2, max_size=7),
       users=st.lists(st.sampled_from(["ann", "ben", "cid"]), min_size=7, max_size=7),
       policy_name=st.sampled_from(["easy", "easy-sjbf", "fairshare"]))
def test_backfilling_never_delays_the_top_jobs_reservation(
        node_count: int, gpus: int, workload: Sequence[tuple[int, int, float, int]],
        users: list[str], policy_name: str) -> None:
    pending = tuple(job(f"j{i}", i, nodes=n, cpus=c, gpus=g, limit=t, user=users[i],
                        submit=float(i))
                    for i, (n, c, g, t) in enumerate(workload))
    state = QueueState(nodes(node_count, 4, gpus), pending=pending,
                       usage={"ann": 50.0, "ben": 5.0})
    policy = policy_named(policy_name)
    no_backfill = replace(policy, backfill=False)  # same order, no backfilling
    first = schedule(state, 10, no_backfill)
    tops = [j for j, r in first.reasons.items() if r is Reason.RESOURCES]
    assume(tops)  # some job has to wait
    (top,) = tops
    decisions = schedule(state, 10, policy)
    began = {start.job_id for start in decisions.starts}
    assert began.isdisjoint(decisions.reasons)  # every job starts or says why it waits
    assert began | set(decisions.reasons) == {j.id for j in pending}
    planned = decisions.reservation
    assert planned is not None and planned[0] == top
    with_backfill = _run_until_started(state, policy, top)
    without = _run_until_started(state, no_backfill, top)
    assert with_backfill <= without
    assert with_backfill == planned[1]  # exact limits: the top job starts as planned


# -- fair-share, weights, priority -----------------------------------------------------------

def test_fair_share_puts_the_user_with_less_decayed_usage_first() -> None:
    ledger = UsageLedger(half_life=100)
    ledger.charge("alice", "default", 100, at=0)  # long ago: halves twice by t=200
    ledger.charge("bob", "default", 60, at=200)
    assert ledger.decayed("alice", 200) == pytest.approx(25)
    state = QueueState(nodes(1, cpus=1), usage=ledger.as_mapping(), pending=(
        job("b", 0, user="bob", submit=200), job("a", 1, user="alice", submit=200)))
    assert started(state, 200, POLICIES["fairshare"]) == ["a"]
    factors = priority_factors(state, 200)
    assert factors["a"].fairshare > factors["b"].fairshare
    assert started(state, 200, EASY) == ["b"]  # submission order without fair-share


def test_older_jobs_rise_by_age() -> None:
    weights = Weights(fairshare=0, size=0, qos=0)
    state = QueueState(nodes(1, cpus=1), pending=(job("new", 0, submit=100),
                                                  job("old", 1, submit=0)))
    factors = priority_factors(state, 200, weights)
    assert factors["old"].age > factors["new"].age
    assert factors["old"].priority > factors["new"].priority


def test_the_fast_priorities_are_the_factors_sums() -> None:
    ledger = UsageLedger(half_life=50)
    ledger.charge("bob", "default", 500, at=10)
    pending = tuple(job(f"j{i}", i, user=("alice", "bob")[i % 2], submit=i * 7.0,
                        cpus=1 + i % 3, limit=10 ** (i % 4), qos=(i % 2) / 2) for i in range(8))
    state = QueueState(nodes(1), pending=pending, usage=ledger.as_mapping())
    weights = Weights(max_age=20, max_area=1e4)
    fair = FairShare(state.usage, state.queues, active_users(state))
    fast = negated_priorities(pending, 60, weights, fair)
    slow = priority_factors(state, 60, weights)
    assert [-p for p in fast] == pytest.approx([slow[j.id].priority for j in pending])


def test_queue_weights_split_the_machine() -> None:
    jobs = [TraceJob(f"{q}{i}", 2 * i + k, f"user-{q}", q, 0, 1, 100, 100)
            for i in range(200) for k, q in enumerate(("big", "small"))]
    queues = {"big": Queue("big", weight=3), "small": Queue("small", weight=1)}
    policy = Policy("fairshare", shortest_first_backfill=True,
                    weights=Weights(age=0, size=0, half_life=1e9))
    result = simulate(jobs, 8, policy, queues)
    busy = {"big": 0.0, "small": 0.0}
    for done in result.jobs:
        if done.start < 2500:  # both queues still have work waiting
            busy[done.id.rstrip("0123456789")] += done.run
    assert busy["big"] / busy["small"] == pytest.approx(3, rel=0.15)


def test_qos_goes_first_in_submission_order() -> None:
    state = QueueState(nodes(1, cpus=1), pending=(job("plain", 0), job("urgent", 1, qos=1.0)))
    assert started(state, 0, EASY) == ["urgent"]


# -- preemption ----------------------------------------------------------------------------

def test_a_blocked_job_preempts_a_preemptible_job_and_waits_for_it() -> None:
    victim = running("scavenger", "n0", 4, preemptible=True)
    state = QueueState(nodes(1), running=(victim,), pending=(job("urgent", qos=0.5, cpus=4),))
    decisions = schedule(state, 0, EASY)
    assert decisions.preemptions == (Preemption("scavenger", "urgent"),)
    assert decisions.starts == ()
    assert decisions.reasons == {"urgent": Reason.RESOURCES}
    stopping = RunningJob(**{**{f: getattr(victim, f) for f in victim.__slots__},  # type: ignore[arg-type]
                             "preempting": True})
    again = schedule(QueueState(nodes(1), running=(stopping,), pending=state.pending), 1, EASY)
    assert again.preemptions == ()  # already told to stop: no second signal


def test_no_preemption_of_jobs_not_marked_preemptible_or_of_higher_qos() -> None:
    for victim in (running("r", "n0", 4), running("r", "n0", 4, preemptible=True, qos=1.0)):
        state = QueueState(nodes(1), running=(victim,), pending=(job("j", qos=0.5, cpus=4),))
        assert schedule(state, 0, EASY).preemptions == ()


# -- arrays, dependencies, retries, holds, limits ------------------------------------------

def test_an_array_runs_at_most_its_cap_at_once() -> None:
    tasks = tuple(job(f"a_{i}", i, array="a", array_limit=2) for i in range(5))
    decisions = schedule(QueueState(nodes(1, cpus=8), pending=tasks), 0, EASY)
    assert [s.job_id for s in decisions.starts] == ["a_0", "a_1"]
    assert {decisions.reasons[f"a_{i}"] for i in (2, 3, 4)} == {Reason.ARRAY_TASK_LIMIT}
    one_running = (running("a_9", "n0", 1, array="a"),)
    state = QueueState(nodes(1, cpus=8), pending=tasks, running=one_running)
    assert started(state) == ["a_0"]


@pytest.mark.parametrize(("kind", "outcome", "expected"), [
    (DependencyKind.AFTER_OK, None, Reason.DEPENDENCY),
    (DependencyKind.AFTER_OK, Outcome.OK, None),
    (DependencyKind.AFTER_OK, Outcome.FAILED, Reason.DEPENDENCY_NEVER_SATISFIED),
    (DependencyKind.AFTER_ANY, None, Reason.DEPENDENCY),
    (DependencyKind.AFTER_ANY, Outcome.OK, None),
    (DependencyKind.AFTER_ANY, Outcome.FAILED, None),
    (DependencyKind.AFTER_NOT_OK, None, Reason.DEPENDENCY),
    (DependencyKind.AFTER_NOT_OK, Outcome.FAILED, None),
    (DependencyKind.AFTER_NOT_OK, Outcome.OK, Reason.DEPENDENCY_NEVER_SATISFIED),
])
def test_each_dependency_kind(kind: DependencyKind, outcome: Outcome | None,
                              expected: Reason | None) -> None:
    outcomes = {} if outcome is None else {"first": outcome}
    pending = (job("then", after=(Dependency(kind, "first"),)), job("other", 1))
    decisions = schedule(QueueState(nodes(1), pending=pending, outcomes=outcomes), 0, EASY)
    assert decisions.reasons.get("then") == expected
    assert "other" in [s.job_id for s in decisions.starts]  # a waiting job blocks no one
    assert ("then" in [s.job_id for s in decisions.starts]) == (expected is None)


def test_retries_are_counted_down_and_keep_the_jobs_place() -> None:
    attempt = job("flaky", 7, submit=3, retries_left=2)
    seen = []
    while (again := requeue_after_failure(attempt)) is not None:
        seen.append(again.retries_left)
        assert (again.submit, again.seq) == (3, 7)
        attempt = again
    assert seen == [1, 0]


def test_held_jobs_and_full_queues_wait_with_their_reason() -> None:
    queues = {"small": Queue("small", max_running=1)}
    pending = (job("held", 0, held=True), job("q1", 1, queue="small"),
               job("q2", 2, queue="small"), job("free", 3))
    decisions = schedule(QueueState(nodes(1), pending=pending, queues=queues), 0, EASY)
    assert [s.job_id for s in decisions.starts] == ["q1", "free"]
    assert decisions.reasons == {"held": Reason.HELD, "q2": Reason.QUEUE_LIMIT}


# -- fractional GPUs -----------------------------------------------------------------------

def test_two_half_gpu_jobs_share_one_gpu_and_a_third_waits() -> None:
    pending = tuple(job(f"h{i}", i, gpus=g) for i, g in enumerate((0.5, 0.5, 0.3)))
    decisions = schedule(QueueState(nodes(1, gpus=1), pending=pending), 0, EASY)
    assert [s.job_id for s in decisions.starts] == ["h0", "h1"]
    assert all(s.placement[0].gpus == ((0, 0.5),) for s in decisions.starts)
    assert decisions.reasons == {"h2": Reason.RESOURCES}


@settings(max_examples=100, deadline=None)
@given(fractions=st.lists(st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 1.0, 2.0]),
                          min_size=1, max_size=20),
       held=st.lists(st.sampled_from([0.1, 0.3, 0.5]), max_size=3))
def test_fractional_gpus_never_exceed_a_whole_gpu(fractions: list[float],
                                                   held: list[float]) -> None:
    already = tuple(running(f"r{i}", "n0", 0, gpus=((i % 2, f),)) for i, f in enumerate(held))
    pending = tuple(job(f"g{i}", i, cpus=0, gpus=f) for i, f in enumerate(fractions))
    state = QueueState(nodes(1, cpus=64, gpus=2), pending=pending, running=already)
    load = [0.0, 0.0]
    shares = [s for r in already for s in r.placement]
    shares += [s for start in schedule(state, 0, EASY).starts for s in start.placement]
    for share in shares:
        for gpu, fraction in share.gpus:
            load[gpu] += fraction
    assert all(total <= 1.0 + 1e-9 for total in load)


def test_capacity_is_given_back_exactly() -> None:
    free = Capacity.empty(nodes(1, gpus=1))
    (share,) = free.take([0], Request(cpus=2, gpus=0.5))
    free.give(share)
    assert (free.cpus, free.gpus) == ([4.0], [[1.0]])


# -- bad input -----------------------------------------------------------------------------

def test_an_unknown_policy_names_the_known_ones() -> None:
    with pytest.raises(SpecError, match="fcfs, easy, easy-sjbf, fairshare"):
        policy_named("lottery")


@pytest.mark.parametrize("gpus", [-1, 1.5])
def test_a_gpu_request_is_a_fraction_or_whole_gpus(gpus: float) -> None:
    with pytest.raises(SpecError, match="gpus"):
        Request(gpus=gpus)


def test_memory_is_a_resource_like_cpus() -> None:
    big = (Node("n0", 8, memory=1024), Node("n1", 8, memory=4096))
    pending = (PendingJob("m", 0, "alice", 0, Request(cpus=1, memory=2048), 10),
               PendingJob("huge", 1, "alice", 0, Request(cpus=1, memory=8192), 10))
    decisions = schedule(QueueState(big, pending=pending), 0, EASY)
    assert [(s.job_id, s.placement[0].node) for s in decisions.starts] == [("m", "n1")]
    assert decisions.reasons == {"huge": Reason.NEVER_FITS}


def test_usage_keeps_its_ratios_over_many_half_lives() -> None:
    ledger = UsageLedger(half_life=1.0)
    ledger.charge("alice", "default", 10, at=0)
    ledger.charge("bob", "default", 10, at=700)  # 2**700 would overflow: the ledger rebases
    ledger.charge("alice", "default", 30, at=700)
    assert ledger.decayed("alice", 700) == pytest.approx(30)
    assert ledger.decayed("bob", 701) == pytest.approx(5)
