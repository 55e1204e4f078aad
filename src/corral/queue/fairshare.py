"""Multifactor priority (Slurm's priority/multifactor, simplified) and decayed usage.

priority = w_age·age + w_fairshare·fairshare + w_size·size + w_qos·qos, each factor in
[0, 1]:

- age: time waited over ``max_age`` (capped at 1), so every job rises and none starves;
- fairshare: 2^(-U/S) for the job's queue times the same for its user, where U is the
  normalized decayed usage and S the normalized share (a queue's share is its weight over
  all queues' weights; its active users split it evenly) — Slurm's classic formula;
- size: small jobs first, relative to time (Slurm's SMALL_RELATIVE_TO_TIME flavour): one
  minus the job's CPU-seconds over ``max_area``, on a log scale, so short narrow jobs rise;
- qos: the job's QoS (0..1).

Usage decays with a half-life. Only ratios of usage matter, so a :class:`UsageLedger`
keeps every figure scaled to one epoch instead of decaying all of them at every pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.queue.model import PendingJob, Queue

TOTAL_USERS = "*users"  # keys of a usage mapping that hold the sums (optional)
TOTAL_QUEUES = "*queues"
QUEUE_PREFIX = "queue:"


@dataclass(frozen=True, slots=True)
class Weights:
    """The factors' weights and scales (a ``corral queue`` config may set them).

    The defaults were tuned on the KTH SP2 trace (README, "The queue policy"): age
    dominates — 120,000 over 30 days is 4,000 a day — so no job waits much longer than in
    submission order, while the size factor lets a short, narrow job overtake jobs that
    came up to ~8 hours (1,300 / 4,000 a day) before it, and fair-share and QoS break
    near-ties (25 is ~9 minutes of waiting; 1,000 of QoS is 6 hours)."""

    age: float = 120_000.0
    fairshare: float = 25.0
    size: float = 1_300.0
    qos: float = 1_000.0
    max_age: float = 30 * 86400.0  # waiting this long gives the full age factor
    max_area: float = 100 * 7 * 86400.0  # CPU-seconds at which the size factor reaches 0
    half_life: float = 7 * 86400.0  # of usage


@dataclass(frozen=True, slots=True)
class PriorityFactors:
    """One job's factors and their weighted sum (``corral ps --priority`` shows these)."""

    age: float
    fairshare: float
    size: float
    qos: float
    priority: float


class FairShare:
    """Fair-share factors for one pass: each user's and queue's, computed once."""

    def __init__(self, usage: Mapping[str, float], queues: Mapping[str, Queue],
                 active_users: Mapping[str, int]) -> None:
        self.usage = usage
        self.active_users = active_users
        weights = {name: q.weight for name, q in queues.items()}
        for name in active_users:
            weights.setdefault(name, 1.0)
        total_weight = sum(w for name, w in weights.items() if name in active_users) or 1.0
        self.queue_share = {name: w / total_weight for name, w in weights.items()}
        self.user_total = usage.get(TOTAL_USERS) or sum(
            v for k, v in usage.items() if not k.startswith(("*", QUEUE_PREFIX)))
        self.queue_total = usage.get(TOTAL_QUEUES) or sum(
            v for k, v in usage.items() if k.startswith(QUEUE_PREFIX))
        self._cache: dict[tuple[str, str], float] = {}

    def factor(self, user: str, queue: str) -> float:
        key = (user, queue)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        share = self.queue_share.get(queue, 1.0)
        queue_usage = (self.usage.get(QUEUE_PREFIX + queue, 0.0) / self.queue_total
                       if self.queue_total > 0 else 0.0)
        user_share = share / max(1, self.active_users.get(queue, 0))
        user_usage = self.usage.get(user, 0.0) / self.user_total if self.user_total > 0 else 0.0
        value: float = 2.0 ** (-queue_usage / share) * 2.0 ** (-user_usage / user_share)
        self._cache[key] = value
        return value


def factors(job: PendingJob, now: float, weights: Weights, fair: FairShare) -> PriorityFactors:
    """The job's priority factors at ``now``."""
    age = min(1.0, max(0.0, now - job.submit) / weights.max_age)
    fairshare = fair.factor(job.user, job.queue)
    area = job.request.nodes * job.request.cpus * job.time_limit
    size = 1.0 - min(1.0, math.log1p(area) / math.log1p(weights.max_area))
    qos = job.qos
    priority = (weights.age * age + weights.fairshare * fairshare + weights.size * size
                + weights.qos * qos)
    return PriorityFactors(age, fairshare, size, qos, priority)


def negated_priorities(jobs: Sequence[PendingJob], now: float, weights: Weights,
                       fair: FairShare) -> list[float]:
    """Each job's priority, as :func:`factors` computes it, negated (to sort the highest
    first) and without per-job objects: a pass orders thousands of jobs."""
    age_scale = weights.age / weights.max_age
    size_scale = weights.size / math.log1p(weights.max_area)
    size_full, qos_weight = weights.size, weights.qos
    fair_weight, fair_factor = weights.fairshare, fair.factor
    log1p = math.log1p
    result = []
    for job in jobs:
        waited = now - job.submit
        age = weights.age if waited >= weights.max_age else (
            waited * age_scale if waited > 0 else 0.0)
        request = job.request
        size = size_full - min(size_full, log1p(request.nodes * request.cpus * job.time_limit)
                               * size_scale)
        result.append(-(age + size + fair_weight * fair_factor(job.user, job.queue)
                        + qos_weight * job.qos))
    return result


class UsageLedger:
    """Decayed usage per user and per queue, with running sums; ``as_mapping`` is what a
    :class:`~corral.queue.model.QueueState` takes. Amounts are CPU-seconds; each is stored
    multiplied by 2^((t - epoch)/half_life), which keeps ratios right with no decay step."""

    def __init__(self, half_life: float, epoch: float = 0.0) -> None:
        self.half_life = half_life
        self.epoch = epoch
        self.values: dict[str, float] = {TOTAL_USERS: 0.0, TOTAL_QUEUES: 0.0}

    def charge(self, user: str, queue: str, amount: float, at: float) -> None:
        scaled = amount * 2.0 ** ((at - self.epoch) / self.half_life)
        if scaled > 1e200:  # rebase before floats overflow (after ~600 half-lives)
            self._rebase(at)
            scaled = amount
        values = self.values
        values[user] = values.get(user, 0.0) + scaled
        key = QUEUE_PREFIX + queue
        values[key] = values.get(key, 0.0) + scaled
        values[TOTAL_USERS] += scaled
        values[TOTAL_QUEUES] += scaled

    def _rebase(self, at: float) -> None:
        factor = 2.0 ** (-(at - self.epoch) / self.half_life)
        self.values = {k: v * factor for k, v in self.values.items()}
        self.epoch = at

    def decayed(self, key: str, at: float) -> float:
        """The usage of ``key`` as of ``at`` in CPU-seconds (for display)."""
        decay: float = 2.0 ** (-(at - self.epoch) / self.half_life)
        return self.values.get(key, 0.0) * decay

    def as_mapping(self) -> Mapping[str, float]:
        return self.values
