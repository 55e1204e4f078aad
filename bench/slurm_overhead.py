"""Slurm submission overhead: ``corral run --backend slurm`` against sbatch + squeue by hand.

Both cases run the same 2-node job on the test cluster of ``tests/infra/slurm_cluster.py``
(Slurm 22.05, 3 nodes in network namespaces on this machine): one task per node, each
printing its rank and host name.

- baseline: ``sbatch --parsable bench/workloads/slurm_hello.sh`` (``#SBATCH --nodes=2
  --ntasks-per-node=1 --output=slurm-hello-%j.out``, then ``srun sh -c 'echo $SLURM_PROCID
  $(hostname)'``), ``squeue -h -j ID -o %T`` every 0.2 s until the job has left squeue's
  listing, then the output file is read. That is how one scripts it without ``sbatch --wait``
  (which polls every 2 s or more). Without ``-t``, squeue lists only active jobs (pending,
  running, completing, ...), also with ``-j``: a finished job is left out although
  ``MinJobAge`` keeps it in slurmctld (``-t all`` shows it as CD). A terminal state in the
  column counts as gone too, in case some version lists it.
- corral: ``corral run --backend slurm -o python=PY -o poll_seconds=0.2 --nodes 2
  --procs-per-node 1 sh -c 'echo $RANK $(hostname)'``, the whole CLI process: interpreter
  start and imports, render, snapshot of its (empty) working directory, sbatch, streaming the
  ranks' logs, polling ``scontrol show job`` every 0.2 s (pinned here; the default is 1 s),
  exit code.

Run it as root, with the project's interpreter (the ``corral`` next to it is the one timed)::

    .venv/bin/python bench/slurm_overhead.py              # 1 warm-up + 7 timed rounds
    .venv/bin/python bench/slurm_overhead.py --quick      # 1 warm-up + 2 timed rounds
    .venv/bin/python bench/slurm_overhead.py --rounds 15 --json /tmp/slurm-overhead.json

The cluster: if a controller answers at ``--state-dir`` (default /tmp/corral-slurm), that
cluster is used as it is and left running, never restarted or taken down (someone else's tests
may be using it). If nothing of it runs, the benchmark brings one up (``SlurmCluster.up()``,
a few seconds, timed and reported) and takes it down at the end.

Each run is a subprocess (the baseline: its sbatch and squeue calls) with ``SLURM_CONF`` from
the cluster, ``CORRAL_HOME`` in a temporary directory, and the scratch directory as working
directory. Wall time is ``time.perf_counter`` around the run (the baseline's ends when the
output file has been read). A run counts only if it exits 0 (the baseline: sbatch does, and
Slurm says COMPLETED with exit code 0:0, asked after the clock stops) and its output has
ranks 0 and 1 on two different nodes of the cluster. After one warm-up round, every round
runs both cases, in turn (alternating which goes first); the table gives medians, the ratio
to the baseline's median, means and ranges.

Slurm 22.05 starts batch jobs on slurmctld's one-second background tick, so every job waits
0-1 s for it, whatever submitted it: noise as large as the effect measured. The tick sits at
a phase of the wall-clock second that drifts only slowly (a few ms per second here), so timed
round k starts both cases at the same fraction of the second, a random offset plus k times
the golden ratio (mod 1): each case meets the tick at phases spread evenly over the second,
for any number of rounds and despite the drift (a plain sweep k/N would cover only part of
the second once the tick drifts along with it). That has the expectation of random start
times with much less noise; ``--random-phase`` starts runs whenever they come instead. Each
case's times still spread over a whole second and the 0.2 s polls are not aligned, so the
medians of 7 rounds move by 0.1-0.2 s between invocations; the means are steadier. Use
``--rounds 21`` or more for a tighter figure.

Before each run the benchmark waits (up to ``--idle-timeout`` s) until no job is active on
the cluster. A run that overlapped another job (active before it, or submitted while it ran)
is counted as contended in the report and flagged in the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import BENCH_DIR, Case, Outcome, baseline_of

JOB_SCRIPT = BENCH_DIR / "workloads" / "slurm_hello.sh"
DEFAULT_STATE_DIR = Path("/tmp/corral-slurm")

POLL_S = 0.2
GOAL = 1.05
TIMES = "\N{MULTIPLICATION SIGN}"
DASH = "\N{EN DASH}"
GOLDEN = (5**0.5 - 1) / 2  # phase step between rounds: spreads evenly for any count
# Both jobs sleep $CORRAL_BENCH_SLEEP s first (--job-seconds; sbatch exports the environment).
CORRAL_COMMAND = ["sh", "-c", "sleep ${CORRAL_BENCH_SLEEP:-0}; echo $RANK $(hostname)"]
# States squeue may still print for a job that has ended; anything else is active.
FINISHED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "REVOKED", "SPECIAL_EXIT"}
RANK_HOST = re.compile(r"(?:^|\s)(\d+) (\S+)$")


# --------------------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    state_dir: Path
    env: dict[str, str]  # environment of every client call: ours plus SLURM_CONF
    nodes: list[str]
    owned: Any = None  # the SlurmCluster this benchmark started (and takes down), else None
    bring_up_s: float | None = None


def slurm(env: dict[str, str], *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def controller_answers(env: dict[str, str]) -> bool:
    try:
        return " is UP" in slurm(env, "scontrol", "ping", timeout=15).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False


def client_env(cluster_env: dict[str, str]) -> dict[str, str]:
    """Ours, without the variables of any surrounding Slurm job, plus SLURM_CONF."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
    return {**env, **cluster_env}


def attach_cluster(state_dir: Path) -> Cluster:
    """Use the cluster that runs at state_dir, or bring one up (ours to take down)."""
    module = harness.infra_module("slurm_cluster")
    cluster = module.SlurmCluster(state_dir)
    env = client_env(cluster.env)
    usable = cluster.conf.exists() and controller_answers(env)
    owned, bring_up = harness.reuse_or_bring_up(module, cluster, usable,
                                                "tests/infra/slurm_cluster.py")
    return Cluster(cluster.state_dir, env, list(cluster.node_names), owned, bring_up)


def job_ids(env: dict[str, str], all_states: bool) -> set[int]:
    """Ids of the active jobs, or of every job slurmctld still knows (MinJobAge)."""
    argv = ["squeue", "-h", "-o", "%i", *(["-t", "all"] if all_states else [])]
    try:
        words = slurm(env, *argv).stdout.split()
    except subprocess.TimeoutExpired:
        return set()
    heads = (word.split("_")[0] for word in words)  # array jobs print 12_[1-3] or 12_4
    return {int(head) for head in heads if head.isdigit()}


def wait_for_idle(env: dict[str, str], timeout_s: float) -> set[int]:
    """Wait until no job is active; return those still active after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while (active := job_ids(env, all_states=False)) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    return active


def scancel(env: dict[str, str], job_id: int | None) -> None:
    if job_id is not None:
        try:
            slurm(env, "scancel", str(job_id))
        except subprocess.TimeoutExpired:
            pass


# --------------------------------------------------------------------------- the cases


@dataclass
class Context:
    env: dict[str, str]  # client_env plus CORRAL_HOME
    nodes: list[str]
    workdir: Path  # empty scratch folder: sbatch's output and corral's (empty) snapshot
    corral_home: Path
    corral: list[str]  # the corral command line
    timeout_s: float


@dataclass
class Sample:
    wall_s: float
    phase: float | None = None  # fraction of the wall-clock second the run started at
    slurm_job_id: int | None = None
    contended: list[int] = field(default_factory=list)  # other jobs that overlapped it
    failure: str | None = None


def check_ranks(text: str, nodes: list[str]) -> str | None:
    """None if the output has ranks 0 and 1 on two different cluster nodes."""
    hosts: dict[int, str] = {}
    for line in text.splitlines():
        match = RANK_HOST.search(line.strip())
        if match and match.group(2) in nodes:
            hosts[int(match.group(1))] = match.group(2)
    if set(hosts) == {0, 1} and len(set(hosts.values())) == 2:
        return None
    return f"expected ranks 0 and 1 on two nodes of {nodes}, found {hosts or 'none'}"


def job_state(env: dict[str, str], job_id: int) -> str:
    """'STATE EXIT' of a job from scontrol, e.g. 'COMPLETED 0:0'."""
    text = slurm(env, "scontrol", "show", "job", "-o", str(job_id)).stdout
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    return f"{fields.get('JobState', '?')} {fields.get('ExitCode', '?')}"


def run_baseline(ctx: Context) -> Sample:
    """sbatch, poll squeue until the job has left its listing, read the output file."""
    job_id: int | None = None
    deadline = time.monotonic() + ctx.timeout_s
    started = time.perf_counter()
    try:
        submit = subprocess.run(["sbatch", "--parsable", str(JOB_SCRIPT)], cwd=ctx.workdir,
                                env=ctx.env, capture_output=True, text=True,
                                timeout=ctx.timeout_s, check=False)
        head = submit.stdout.strip().split(";")[0]
        if submit.returncode != 0 or not head.isdigit():
            return Sample(time.perf_counter() - started, failure=(
                f"sbatch exited {submit.returncode}: {submit.stdout.strip()} "
                f"{submit.stderr.strip()}"))
        job_id = int(head)
        while True:
            poll = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"],
                                  env=ctx.env, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()), check=False)
            state = poll.stdout.strip()
            if poll.returncode == 0 and (not state or state in FINISHED):
                break
            if poll.returncode != 0 and "Invalid job id" in poll.stderr:  # purged already
                break
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("squeue", ctx.timeout_s)
            time.sleep(POLL_S)
        output_file = ctx.workdir / f"slurm-hello-{job_id}.out"
        output = output_file.read_text(errors="replace") if output_file.exists() else ""
        wall = time.perf_counter() - started
    except subprocess.TimeoutExpired:
        scancel(ctx.env, job_id)
        return Sample(time.perf_counter() - started, slurm_job_id=job_id,
                      failure=f"timed out after {ctx.timeout_s:g} s")
    except BaseException:
        scancel(ctx.env, job_id)
        raise
    sample = Sample(wall, slurm_job_id=job_id)
    state = job_state(ctx.env, job_id)
    if state != "COMPLETED 0:0":
        sample.failure = f"job {job_id} ended {state}\n{output.strip()}"
    elif problem := check_ranks(output, ctx.nodes):
        sample.failure = f"{problem}\n{output.strip()}"
    return sample


def _recorded(corral_home: Path) -> dict[str, str | None]:
    """corral id -> Slurm job id of every job in the job store under corral_home."""
    from corral.store import Store

    db = corral_home / "corral.db"
    return {r.id: r.engine_id for r in Store(db).jobs("slurm")} if db.exists() else {}


def new_slurm_ids(corral_home: Path, before: set[str]) -> list[int]:
    """Slurm job ids of the jobs corral recorded since `before` (corral ids)."""
    return [int(engine_id) for job_id, engine_id in sorted(_recorded(corral_home).items())
            if job_id not in before and engine_id and engine_id.isdigit()]


def run_dirs(corral_home: Path) -> set[str]:
    return set(_recorded(corral_home))


def run_corral(ctx: Context) -> Sample:
    """The whole `corral run --backend slurm` process."""
    before = run_dirs(ctx.corral_home)
    started = time.perf_counter()
    proc = subprocess.Popen(ctx.corral, cwd=ctx.workdir, env=ctx.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    timed_out = False
    try:
        out, err = proc.communicate(timeout=ctx.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        wall = time.perf_counter() - started
        if proc.poll() is None:  # timed out or interrupted: end its process group
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            for job_id in new_slurm_ids(ctx.corral_home, before):
                scancel(ctx.env, job_id)
    ids = new_slurm_ids(ctx.corral_home, before)
    sample = Sample(wall, slurm_job_id=ids[0] if ids else None)
    text = f"--- stdout\n{out.strip()}\n--- stderr\n{err.strip()}"
    if timed_out:
        sample.failure = f"timed out after {ctx.timeout_s:g} s\n{text}"
    elif proc.returncode != 0:
        sample.failure = f"corral exited {proc.returncode}\n{text}"
    elif problem := check_ranks(out, ctx.nodes):
        sample.failure = f"{problem}\n{text}"
    return sample


def corral_argv(corral: Path, python: str) -> list[str]:
    return [str(corral), "run", "--backend", "slurm", "-o", f"python={python}",
            "-o", f"poll_seconds={POLL_S}", "--nodes", "2", "--procs-per-node", "1",
            *CORRAL_COMMAND]


CASES = [
    Case("`sbatch --parsable` + `squeue -h -j ID` every 0.2 s + read output", "baseline",
         run_baseline),
    Case("`corral run --backend slurm --nodes 2 --procs-per-node 1`", "corral", run_corral),
]


# --------------------------------------------------------------------------- running


def sleep_until_phase(phase: float) -> None:
    """Sleep until time.time() is `phase` (0..1) into a second."""
    time.sleep((phase - time.time()) % 1.0)


def run_round(outcomes: list[Outcome], ctx: Context, phase: float | None, first: int,
              timed: bool, idle_timeout: float) -> None:
    order = outcomes[first:] + outcomes[:first]
    for outcome in order:
        if outcome.failure is not None:
            continue
        busy = wait_for_idle(ctx.env, idle_timeout)
        known = job_ids(ctx.env, all_states=True)
        if phase is not None:
            sleep_until_phase(phase)
        start_phase = time.time() % 1.0
        sample = outcome.case.run(ctx)
        sample.phase = round(start_phase, 3)
        newcomers = job_ids(ctx.env, all_states=True) - known - {sample.slurm_job_id or -1}
        sample.contended = sorted(busy | newcomers)
        note = f" (other jobs: {sample.contended})" if sample.contended else ""
        status = "FAILED" if sample.failure else f"{sample.wall_s:.3f} s{note}"
        print(f"  {outcome.case.role:<9} phase {sample.phase:.2f}  job "
              f"{sample.slurm_job_id}  {status}", file=sys.stderr, flush=True)
        if sample.failure is not None:
            outcome.failure = sample.failure
        (outcome.samples if timed else outcome.warmup).append(sample)


def run_all(cluster: Cluster, corral: Path, python: str, rounds: int, timeout_s: float,
            idle_timeout: float, random_phase: bool) -> list[Outcome]:
    outcomes = [Outcome(case) for case in CASES]
    offset = random.random()
    with tempfile.TemporaryDirectory(prefix="corral-slurm-bench-") as tmp:
        scratch = Path(tmp)
        workdir, home = scratch / "work", scratch / "corral-home"
        workdir.mkdir()
        env = {**cluster.env, "CORRAL_HOME": str(home),
               "CORRAL_BENCH_SLEEP": os.environ.get("CORRAL_BENCH_SLEEP", "0")}
        ctx = Context(env, cluster.nodes, workdir, home, corral_argv(corral, python), timeout_s)
        for number in range(rounds + 1):
            phase = None if number == 0 or random_phase else (offset + number * GOLDEN) % 1.0
            label = "warm-up round" if number == 0 else f"round {number}/{rounds}"
            print(f"{label}:", file=sys.stderr, flush=True)
            run_round(outcomes, ctx, phase, number % len(outcomes), number > 0, idle_timeout)
    return outcomes


# --------------------------------------------------------------------------- reporting


def walls(outcome: Outcome) -> list[float]:
    return [sample.wall_s for sample in outcome.samples]


def median_wall(outcome: Outcome) -> float | None:
    if outcome.failure or not outcome.samples:
        return None
    return statistics.median(walls(outcome))


def ratio(outcome: Outcome, baseline: Outcome) -> float | None:
    wall, base = median_wall(outcome), median_wall(baseline)
    return None if wall is None or base is None else wall / base


def table(outcomes: list[Outcome]) -> str:
    baseline = baseline_of(outcomes)
    rows = [f"| case | median wall s | ratio vs baseline | mean s | min{DASH}max s |",
            "|---|---|---|---|---|"]
    for outcome in outcomes:
        label = outcome.case.name + (" — baseline" if outcome is baseline else "")
        wall, rel = median_wall(outcome), ratio(outcome, baseline)
        if outcome.failure or wall is None:
            first = (outcome.failure or "no samples").splitlines()[0]
            rows.append(f"| {label} | failed: {first} (output below) | | | |")
            continue
        values = walls(outcome)
        rel_text = "n/a" if rel is None else f"{rel:.2f}{TIMES}"
        rows.append(f"| {label} | {wall:.3f} | {rel_text} | {statistics.fmean(values):.3f} | "
                    f"{min(values):.3f}{DASH}{max(values):.3f} |")
    return "\n".join(rows)


def summary(outcomes: list[Outcome]) -> str:
    baseline = baseline_of(outcomes)
    corral = next(o for o in outcomes if o.case.role == "corral")
    rel = ratio(corral, baseline)
    if rel is None:
        return f"corral/sbatch ratio: failed (goal <= {GOAL:.2f}{TIMES})"
    corral_wall, base_wall = median_wall(corral) or 0.0, median_wall(baseline) or 0.0
    verdict = "met" if rel <= GOAL else "missed"
    return (f"corral/sbatch ratio: {rel:.2f}{TIMES} (goal <= {GOAL:.2f}{TIMES})\n"
            f"goal {verdict} ({rel:.3f}{TIMES}): corral {corral_wall:.3f} s vs baseline "
            f"{base_wall:.3f} s, {corral_wall - base_wall:+.3f} s per job (medians)")


def contention_note(outcomes: list[Outcome]) -> str | None:
    hit = [(o.case.role, s) for o in outcomes for s in o.samples if s.contended]
    if not hit:
        return None
    runs = ", ".join(f"{role} job {s.slurm_job_id} (others: {s.contended})" for role, s in hit)
    return (f"note: {len(hit)} timed run(s) overlapped other jobs on the cluster, so their "
            f"times may include queueing: {runs}")


def machine_info(cluster: Cluster, corral: Path) -> dict[str, Any]:
    version = slurm(cluster.env, "sbatch", "--version").stdout.strip()
    return {
        **harness.machine_facts(cluster.state_dir, cluster.owned, cluster.bring_up_s),
        "slurm": version,
        "corral": str(corral),
    }


def print_report(info: dict[str, Any], outcomes: list[Outcome], rounds: int,
                 random_phase: bool) -> None:
    phases = "random start times" if random_phase else "start phases spread over the second"
    length = os.environ.get("CORRAL_BENCH_SLEEP", "0")
    print(f"\n## Slurm submission overhead: 2 nodes x 1 task, each sleeping {length} s, "
          f"median of {rounds} round(s) after 1 warm-up ({phases})\n")
    print(f"machine: {info['nproc']} CPUs, load {info['load_avg_1m_at_start']} at start → "
          f"{os.getloadavg()[0]:.2f} at end; {info['platform']}; {info['slurm']}")
    print(harness.cluster_line(info))
    print(table(outcomes), end="\n\n")
    print(summary(outcomes))
    harness.print_report_end(outcomes, contention_note(outcomes))


def write_json(path: Path, info: dict[str, Any], outcomes: list[Outcome], rounds: int,
               random_phase: bool, commands: dict[str, str]) -> None:
    baseline = baseline_of(outcomes)
    cases = [{
        "name": o.case.name.replace("`", ""),
        "role": o.case.role,
        "command": commands[o.case.role],
        "failure": o.failure,
        "median_wall_s": median_wall(o),
        "mean_wall_s": statistics.fmean(walls(o)) if o.samples else None,
        "vs_baseline": ratio(o, baseline),
        "samples": [asdict(s) for s in o.samples],
        "warmup": [asdict(s) for s in o.warmup],
    } for o in outcomes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "rounds": rounds, "poll_s": POLL_S,
                                "random_phase": random_phase, "cases": cases}, indent=1))
    print(f"\nraw samples written to {path}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = harness.common_parser(__doc__.split("\n\n")[0], DEFAULT_STATE_DIR)
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for corral's job (-o python=...; default: this one)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds one run may take before it counts as failed")
    parser.add_argument("--idle-timeout", type=float, default=60.0,
                        help="seconds to wait for other jobs to leave before each run")
    parser.add_argument("--job-seconds", type=float, default=0.0,
                        help="each job sleeps this long first: a longer job (default: 0)")
    parser.add_argument("--random-phase", action="store_true",
                        help="start runs whenever they come, not spread over the second")
    args = harness.checked(parser, parser.parse_args(argv))
    os.environ["CORRAL_BENCH_SLEEP"] = f"{args.job_seconds:g}"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = attach_cluster(args.state_dir)
    try:
        info = machine_info(cluster, args.corral)
        outcomes = run_all(cluster, args.corral, args.python, args.rounds, args.timeout,
                           args.idle_timeout, args.random_phase)
    finally:
        harness.release(cluster.owned)
    print_report(info, outcomes, args.rounds, args.random_phase)
    if args.json:
        commands = {
            "baseline": f"sbatch --parsable {JOB_SCRIPT}; squeue -h -j ID -o %T every {POLL_S} s",
            "corral": shlex.join(corral_argv(args.corral, args.python)),
        }
        write_json(args.json, info, outcomes, args.rounds, args.random_phase, commands)
    return 1 if any(outcome.failure for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
