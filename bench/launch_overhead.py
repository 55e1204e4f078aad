"""Launch overhead of a tiny DDP job: corral against the launchers people already use.

Every launcher runs the same workload, ``bench/workloads/ddp_noop.py`` (gloo
``init_process_group``, one ``all_reduce`` of 4 floats, print the rank, leave), so what is
measured is the cost of starting, wiring and tearing down the ranks.

    python bench/launch_overhead.py                 # 1 warm-up round + 7 timed rounds
    python bench/launch_overhead.py --quick         # 1 warm-up round + 2 timed rounds
    python bench/launch_overhead.py --rounds 11 --json bench/results/overhead.json
    python bench/launch_overhead.py --venv /tmp/peers   # use/create another venv

The peers live in a virtual environment of their own (``bench/.venv-peers`` unless
``--venv`` says otherwise), created on the first run with the same pinned torch as the
project: ``torch==2.13.0 torchx==0.7.0 submitit==1.5.4 numpy`` plus corral itself,
installed editable from this checkout. Every case runs that venv's interpreters and
command-line tools.

Compared, with 2 ranks on 1 node:

- ``torchrun --standalone --nproc-per-node 2`` (the baseline)
- fork after one ``import torch`` (the floor: a reference, not a launcher)
- TorchX ``run --scheduler local_cwd dist.ddp -j 1x2``
- submitit ``LocalExecutor(tasks_per_node=2)`` with an adapter to the torchrun variables
- ``corral run --procs-per-node 2 --launcher torchrun``

and with 2 emulated nodes of 1 rank each:

- two torchrun agents meeting through a c10d rendezvous (the baseline)
- TorchX ``-j 2x1``
- ``corral run --nodes 2 --procs-per-node 1 --launcher torchrun``
- submitit (cannot: its LocalExecutor runs one node only)

Each run is a subprocess tree (``OMP_NUM_THREADS=1`` for all; a fresh free port where the
case needs one). Wall time is ``time.perf_counter`` around the whole command; CPU time is
user+sys of the whole tree, from ``getrusage(RUSAGE_CHILDREN)`` deltas (the benchmark makes
itself a child subreaper so that orphaned descendants are reaped and counted too). After
a warm-up round, each round runs every case once, in turn, so machine noise hits all of
them alike; the tables give medians and the ratio to the group's baseline measured in
this same run. A case whose run exits non-zero is reported as failed, with its output.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORKLOADS = BENCH_DIR / "workloads"
WORKLOAD = WORKLOADS / "ddp_noop.py"
DEFAULT_VENV = BENCH_DIR / ".venv-peers"

TORCH_PIN = "torch==2.13.0"
PEER_PINS = {"torch": "2.13.0", "torchx": "0.7.0", "submitit": "1.5.4"}
PEER_PACKAGES = [TORCH_PIN, "torchx==0.7.0", "submitit==1.5.4", "numpy"]

# Variables a surrounding launcher may have set; no case should inherit them.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "GROUP_RANK", "NODE_RANK")

ORPHAN_GRACE_S = 5.0
TIMES = "\N{MULTIPLICATION SIGN}"


# --------------------------------------------------------------------------- the venv


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def probe_venv(venv: Path) -> dict[str, str] | None:
    """Versions of the peers in the venv, or None if anything is missing or mismatched."""
    python = venv_python(venv)
    if not python.exists():
        return None
    code = (
        "import json, importlib.metadata as m, corral, numpy, submitit, torch, torchx;"
        "print(json.dumps({'torch': torch.__version__,"
        " 'torchx': m.version('torchx'), 'submitit': m.version('submitit'),"
        " 'numpy': numpy.__version__, 'corral': corral.__file__,"
        " 'python': '.'.join(map(str, __import__('sys').version_info[:3]))}))"
    )
    probe = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    versions: dict[str, str] = json.loads(probe.stdout)
    if not is_this_checkout(Path(versions["corral"])):
        return None
    for name, pin in PEER_PINS.items():
        if versions[name].split("+")[0] != pin:
            return None
    return versions


def is_this_checkout(corral_init: Path) -> bool:
    return corral_init.resolve().is_relative_to(REPO_ROOT / "src")


def install_peers(venv: Path) -> None:
    """Create the venv if needed and install the pinned peers and corral (editable)."""
    steps: list[list[str]] = []
    if not venv_python(venv).exists():
        steps.append([shutil.which("python3") or sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv_python(venv)), "-m", "pip", "install"]
    steps.append([*pip, *PEER_PACKAGES])
    steps.append([*pip, "-e", str(REPO_ROOT), TORCH_PIN])
    for step in steps:
        print(f"$ {' '.join(step)}", flush=True)
        started = time.perf_counter()
        # pip's chatter goes to stderr so that stdout keeps only the report
        subprocess.run(step, check=True, stdout=sys.stderr)
        print(f"  done in {time.perf_counter() - started:.1f} s", flush=True)


def ensure_venv(venv: Path) -> dict[str, str]:
    versions = probe_venv(venv)
    if versions is not None:
        print(f"peers venv {venv}: already set up, nothing to install")
        return versions
    print(f"peers venv {venv}: installing {' '.join(PEER_PACKAGES)} and corral (editable)")
    started = time.perf_counter()
    install_peers(venv)
    versions = probe_venv(venv)
    if versions is None:
        sys.exit(f"peers venv {venv}: still incomplete after installing; see pip's output")
    print(f"peers venv {venv}: set up in {time.perf_counter() - started:.1f} s")
    return versions


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Context:
    """What a case needs to build its commands."""

    bin: Path
    python: Path
    workload: Path


Commands = list[list[str]]  # started together; the run ends when all of them have


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    build: Callable[[Context], Commands] | None = None
    role: str = "peer"  # "baseline", "reference", "peer" or "corral"
    cannot: str | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun_standalone(ctx: Context) -> Commands:
    return [[str(ctx.python), "-m", "torch.distributed.run", "--standalone",
             "--nproc-per-node", "2", str(ctx.workload)]]


def fork_floor(ctx: Context) -> Commands:
    driver = WORKLOADS / "fork_driver.py"
    return [[str(ctx.python), str(driver), str(ctx.workload), "2", str(free_port())]]


def torchx_ddp(shape: str) -> Callable[[Context], Commands]:
    def build(ctx: Context) -> Commands:
        command = [str(ctx.bin / "torchx"), "run", "--scheduler", "local_cwd", "dist.ddp",
                   "-j", shape, "--script", str(ctx.workload)]
        if not shape.startswith("1x"):
            # its default rendezvous port is a fixed 29500: give it a free one like the others
            command[-2:-2] = ["--rdzv_port", str(free_port())]
        return [command]

    return build


def submitit_local(ctx: Context) -> Commands:
    driver = WORKLOADS / "submitit_driver.py"
    return [[str(ctx.python), str(driver), str(ctx.workload), "2"]]


def corral_run(nodes: int, procs_per_node: int) -> Callable[[Context], Commands]:
    def build(ctx: Context) -> Commands:
        return [[str(ctx.bin / "corral"), "run", "--nodes", str(nodes),
                 "--procs-per-node", str(procs_per_node), "--launcher", "torchrun",
                 str(ctx.workload)]]

    return build


def torchrun_two_agents(ctx: Context) -> Commands:
    endpoint, run_id = f"127.0.0.1:{free_port()}", uuid.uuid4().hex[:12]
    return [[str(ctx.python), "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc-per-node", "1", "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
             "--rdzv-endpoint", endpoint, "--rdzv-id", run_id, str(ctx.workload)]
            for node_rank in (0, 1)]


ONE_NODE, TWO_NODES = f"1 node {TIMES} 2 ranks", f"2 emulated nodes {TIMES} 1 rank"

CASES = [
    Case(ONE_NODE, "`torchrun --standalone --nproc-per-node 2`", torchrun_standalone,
         role="baseline"),
    Case(ONE_NODE, "fork after one `import torch` (floor)", fork_floor, role="reference"),
    Case(ONE_NODE, "TorchX `run --scheduler local_cwd dist.ddp -j 1x2`", torchx_ddp("1x2")),
    Case(ONE_NODE, "submitit `LocalExecutor(tasks_per_node=2)` + env adapter", submitit_local),
    Case(ONE_NODE, "corral `run --procs-per-node 2 --launcher torchrun`", corral_run(1, 2),
         role="corral"),
    Case(TWO_NODES, "two `torchrun --nnodes 2 … --rdzv-backend c10d` agents",
         torchrun_two_agents, role="baseline"),
    Case(TWO_NODES, "TorchX `-j 2x1`", torchx_ddp("2x1")),
    Case(TWO_NODES, "corral `run --nodes 2 --procs-per-node 1 --launcher torchrun`",
         corral_run(2, 1), role="corral"),
    Case(TWO_NODES, "submitit", cannot="LocalExecutor can use only one node"),
]


# --------------------------------------------------------------------------- running


@dataclass
class Sample:
    wall_s: float
    cpu_s: float


@dataclass
class Outcome:
    case: Case
    samples: list[Sample] = field(default_factory=list)
    failure: str | None = None


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux), so their CPU time reaches RUSAGE_CHILDREN."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(36, 1, 0, 0, 0)) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def own_child_pids() -> list[int]:
    me, pids = os.getpid(), []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me:
            pids.append(int(stat.parent.name))
    return pids


def reap_orphans(grace_s: float) -> list[int]:
    """Wait for adopted orphans; kill (by pid) those still alive after grace_s; return them."""
    deadline = time.monotonic() + grace_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return []
        if pid:
            continue
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    lingering = own_child_pids()
    for pid in lingering:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    return lingering


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End a run we started: its process group (led by proc.pid), then reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").strip().splitlines()
    return "\n".join(text[-lines:])


def run_once(commands: Commands, env: dict[str, str], cwd: Path, timeout_s: float
             ) -> tuple[Sample, str | None]:
    """Start the commands together, wait for all; return the timing and any failure text."""
    logs = [cwd / f"output-{index}.log" for index in range(len(commands))]
    for log in logs:
        log.write_bytes(b"")
    procs: list[subprocess.Popen[bytes]] = []
    codes: list[int] | None = None
    problem = f"timed out after {timeout_s:.0f} s"
    cpu_before = children_cpu_s()
    started = time.perf_counter()
    try:
        for command, log in zip(commands, logs, strict=True):
            with open(log, "wb") as sink:
                procs.append(subprocess.Popen(command, env=env, cwd=cwd, stdout=sink,
                                              stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + timeout_s
        codes = [proc.wait(timeout=max(0.0, deadline - time.monotonic())) for proc in procs]
    except subprocess.TimeoutExpired:
        pass
    except OSError as error:
        problem = f"could not start: {error}"
    finally:
        wall = time.perf_counter() - started
        for proc in procs:
            kill_group(proc)
    lingering = reap_orphans(ORPHAN_GRACE_S)
    sample = Sample(wall, children_cpu_s() - cpu_before)
    return sample, describe_failure(commands, codes, logs, lingering, problem)


def describe_failure(commands: Commands, codes: list[int] | None, logs: list[Path],
                     lingering: list[int], problem: str) -> str | None:
    """None for a clean run; else what went wrong and the end of each command's output."""
    if codes is not None and all(code == 0 for code in codes) and not lingering:
        return None
    if codes is None:
        head = problem
    elif lingering:
        head = f"left {len(lingering)} process(es) running after exit (pids {lingering})"
    else:
        head = f"exit codes {codes}"
    outputs = "\n".join(f"--- {' '.join(cmd)}\n{tail(log)}" for cmd, log in zip(commands, logs,
                                                                                strict=True))
    return f"{head}\n{outputs}"


def run_round(outcomes: list[Outcome], ctx: Context, env: dict[str, str], scratch: Path,
              timeout_s: float, timed: bool) -> None:
    for outcome in outcomes:
        case = outcome.case
        if case.build is None or outcome.failure is not None:
            continue
        sample, failure = run_once(case.build(ctx), env, scratch, timeout_s)
        status = "FAILED" if failure else f"{sample.wall_s:.2f} s wall, {sample.cpu_s:.2f} s CPU"
        print(f"  {case.group:<26} {strip_ticks(case.name):<60} {status}", file=sys.stderr,
              flush=True)
        if failure is not None:
            outcome.failure = failure
        elif timed:
            outcome.samples.append(sample)


def strip_ticks(text: str) -> str:
    return text.replace("`", "")


def case_env(ctx: Context, scratch: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in RANK_VARIABLES}
    env.pop("PYTHONHOME", None)
    (scratch / "tmp").mkdir(exist_ok=True)
    env.update(
        OMP_NUM_THREADS="1",
        PATH=f"{ctx.bin}{os.pathsep}{env.get('PATH', '')}",  # TorchX calls `torchrun` by name
        VIRTUAL_ENV=str(ctx.bin.parent),
        CORRAL_HOME=str(scratch / "corral-home"),  # keep corral's run records out of ~
        TMPDIR=str(scratch / "tmp"),  # every tool's temp files land here, then go
        PYTHONUNBUFFERED="1",
    )
    return env


def run_all(ctx: Context, rounds: int, timeout_s: float) -> list[Outcome]:
    outcomes = [Outcome(case) for case in CASES]
    with tempfile.TemporaryDirectory(prefix="corral-bench-") as tmp:
        scratch = Path(tmp)
        env = case_env(ctx, scratch)
        for number in range(rounds + 1):
            label = "warm-up round" if number == 0 else f"round {number}/{rounds}"
            print(f"{label}:", file=sys.stderr, flush=True)
            run_round(outcomes, ctx, env, scratch, timeout_s, timed=number > 0)
    return outcomes


# --------------------------------------------------------------------------- reporting


def median_wall(outcome: Outcome) -> float | None:
    if outcome.failure or not outcome.samples:
        return None
    return statistics.median(sample.wall_s for sample in outcome.samples)


def median_cpu(outcome: Outcome) -> float | None:
    if outcome.failure or not outcome.samples:
        return None
    return statistics.median(sample.cpu_s for sample in outcome.samples)


def baseline_of(outcomes: list[Outcome], group: str) -> Outcome:
    return next(o for o in outcomes if o.case.group == group and o.case.role == "baseline")


def ratio(outcome: Outcome, baseline: Outcome) -> float | None:
    wall, base = median_wall(outcome), median_wall(baseline)
    return None if wall is None or base is None else wall / base


def table_row(outcome: Outcome, baseline: Outcome) -> str:
    case = outcome.case
    label = case.name + {"baseline": " — baseline", "reference": " — reference"}.get(
        case.role, "")
    if case.cannot:
        return f"| {label} | cannot: \"{case.cannot}\" | | |"
    if outcome.failure:
        first_line = outcome.failure.splitlines()[0]
        return f"| {label} | failed: {first_line} (output below) | | |"
    wall, cpu, rel = median_wall(outcome), median_cpu(outcome), ratio(outcome, baseline)
    rel_text = "n/a" if rel is None else f"{rel:.2f}{TIMES}"
    return f"| {label} | {wall:.2f} | {rel_text} | {cpu:.2f} |"


def group_table(outcomes: list[Outcome], group: str) -> str:
    baseline = baseline_of(outcomes, group)
    rows = [table_row(o, baseline) for o in outcomes if o.case.group == group]
    header = f"| launcher ({group}) | median wall s | vs baseline | median CPU s |"
    return "\n".join([header, "|---|---|---|---|", *rows])


def shape_of(group: str) -> str:
    return "1x2" if group == ONE_NODE else "2x1"


def summary_line(outcomes: list[Outcome]) -> str:
    groups = list(dict.fromkeys(o.case.group for o in outcomes))
    versus, fastest = [], []
    for group in groups:
        baseline = baseline_of(outcomes, group)
        members = [o for o in outcomes if o.case.group == group]
        corral = next(o for o in members if o.case.role == "corral")
        rel = ratio(corral, baseline)
        versus.append(f"{'failed' if rel is None else f'{rel:.2f}{TIMES}'} ({shape_of(group)})")
        peers = [o for o in members if o.case.role in ("baseline", "peer")
                 and median_wall(o) is not None]
        if peers:
            best = min(peers, key=lambda o: median_wall(o) or 0.0)
            best_rel = ratio(best, baseline) or 1.0
            fastest.append(f"{strip_ticks(best.case.name)} {median_wall(best):.2f} s"
                           f" ({best_rel:.2f}{TIMES}, {shape_of(group)})")
    return f"corral vs torchrun: {', '.join(versus)}; fastest peer: {'; '.join(fastest)}"


def failure_details(outcomes: list[Outcome]) -> str:
    parts = [f"### {strip_ticks(o.case.name)} ({o.case.group}) failed\n```\n{o.failure}\n```"
             for o in outcomes if o.failure]
    return "\n\n".join(parts)


def machine_info(versions: dict[str, str], venv: Path) -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": versions["python"],
        "torch": versions["torch"],
        "torchx": versions["torchx"],
        "submitit": versions["submitit"],
        "venv": str(venv),
    }


def print_report(info: dict[str, Any], outcomes: list[Outcome], rounds: int) -> None:
    print(f"\n## Launch overhead: ddp_noop, median of {rounds} rounds after 1 warm-up\n")
    print(f"machine: {info['nproc']} CPUs ({info['usable_cpus']} usable), "
          f"load {info['load_avg_1m_at_start']} at start → {os.getloadavg()[0]:.2f} at end; "
          f"{info['platform']}")
    print(f"python {info['python']}, torch {info['torch']}, torchx {info['torchx']}, "
          f"submitit {info['submitit']}; OMP_NUM_THREADS=1; CPU = user+sys of the whole tree\n")
    for group in dict.fromkeys(o.case.group for o in outcomes):
        print(group_table(outcomes, group), end="\n\n")
    print(summary_line(outcomes))
    details = failure_details(outcomes)
    if details:
        print(f"\n{details}")


def write_json(path: Path, info: dict[str, Any], outcomes: list[Outcome], rounds: int) -> None:
    cases = [{
        "group": o.case.group,
        "name": strip_ticks(o.case.name),
        "role": o.case.role,
        "cannot": o.case.cannot,
        "failure": o.failure,
        "median_wall_s": median_wall(o),
        "median_cpu_s": median_cpu(o),
        "vs_baseline": ratio(o, baseline_of(outcomes, o.case.group)),
        "samples": [{"wall_s": s.wall_s, "cpu_s": s.cpu_s} for s in o.samples],
    } for o in outcomes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "rounds": rounds, "cases": cases}, indent=1))
    print(f"\nraw samples written to {path}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help=f"the peers' virtual environment (default: {DEFAULT_VENV})")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default: 7)")
    parser.add_argument("--quick", action="store_true", help="2 timed rounds")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds one run may take before it counts as failed")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 2
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    venv = args.venv.absolute()
    versions = ensure_venv(venv)
    info = machine_info(versions, venv)
    if not become_subreaper():
        print("note: not a child subreaper; CPU of orphaned descendants is not counted",
              file=sys.stderr)
    ctx = Context(bin=venv / "bin", python=venv_python(venv), workload=WORKLOAD)
    outcomes = run_all(ctx, args.rounds, args.timeout)
    print_report(info, outcomes, args.rounds)
    if args.json:
        write_json(args.json, info, outcomes, args.rounds)
    return 1 if any(o.failure for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
