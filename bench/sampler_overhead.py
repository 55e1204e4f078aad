"""The resource sampler's cost on a training job: corral's minGPT example on 2 emulated nodes
x 1 rank (DDP over gloo), run with sampling off (``CORRAL_PROFILE_SECONDS=0``), at its
default (1 s) and ten times as often (0.1 s), alternated, side by side. Reports the job's
wall time per configuration and its ratio to sampling off.

Run: ``python bench/sampler_overhead.py [--rounds 3] [--steps 100]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"off": "0", "every 1 s": "1", "every 0.1 s": "0.1"}


def one_run(steps: int, every: str, checkpoints: str) -> float:
    import corral
    from corral.spec import JobSpec, JobState

    os.environ["CORRAL_PROFILE_SECONDS"] = every
    spec = JobSpec(entrypoint={"kind": "script", "path": "examples/mingpt/train.py"},
                   args=["--steps", str(steps), "--no-resume", "--checkpoint-dir",
                         checkpoints], nodes=2, procs_per_node=1, launcher="torchrun",
                   workdir=str(REPO))
    status = corral.run(spec, stream=False)
    if status.state is not JobState.SUCCEEDED or status.duration is None:
        raise SystemExit(status.summary())
    return status.duration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["CORRAL_HOME"] = str(Path(scratch) / "home")
        for round_ in range(args.rounds):
            for name, every in SETTINGS.items():
                times[name].append(one_run(args.steps, every, str(Path(scratch) / "ckpt")))
                print(f"round {round_ + 1}: sampling {name:12s} {times[name][-1]:.2f} s",
                      flush=True)
    base = statistics.median(times["off"])
    print(f"\nminGPT, 2 nodes x 1 rank, {args.steps} steps, {args.rounds} rounds, "
          f"{os.cpu_count()} CPUs")
    print("| sampling | median job s | vs off |")
    print("|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.2f} | {median / base:.3f}x |")


if __name__ == "__main__":
    main()
