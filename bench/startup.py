"""Start-up time of the ``corral`` command, against a bare Python in the same run.

    python bench/startup.py                  # 1 warm-up round + 15 timed rounds
    python bench/startup.py --rounds 31
    python bench/startup.py --jobs 1000      # a bigger job store

Cases, each a fresh process started the way a user starts it (the venv's ``corral``
script; ``python -m corral.cli`` if there is none):

- ``python -c pass``: the floor, the least any Python command costs here
- ``corral ps`` with an empty job store
- ``corral ps -a`` with 200 finished jobs (every one listed)
- ``corral ps`` with 200 jobs of which 5 run locally (their owner is a live process, so
  ``ps`` asks the local backend about them, which imports it)
- ``corral run --dry-run echo hi`` on the local backend (validates a JobSpec: pydantic)

"Cold" here means a new interpreter each time; the operating system's file cache is warm
(the warm-up round sees to that), as it is when a person types commands one after
another. An installed package has its bytecode compiled, so the benchmark removes
``PYTHONDONTWRITEBYTECODE`` from the commands' environment and lets the warm-up round write
corral's ``__pycache__`` (without it, every run compiles the corral modules it imports
again: measured here, some 10 ms more for ``ps`` and 35 ms more for ``run --dry-run``).

After the warm-up round, each round runs every case once, in turn, so machine noise hits
all of them alike. The table gives the median and the fastest wall time of each case
(``time.perf_counter`` around the whole process), and the ratio of the median to the
floor's median measured in this same run. A case that exits non-zero is reported as
failed, with its output. Nothing here asserts a time: the numbers are for reading.
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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

GOAL_MS = 80.0  # the goal for `corral ps` and `corral run --dry-run`


@dataclass
class Case:
    name: str
    argv: list[str]
    home: Path | None  # CORRAL_HOME
    times: list[float] = field(default_factory=list)
    failure: str | None = None


def corral_command() -> list[str]:
    script = Path(sys.executable).parent / "corral"
    return [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli"]


def fill_store(home: Path, jobs: int, running: int, owner_pid: int | None) -> None:
    """``jobs`` records, newest last; the ``running`` newest are RUNNING under ``owner_pid``."""
    from corral.backends.local import LocalBackend
    from corral.jobstate import JobState
    from corral.states import Source
    from corral.store import Observation, Owner, Store

    store = Store(home / "corral.db")
    poll_key = LocalBackend(store=store).poll_key
    ends = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED)
    for i in range(jobs):
        live = i >= jobs - running and owner_pid is not None
        owner = Owner.of(owner_pid) if live and owner_pid is not None else None
        record = store.create(f"bench-{i:05d}", name=f"train-{i}", backend="local",
                              poll_key=poll_key, nodes=2, procs_per_node=4,
                              launcher="torchrun", owner=owner)
        store.apply(record.id, Observation(JobState.PENDING), Source.SUBMIT)
        store.apply(record.id, Observation(JobState.RUNNING), Source.SUPERVISOR)
        if not live:
            end = ends[i % len(ends)]
            reason = "rank 3 on node 1 failed: exit code 1" if end is JobState.FAILED else ""
            store.apply(record.id, Observation(end, reason, finished=time.time()),
                        Source.SUPERVISOR)


@contextmanager
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process to own the "running" jobs (so that nothing marks them lost)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        yield process
    finally:
        process.terminate()
        process.wait()


def run_once(case: Case, env: dict[str, str]) -> None:
    child_env = dict(env)
    if case.home is not None:
        child_env["CORRAL_HOME"] = str(case.home)
    start = time.perf_counter()
    done = subprocess.run(case.argv, env=child_env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        case.failure = f"exit {done.returncode}: {(done.stderr or done.stdout)[-2000:]}"
    else:
        case.times.append(elapsed)


def report(cases: list[Case], floor: Case) -> None:
    base = statistics.median(floor.times)
    print(f"{'case':<48} {'median':>9} {'fastest':>9} {'x floor':>8} {'- floor':>9}")
    for case in cases:
        if case.failure or not case.times:
            print(f"{case.name:<48} FAILED: {case.failure}")
            continue
        median = statistics.median(case.times)
        print(f"{case.name:<48} {median * 1e3:7.1f}ms {min(case.times) * 1e3:7.1f}ms "
              f"{median / base:7.2f}x {(median - base) * 1e3:7.1f}ms")
    print(f"\ngoal: `corral ps` and `corral run --dry-run` within {GOAL_MS:.0f} ms "
          f"(the floor here: {base * 1e3:.1f} ms; {os.cpu_count()} CPUs)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the full store")
    options = parser.parse_args()

    env = os.environ.copy()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    corral = corral_command()
    root = Path(tempfile.mkdtemp(prefix="corral-startup-"))
    try:
        with sleeper() as owner:
            empty, full, live = root / "empty", root / "full", root / "live"
            for home in (empty, full, live):
                home.mkdir()
            fill_store(full, options.jobs, running=0, owner_pid=None)
            fill_store(live, options.jobs, running=5, owner_pid=owner.pid)
            floor = Case("python -c pass (floor)", [sys.executable, "-c", "pass"], None)
            cases = [
                floor,
                Case("corral ps (empty store)", [*corral, "ps"], empty),
                Case(f"corral ps -a ({options.jobs} finished jobs)", [*corral, "ps", "-a"],
                     full),
                Case(f"corral ps ({options.jobs} jobs, 5 running locally)", [*corral, "ps"],
                     live),
                Case("corral run --dry-run echo hi", [*corral, "run", "--dry-run", "echo",
                                                      "hi"], empty),
            ]
            for case in cases:  # warm-up: file cache, __pycache__
                run_once(case, env)
                case.times.clear()
            for _ in range(options.rounds):
                for case in cases:
                    run_once(case, env)
        print(f"{options.rounds} rounds; {' '.join(corral)}\n")
        report(cases, floor)
        return 1 if any(case.failure for case in cases) else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
