"""What the cluster benchmarks share (`slurm_overhead.py`, `k8s_submit.py`): a test cluster
reused or brought up (and then taken down), the cases and their outcomes, machine facts, the
common command-line options. Each benchmark keeps its own cases, samples and tables."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def infra_module(name: str) -> ModuleType:
    """tests/infra/<name>.py (tests/ has no __init__.py: pytest puts it on sys.path)."""
    tests = str(REPO_ROOT / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    return importlib.import_module(f"infra.{name}")


def reuse_or_bring_up(module: ModuleType, cluster: Any, usable: bool,
                      script: str) -> tuple[Any, float | None]:
    """(the cluster if this benchmark brought it up, else None; its bring-up seconds).

    A usable cluster is used as it is and left running. One whose processes run but that is
    not usable belongs to someone else: never touched. Nothing running: brought up here."""
    if usable:
        print(f"cluster: using the one running at {cluster.state_dir} (left running)",
              file=sys.stderr)
        return None, None
    # The module's own bookkeeping: {name: (pid, comm)} of the processes it started.
    daemons = module._daemon_pids(cluster.pid_dir)
    alive = sorted(name for name, proc in daemons.items() if module._running(*proc))
    if alive:
        sys.exit(f"cluster at {cluster.state_dir}: {', '.join(alive)} run(s) but it does not "
                 "answer; not touching a cluster this benchmark did not start (fix or take it "
                 f"down with {script})")
    print(f"cluster: none running at {cluster.state_dir}; bringing one up", file=sys.stderr)
    started = time.perf_counter()
    try:
        cluster.up()
    except (RuntimeError, TimeoutError) as error:  # e.g. another state dir's cluster is up
        sys.exit(f"cluster: could not bring it up: {error}")
    bring_up = time.perf_counter() - started
    print(f"cluster: up in {bring_up:.1f} s (taken down at the end)", file=sys.stderr)
    return cluster, bring_up


def release(owned: Any) -> None:
    """Take down a cluster this benchmark brought up (None: nothing to do)."""
    if owned is None:
        return
    started = time.perf_counter()
    owned.down()
    print(f"cluster: taken down in {time.perf_counter() - started:.1f} s", file=sys.stderr)


@dataclass(frozen=True)
class Case:
    name: str
    role: str  # "baseline" or "corral"
    run: Callable[[Any], Any]  # the benchmark's context -> one of its samples


@dataclass
class Outcome:
    case: Case
    samples: list[Any] = field(default_factory=list)
    warmup: list[Any] = field(default_factory=list)
    failure: str | None = None


def baseline_of(outcomes: list[Outcome]) -> Outcome:
    return next(o for o in outcomes if o.case.role == "baseline")


def machine_facts(state_dir: Path, owned: Any, bring_up_s: float | None) -> dict[str, Any]:
    """This machine and the cluster's provenance, for the report and the JSON."""
    return {
        "nproc": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cluster_state_dir": str(state_dir),
        "cluster_started_here": owned is not None,
        "cluster_bring_up_s": bring_up_s,
    }


def cluster_line(info: dict[str, Any]) -> str:
    if info["cluster_started_here"]:
        where = f"started here in {info['cluster_bring_up_s']:.1f} s, taken down at the end"
    else:
        where = "already running, reused and left running"
    return f"cluster: {info['cluster_state_dir']} ({where})\n"


def default_corral() -> Path:
    beside = Path(sys.executable).parent / "corral"
    if beside.exists():
        return beside
    found = shutil.which("corral")
    return Path(found) if found else REPO_ROOT / ".venv" / "bin" / "corral"


def common_parser(description: str, state_dir: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--quick", action="store_true", help="2 timed rounds")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--state-dir", type=Path, default=state_dir,
                        help=f"the test cluster's state dir (default: {state_dir})")
    parser.add_argument("--corral", type=Path, default=default_corral(),
                        help="the corral executable (default: the one beside this python)")
    return parser


def checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The common options, settled: --quick is 2 rounds, at least 1 round, corral exists."""
    if args.quick:
        args.rounds = 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if not args.corral.exists():
        parser.error(f"no corral at {args.corral}; give --corral")
    return args


def print_report_end(outcomes: list[Outcome], note: str | None) -> None:
    """The note on contended runs, then each failed case's failure."""
    if note:
        print(note)
    for outcome in outcomes:
        if outcome.failure:
            print(f"\n### {outcome.case.role} failed\n```\n{outcome.failure}\n```")
