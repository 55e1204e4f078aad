"""One pass of the queue policy over a big queue: 10,000 pending jobs on 1,000 nodes.

    python bench/policy_pass.py              # 2 warm-up passes + 9 timed passes per policy
    python bench/policy_pass.py --rounds 21 --pending 20000 --nodes 2000

The goal (issue 9): under 50 ms for one pass of corral's default policy (``fairshare``).
The cluster is 1,000 nodes of 64 CPUs, 512 GiB and 8 GPUs, about 90% taken by running jobs
(single-node and gang jobs, some on half GPUs), so the top job waits and every other job
is a backfilling candidate. The 10,000 pending jobs are drawn (fixed seed) from 40 users in
3 queues: 1 to 16 nodes, 1 to 64 CPUs, no GPU, half a GPU or 1 to 8 GPUs, limits from a
minute to two days; a few are held, depend on other jobs, or belong to capped arrays.

Every policy runs the same pass (same state, same clock) in turn, round after round, so
machine noise hits them alike; the table gives the median and the ratio to a plain FCFS
pass measured in the same run (the baseline: order the queue, start what fits, stop at
the first job that waits). The tests never assert timing; this does.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from corral.console import columns
from corral.queue import (
    Dependency,
    DependencyKind,
    Node,
    NodeShare,
    Outcome,
    PendingJob,
    Queue,
    QueueState,
    Request,
    RunningJob,
    schedule,
)
from corral.queue.fairshare import UsageLedger
from corral.queue.policy import POLICIES

GOAL_MS = 50.0
CPUS, MEMORY, GPUS = 64, 512 * 1024, 8


def cluster(count: int) -> tuple[Node, ...]:
    return tuple(Node(f"node{i:04d}", CPUS, MEMORY, GPUS) for i in range(count))


def running_jobs(nodes: tuple[Node, ...], rng: random.Random) -> tuple[RunningJob, ...]:
    """Fill about 90% of every node: whole-node gangs, half-GPU jobs, CPU-only jobs."""
    jobs: list[RunningJob] = []
    for i, node in enumerate(nodes):
        start = rng.uniform(-86400, 0)
        limit = rng.choice((3600, 4 * 3600, 86400, 2 * 86400))
        if i % 3 == 0:  # 7 GPUs and 56 CPUs of a (gang) job, half a GPU for a notebook
            jobs.append(RunningJob(f"r{i}a", f"user{i % 40}", start, limit,
                                   (NodeShare(node.name, 56, 400 * 1024,
                                              tuple((g, 1.0) for g in range(7))),),
                                   queue="train", preemptible=i % 6 == 0))
            jobs.append(RunningJob(f"r{i}b", f"user{(i + 7) % 40}", start, limit,
                                   (NodeShare(node.name, 2, 8 * 1024, ((7, 0.5),)),)))
        else:
            used = rng.randint(52, 63)
            jobs.append(RunningJob(f"r{i}", f"user{i % 40}", start, limit,
                                   (NodeShare(node.name, used, 64 * 1024,
                                              tuple((g, 1.0) for g in range(GPUS))),)))
    return tuple(jobs)


def pending_jobs(count: int, rng: random.Random) -> tuple[PendingJob, ...]:
    jobs = []
    for i in range(count):
        gpus = rng.choice((0, 0, 0.5, 1, 2, 4, 8))
        nodes = rng.choice((1, 1, 1, 1, 2, 4, 8, 16))
        after: tuple[Dependency, ...] = ()
        if i % 50 == 7:
            after = (Dependency(DependencyKind.AFTER_OK, f"p{i - 7}"),)
        array = f"arr{i // 100}" if i % 10 == 3 else None
        jobs.append(PendingJob(
            id=f"p{i}", seq=i, user=f"user{rng.randrange(40)}",
            submit=-rng.uniform(0, 3 * 86400),
            request=Request(nodes=nodes, cpus=rng.choice((1, 2, 4, 8, 16, 32, 64)), gpus=gpus,
                            memory=rng.choice((1024, 8192, 65536))),
            time_limit=rng.choice((60, 600, 3600, 4 * 3600, 86400, 2 * 86400)),
            queue=rng.choice(("train", "train", "dev", "batch")),
            qos=rng.choice((0.0, 0.0, 0.0, 0.5)),
            after=after, array=array, array_limit=4 if array else None, held=i % 97 == 0))
    return tuple(jobs)


def build_state(pending: int, node_count: int, seed: int = 9) -> QueueState:
    rng = random.Random(seed)
    nodes = cluster(node_count)
    ledger = UsageLedger(half_life=7 * 86400)
    for user in range(40):
        ledger.charge(f"user{user}", rng.choice(("train", "dev", "batch")),
                      rng.uniform(0, 1e7), at=-rng.uniform(0, 14 * 86400))
    return QueueState(
        nodes=nodes, pending=pending_jobs(pending, rng), running=running_jobs(nodes, rng),
        outcomes={f"p{i}": Outcome.OK for i in range(0, pending, 100)},
        queues={"train": Queue("train", 4), "dev": Queue("dev", 1, max_running=200),
                "batch": Queue("batch", 2)},
        usage=ledger.as_mapping())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=1_000)
    args = parser.parse_args(argv)
    state = build_state(args.pending, args.nodes)
    names = ["fcfs", "easy", "easy-sjbf", "fairshare"]
    samples: dict[str, list[float]] = {name: [] for name in names}
    outcome: dict[str, tuple[int, int]] = {}
    for round_ in range(args.rounds + 2):
        for name in names:
            started = time.perf_counter()
            decisions = schedule(state, 0.0, POLICIES[name])
            elapsed = (time.perf_counter() - started) * 1000
            if round_ >= 2:  # the first two are warm-up
                samples[name].append(elapsed)
            outcome[name] = (len(decisions.starts), len(decisions.preemptions))
    baseline = statistics.median(samples["fcfs"])
    rows = []
    for name in names:
        median = statistics.median(samples[name])
        starts, preempted = outcome[name]
        rows.append((name + (" (baseline)" if name == "fcfs" else ""), f"{median:.1f}",
                     f"{min(samples[name]):.1f}", f"{median / baseline:.2f}x", str(starts),
                     str(preempted)))
    print(f"## One policy pass: {len(state.pending):,} pending jobs, {len(state.nodes):,} nodes, "
          f"{len(state.running):,} running; median of {args.rounds} passes after 2 warm-up\n")
    print(columns(("POLICY", "MEDIAN ms", "MIN ms", "VS FCFS", "STARTS", "PREEMPTS"), rows))
    default = statistics.median(samples["fairshare"])
    verdict = "meets" if default < GOAL_MS else "misses"
    print(f"fairshare (the default): {default:.1f} ms, {verdict} the {GOAL_MS:.0f} ms goal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
