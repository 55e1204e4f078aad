"""How hard corral's waiting leans on slurmctld: Slurm commands per minute while many jobs
are waited for, against a per-job polling loop run side by side, and ``corral ps`` time.

On the test cluster of ``tests/infra/slurm_cluster.py`` (reused when it is up, else brought
up and taken down at the end), with ``CORRAL_HOME`` in a temporary folder:

1. submit ``--jobs`` (200) detached one-node jobs (``sleep --job-seconds``) through
   corral's Python API;
2. at once, side by side until every job has ended:
   - corral: ``--waiters`` (2) processes of ``corral wait ID...`` on all of them;
   - baseline: a hand-written loop that asks ``squeue -h -j ID -o %T`` for every job
     not yet seen finished, then sleeps for the same interval (corral's ``poll_seconds``,
     1 s by default): what a script, or a tool without a shared watcher, does;
   each through its own PATH folder of wrappers that count every call of ``scontrol``,
   ``squeue`` and ``sacct``;
3. ``corral ps`` and ``corral ps -a`` with the jobs in the store, median of ``--rounds``,
   beside ``python -c pass`` (the interpreter's floor).

It prints commands per minute for both and their ratio, the wall time of each ``ps``, and
the goal (at most 60 Slurm commands a minute, whatever the job count; ``ps`` under 0.5 s).

    python bench/slurm_watch.py [--jobs 200] [--job-seconds 5] [--waiters 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STATE_DIR = Path("/tmp/corral-slurm")
COUNTED = ("scontrol", "squeue", "sacct")


def counting_path(folder: Path, log: Path) -> str:
    """A PATH whose Slurm commands first append their name to ``log``."""
    folder.mkdir(parents=True)
    for name in COUNTED:
        real = shutil.which(name)
        if real is None:
            sys.exit(f"{name} is not installed (make system-deps)")
        wrapper = folder / name
        wrapper.write_text(f'#!/bin/sh\necho {name} >> "{log}"\nexec {real} "$@"\n')
        wrapper.chmod(0o755)
    return f"{folder}:{os.environ['PATH']}"


def calls(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def baseline_loop(slurm_ids: list[str], env: dict[str, str], interval: float) -> None:
    """squeue per unfinished job per round, until none is listed any more."""
    waiting = set(slurm_ids)
    while waiting:
        for slurm_id in sorted(waiting):
            done = subprocess.run(["squeue", "-h", "-j", slurm_id, "-o", "%T"], env=env,
                                  capture_output=True, text=True)
            if done.returncode != 0 or not done.stdout.strip():
                waiting.discard(slurm_id)  # gone from squeue: finished
        if waiting:
            time.sleep(interval)


def median_wall(argv: list[str], env: dict[str, str], rounds: int) -> float:
    walls = []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True)
        walls.append(time.perf_counter() - started)
    return statistics.median(walls)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--job-seconds", type=float, default=5.0)
    parser.add_argument("--waiters", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    sys.path.insert(0, str(REPO / "tests"))
    from infra.slurm_cluster import SlurmCluster

    cluster = SlurmCluster(STATE_DIR)
    owned = not cluster.healthy()
    if owned:
        cluster.up()
    work = Path(tempfile.mkdtemp(prefix="corral-watch-"))
    env = {**os.environ, **cluster.env, "CORRAL_HOME": str(work / "home")}
    os.environ.update(env)
    try:
        from corral.backends.slurm import SlurmBackend, SlurmOptions
        from corral.spec import JobSpec

        backend = SlurmBackend(SlurmOptions(python=sys.executable, snapshot=False))
        interval = backend.options.poll_seconds
        spec = JobSpec(name="watched", workdir=str(work),
                       entrypoint={"kind": "command", "argv": ["sleep", str(args.job_seconds)]})
        started = time.perf_counter()
        ids = [backend.submit(spec).job_id for _ in range(args.jobs)]
        print(f"submitted {len(ids)} jobs in {time.perf_counter() - started:.1f} s",
              file=sys.stderr)
        slurm_ids = [str(backend.store.get(i).engine_id) for i in ids]

        corral_log, base_log = work / "corral-calls", work / "baseline-calls"
        corral_env = {**env, "PATH": counting_path(work / "bin-corral", corral_log)}
        base_env = {**env, "PATH": counting_path(work / "bin-baseline", base_log)}
        started = time.perf_counter()
        waiters = [subprocess.Popen([sys.executable, "-m", "corral.cli", "wait", *ids],
                                    env=corral_env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, text=True)
                   for _ in range(args.waiters)]
        base_started = time.perf_counter()
        baseline_loop(slurm_ids, base_env, interval)
        base_wall = time.perf_counter() - base_started
        codes = [w.wait() for w in waiters]
        corral_wall = time.perf_counter() - started
        if any(codes):
            said = waiters[0].stderr.read() if waiters[0].stderr else ""
            print(f"corral wait exited {codes}: {said}", file=sys.stderr)

        floor = median_wall([sys.executable, "-c", "pass"], env, args.rounds)
        ps = median_wall([sys.executable, "-m", "corral.cli", "ps"], env, args.rounds)
        ps_all = median_wall([sys.executable, "-m", "corral.cli", "ps", "-a"], env, args.rounds)
        corral_calls, base_calls = calls(corral_log), calls(base_log)
    finally:
        if owned:
            cluster.down()
        shutil.rmtree(work, ignore_errors=True)

    corral_rate = corral_calls / corral_wall * 60 if corral_wall else 0.0
    base_rate = base_calls / base_wall * 60 if base_wall else 0.0
    print(f"\n## Waiting for {args.jobs} Slurm jobs ({args.job_seconds:g} s each) on the test "
          f"cluster; poll interval {interval:g} s\n")
    print("| who | Slurm commands | wall s | commands / min | vs baseline |")
    print("|---|---|---|---|---|")
    print(f"| per-job squeue loop (baseline) | {base_calls} | {base_wall:.1f} | "
          f"{base_rate:.0f} | 1.00x |")
    print(f"| {args.waiters} x `corral wait` on all jobs | {corral_calls} | "
          f"{corral_wall:.1f} | {corral_rate:.0f} | "
          f"{corral_rate / base_rate if base_rate else float('nan'):.3f}x |")
    print(f"\ngoal: at most 60 Slurm commands a minute: "
          f"{'met' if corral_rate <= 60 else 'NOT met'} ({corral_rate:.0f})")
    print(f"\n| command ({args.jobs} jobs in the store) | median wall s | vs python -c pass |")
    print("|---|---|---|")
    print(f"| python -c pass (floor) | {floor:.3f} | 1.00x |")
    print(f"| corral ps | {ps:.3f} | {ps / floor:.1f}x |")
    print(f"| corral ps -a | {ps_all:.3f} | {ps_all / floor:.1f}x |")
    print(f"\ngoal: ps under 0.5 s: {'met' if max(ps, ps_all) < 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
