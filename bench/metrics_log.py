"""The cost of ``corral.log(step=..., loss=..., lr=...)`` per call, on the caller's side,
against writing the same numbers to a file by hand (``f.write(f"{step},{loss},{lr}\\n")``),
side by side in the same process and alternated. The goal: under 20 us per call.

Run: ``python bench/metrics_log.py [--calls 200000] [--rounds 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def by_hand(path: str, calls: int) -> float:
    with open(path, "a", encoding="utf-8") as handle:
        start = time.perf_counter()
        for step in range(calls):
            handle.write(f"{step},{step * 0.001},{0.1}\n")
        return (time.perf_counter() - start) / calls


def with_corral(calls: int) -> float:
    import corral

    start = time.perf_counter()
    for step in range(calls):
        corral.log(step=step, loss=step * 0.001, lr=0.1)
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as run_dir:
        os.environ["CORRAL_RUN_DIR"] = run_dir  # as inside a job's rank
        os.environ["RANK"] = "0"
        hand, ours = [], []
        for _ in range(args.rounds):
            hand.append(by_hand(os.path.join(run_dir, "by-hand.csv"), args.calls))
            ours.append(with_corral(args.calls))
        size = os.path.getsize(os.path.join(run_dir, "metrics", "rank-0.jsonl"))
    base, cost = statistics.median(hand), statistics.median(ours)
    print(f"{args.rounds} rounds of {args.calls} calls; median per call:")
    print("| how | us per call | vs by hand |")
    print("|---|---|---|")
    print(f"| f.write(csv line) by hand | {base * 1e6:.2f} | 1.00x |")
    print(f"| corral.log(step=, loss=, lr=) | {cost * 1e6:.2f} | {cost / base:.2f}x |")
    print(f"goal under 20 us: {'met' if cost < 20e-6 else 'NOT met'}; "
          f"{size / (args.calls * args.rounds):.0f} bytes per point on disk")


if __name__ == "__main__":
    main()
