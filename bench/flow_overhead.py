"""What the flow layer costs: the minGPT flow against the same training run directly.

    python bench/flow_overhead.py                 # 3 rounds of 60 steps each
    python bench/flow_overhead.py --rounds 5 --steps 200

Both sides train examples/mingpt on 2 emulated nodes x 1 rank with torchrun on the local
backend: the baseline is ``corral run --nodes 2 --launcher torchrun train.py``; the flow is
``corral flow run examples/flows/mingpt_flow.py`` (start -> a 2-node gang step that runs
the same torchrun launch through ``current.launch`` -> join -> end, every step a corral
job, artifacts saved). They run in turn, round after round, in fresh corral homes; the
table gives median wall times and the ratio flow / direct measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from corral.console import columns  # noqa: E402


def timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    corral = [sys.executable, "-m", "corral.cli"]
    checkpoints = tempfile.mkdtemp(prefix="bench-mingpt-")
    direct = [*corral, "run", "--nodes", "2", "--launcher", "torchrun",
              str(REPO / "examples" / "mingpt" / "train.py"), "--", "--steps", str(args.steps),
              "--no-resume", "--eval-every", "50", "--checkpoint-dir", checkpoints]
    flow = [*corral, "flow", "run", str(REPO / "examples" / "flows" / "mingpt_flow.py"),
            "--steps", str(args.steps)]
    times: dict[str, list[float]] = {"corral run (direct)": [], "corral flow run": []}
    for round_ in range(args.rounds):
        for name, argv in (("corral run (direct)", direct), ("corral flow run", flow)):
            with tempfile.TemporaryDirectory(prefix="bench-flow-") as home:
                env = {**os.environ, "CORRAL_HOME": home, "CORRAL_QUEUE_IDLE": "1"}
                times[name].append(timed(argv, env))
        print(f"round {round_ + 1}/{args.rounds}: "
              + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), file=sys.stderr)
    base = statistics.median(times["corral run (direct)"])
    rows = [[name, f"{statistics.median(v):.2f}", f"{min(v):.2f}",
             f"{statistics.median(v) / base:.2f}x"] for name, v in times.items()]
    print(f"minGPT, {args.steps} steps, 2 emulated nodes x 1 rank, {args.rounds} rounds")
    print(columns(("HOW", "MEDIAN S", "MIN S", "VS DIRECT"), rows), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
