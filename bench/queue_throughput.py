"""Queue throughput: N no-op jobs through corral's embedded local queue against the same N
through the Slurm test cluster, as N separate submissions and as one array of N tasks.

Four cases, in one run, with the same number of jobs running at once on both sides
(``--slots``, 2 by default: this machine's 2 cores)::

    corral   N x LocalBackend().submit_queued(spec)               (spec: ``true``, 1 CPU)
    slurm    N x sbatch --parsable --output=/dev/null --wrap true
    corral   LocalBackend().submit_queued(spec, Submission(array=parse_array("0-N-1")))
    slurm    sbatch --parsable --output=/dev/null --array=0-N-1 --wrap true

Each case is timed from its first submission to the moment its last job is seen finished,
and gives jobs per second (N / that time); the summary gives the ratio corral/slurm for each
way of submitting. The goal (the queue's issue): corral at least 2x Slurm's throughput. The
benchmark only prints; it asserts nothing.

- corral: through the Python API (no CLI process per job), each case in a fresh
  ``CORRAL_HOME`` under a temporary folder, with ``CORRAL_QUEUE_CPUS=K`` set before the first
  submission (the agent inherits it), so the queue runs K one-CPU jobs at once. The agent is
  started by the first submission, inside the timed window (that is what a user waits for);
  each job is started by the agent's forked child, supervised, and recorded in the store.
  "Finished" is the store showing every one of the jobs in a terminal state, polled every
  ``--poll`` s, oldest first, one read per job (and the latest ``finished`` the store
  recorded is shown beside it). A case fails at once, with the end of
  ``queue-agent.log``, when no agent has run for 10 s while jobs wait (nothing else would
  start them). The agent is stopped (SIGTERM to the pid in ``$CORRAL_HOME/queue-agent.pid``,
  checked to be that store's agent) after each case.
- slurm: on the test cluster of ``tests/infra/slurm_cluster.py`` (Slurm 22.05, 3 nodes of 2
  CPUs in network namespaces on this machine; reused when it is up and left running, else
  brought up and taken down at the end). To run K jobs at once as corral does, the jobs go to
  the fewest nodes whose CPUs, at the fewest CPUs per job, give exactly K slots (K=2: node1
  alone, 1 CPU per job; the other nodes excluded with ``--exclude``); when no such choice
  exists, the nearest above K is used and the report says so. ``--slurm-whole-cluster``
  lets Slurm use every node instead. "Finished" is the job's line in the cluster's job
  completion log (``jobcomp.txt``, written by slurmctld as each job ends; read from the
  host, so the polling costs slurmctld nothing), polled every ``--poll`` s; afterwards the
  benchmark waits until squeue lists none of the jobs. A job succeeded when that line says
  ``JobState=COMPLETED ... ExitCode=0:0``. Slurm 22.05 starts batch jobs on slurmctld's
  one-second background tick, so at most K jobs start per second here.

The cases run one after the other (corral first, then Slurm, for each way of submitting),
never at once: the machine has 2 cores. Before each Slurm case the benchmark waits until no
job is active on the cluster. Load on the machine while the benchmark runs (tests, builds)
slows both sides; the report gives the load average at start and end.

Run it as root (the cluster needs it), with the project's interpreter::

    .venv/bin/python bench/queue_throughput.py                  # 1000 jobs, 2 at once
    .venv/bin/python bench/queue_throughput.py --jobs 100 --slots 2
    .venv/bin/python bench/queue_throughput.py --no-slurm       # corral alone
    .venv/bin/python bench/queue_throughput.py --json /tmp/queue-throughput.json

If the Slurm cluster cannot be used (no Slurm installed, not root, another cluster holds
the network), the corral side still runs and the report says why Slurm is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import harness
from harness import Case, Outcome
from slurm_overhead import Cluster, attach_cluster, slurm, wait_for_idle

DEFAULT_STATE_DIR = Path("/tmp/corral-slurm")
GOAL = 2.0
TIMES = "\N{MULTIPLICATION SIGN}"
ARROW = "\N{RIGHTWARDS ARROW}"
MODES = ("separate", "array")
SLURM_MAX_ARRAY = 1001  # Slurm's default MaxArraySize: indices 0..1000
JOBCOMP_FIELD = re.compile(r"(\w+)=(\S*)")
AGENT_GONE_S = 10.0  # no queue agent this long while jobs wait: the case has failed


# --------------------------------------------------------------------------- results


@dataclass
class Sample:
    """One case's run: N jobs from the first submission to the last seen finished."""

    submitted: int = 0
    submit_s: float = 0.0  # first submission to the last one returned
    wall_s: float = 0.0  # first submission to the last job seen finished (polled)
    recorded_s: float | None = None  # first submission to the latest recorded end
    states: dict[str, int] = field(default_factory=dict)  # final state -> jobs
    examples: list[str] = field(default_factory=list)  # what the first unsuccessful said
    note: str | None = None

    @property
    def succeeded(self) -> int:
        return self.states.get("SUCCEEDED", 0) + self.states.get("COMPLETED 0:0", 0)

    @property
    def rate(self) -> float:
        return self.submitted / self.wall_s if self.wall_s > 0 else 0.0


class CaseFailed(Exception):
    """The case could not run to its end; the sample says how far it got."""

    def __init__(self, message: str, sample: Sample) -> None:
        super().__init__(message)
        self.sample = sample


@dataclass
class Context:
    jobs: int
    slots: int
    poll_s: float
    timeout_s: float
    work: Path  # scratch folder: corral homes, Slurm jobs' working directory
    slurm: SlurmSide | None = None
    slurm_missing: str | None = None


# --------------------------------------------------------------------------- corral


def agent_pid(home: Path, store_path: Path) -> int | None:
    """The queue agent of this home, if it still runs as that agent (never another pid)."""
    try:
        pid = int(json.loads((home / "queue-agent.pid").read_text())["pid"])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    args = [part.decode(errors="replace") for part in cmdline]
    if "corral.queue.agent" in args and str(store_path) in args:
        return pid
    return None


def stop_agent(home: Path, store_path: Path, wait_s: float = 15.0) -> str | None:
    """SIGTERM the agent; None once it is gone, else what went wrong."""
    pid = agent_pid(home, store_path)
    if pid is None:
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):  # it is our child: reap it
            os.waitpid(pid, os.WNOHANG)
        if agent_pid(home, store_path) is None or _zombie(pid):
            return None
        time.sleep(0.05)
    return f"queue agent {pid} still runs {wait_s:g} s after SIGTERM"


def log_tail(home: Path, lines: int = 12) -> str:
    try:
        text = (home / "queue-agent.log").read_text(errors="replace")
    except OSError as exc:
        return f"(unreadable: {exc})"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty)"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def run_corral(ctx: Context, array: bool) -> Sample:
    from corral.backends.local import LocalBackend
    from corral.jobstate import JobState
    from corral.queue.submission import Submission, parse_array
    from corral.spec import JobSpec
    from corral.store import open_store

    home = ctx.work / f"corral-{'array' if array else 'separate'}"
    home.mkdir()
    os.environ["CORRAL_HOME"] = str(home)
    os.environ["CORRAL_QUEUE_CPUS"] = str(ctx.slots)
    backend = LocalBackend()
    store = open_store()
    spec = JobSpec(name="noop", workdir=str(ctx.work),
                   entrypoint={"kind": "command", "argv": ["true"]})
    sample = Sample()
    ids: list[str] = []
    try:
        started_wall, started = time.time(), time.perf_counter()
        if array:
            tasks = Submission(array=parse_array(f"0-{ctx.jobs - 1}"))
            ids = backend.submit_queued(spec, submission=tasks)
        else:
            for _ in range(ctx.jobs):
                ids.extend(backend.submit_queued(spec))
        sample.submit_s = time.perf_counter() - started
        sample.submitted = len(ids)
        deadline = started + ctx.timeout_s
        agent_seen = time.perf_counter()
        waiting = list(reversed(ids))  # the oldest last: popped first
        while True:
            # One store read per job that ended since the last look, plus one: listing every
            # live job each time (store.jobs(live=True)) costs ~0.1 s of CPU with 1000 of
            # them, a third of a core taken from the queue it measures at 0.2 s polls.
            while waiting and store.get(waiting[-1]).state.is_terminal():
                waiting.pop()
            if not waiting:
                break
            now = time.perf_counter()
            if agent_pid(home, store.path) is not None:
                agent_seen = now
            problem = None
            if now - agent_seen > AGENT_GONE_S:  # nothing would start the rest
                problem = (f"no queue agent for {now - agent_seen:.0f} s with {len(waiting)} "
                           f"of {len(ids)} jobs not finished (its log: "
                           f"{home / 'queue-agent.log'})\n{log_tail(home)}")
            elif now > deadline:
                problem = (f"timed out after {ctx.timeout_s:g} s: {len(waiting)} of "
                           f"{len(ids)} jobs not finished yet (store {store.path})")
            if problem:
                sample.wall_s = now - started
                sample.states = dict(Counter(store.get(i).state.value for i in ids))
                raise CaseFailed(problem, sample)
            time.sleep(ctx.poll_s)
        sample.wall_s = time.perf_counter() - started
        records = [store.get(job_id) for job_id in ids]
        ends = [r.finished for r in records if r.finished is not None]
        sample.recorded_s = max(ends) - started_wall if ends else None
        sample.states = dict(Counter(r.state.value for r in records))
        for record in records:
            if record.state is not JobState.SUCCEEDED and len(sample.examples) < 3:
                log = Path(record.run_dir or home / "runs" / record.id) / "supervisor.log"
                sample.examples.append(f"{record.id}: {record.state.value}: {record.reason} "
                                       f"(see {log})")
    finally:
        problem = stop_agent(home, store.path)
        if problem:
            sample.note = problem
    return sample


# --------------------------------------------------------------------------- slurm


@dataclass
class SlurmSide:
    cluster: Cluster
    version: str
    nodes: dict[str, int]  # node -> CPUs, of the default partition
    partition: str
    use: list[str]  # the nodes the benchmark's jobs may run on
    cpus_per_job: int
    at_once: int  # jobs that run at once on those nodes
    jobcomp: Path

    @property
    def total_cpus(self) -> int:
        return sum(self.nodes.values())

    def placement(self) -> list[str]:
        argv = [f"--partition={self.partition}"]
        others = [node for node in self.nodes if node not in self.use]
        if others:
            argv.append(f"--exclude={','.join(others)}")
        if self.cpus_per_job > 1:
            argv.append(f"--cpus-per-task={self.cpus_per_job}")
        return argv

    def describe(self) -> str:
        nodes = ", ".join(self.use) if len(self.use) < len(self.nodes) else "every node"
        return (f"{nodes} ({sum(self.nodes[n] for n in self.use)} CPUs), "
                f"{self.cpus_per_job} CPU(s) per job: {self.at_once} at once")


def choose_nodes(nodes: dict[str, int], slots: int) -> tuple[list[str], int, int]:
    """(nodes, CPUs per job, jobs at once): exactly `slots` at once on the fewest nodes at
    the fewest CPUs per job; else the fewest nodes giving more than `slots` at 1 CPU each
    (or every node, if even they give fewer)."""
    for cpus in range(1, max(nodes.values(), default=1) + 1):
        chosen, at_once = [], 0
        for name, have in nodes.items():
            if at_once >= slots:
                break
            if have // cpus:
                chosen.append(name)
                at_once += have // cpus
        if at_once == slots:
            return chosen, cpus, at_once
    chosen, at_once = [], 0
    for name, have in nodes.items():
        if at_once >= slots:
            break
        chosen.append(name)
        at_once += have
    return chosen, 1, at_once


def slurm_nodes(env: dict[str, str]) -> tuple[str, dict[str, int]]:
    """The default partition and its nodes' CPUs (from sinfo)."""
    partitions = slurm(env, "sinfo", "-h", "-o", "%P").stdout.split()
    default = next((p.rstrip("*") for p in partitions if p.endswith("*")),
                   partitions[0] if partitions else "debug")
    out = slurm(env, "sinfo", "-h", "-N", "-p", default, "-o", "%N %c").stdout
    nodes: dict[str, int] = {}
    for line in out.splitlines():
        name, _, cpus = line.partition(" ")
        if cpus.strip().isdigit():
            nodes[name] = int(cpus)
    return default, dict(sorted(nodes.items()))


def attach_slurm(state_dir: Path, slots: int, whole: bool) -> SlurmSide:
    if shutil.which("sbatch") is None:
        raise RuntimeError("sbatch is not installed (tests/infra/slurm_cluster.py --install)")
    try:
        cluster = attach_cluster(state_dir)
    except SystemExit as exc:  # the harness's way to give up on the cluster
        raise RuntimeError(str(exc.code)) from None
    try:
        version = slurm(cluster.env, "sbatch", "--version").stdout.strip()
        partition, nodes = slurm_nodes(cluster.env)
        if not nodes:
            raise RuntimeError("sinfo lists no node")
        if whole:
            use, cpus, at_once = list(nodes), 1, sum(nodes.values())
        else:
            use, cpus, at_once = choose_nodes(nodes, slots)
        jobcomp = cluster.state_dir / "jobcomp.txt"
        if not jobcomp.exists():
            raise RuntimeError(f"no job completion log at {jobcomp}")
    except BaseException:
        harness.release(cluster.owned)
        raise
    return SlurmSide(cluster, version, nodes, partition, use, cpus, at_once, jobcomp)


def read_jobcomp(path: Path, offset: int) -> tuple[list[dict[str, str]], int]:
    """The whole lines written since `offset` (as fields), and the offset after them."""
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode(errors="replace").splitlines()
    return [dict(JOBCOMP_FIELD.findall(line)) for line in lines if line.strip()], offset + end


def slurm_time(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S").timestamp()
    except ValueError:
        return None


def sbatch(side: SlurmSide, cwd: Path, *argv: str) -> str:
    done = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--job-name=noop",
                           *side.placement(), *argv, "--wrap", "true"],
                          cwd=cwd, env=side.cluster.env, capture_output=True, text=True,
                          timeout=60, check=False)
    head = done.stdout.strip().split(";")[0]
    if done.returncode != 0 or not head.isdigit():
        raise RuntimeError(f"sbatch exited {done.returncode}: {done.stdout.strip()} "
                           f"{done.stderr.strip()}")
    return head


def run_slurm(ctx: Context, array: bool) -> Sample:
    side = ctx.slurm
    if side is None:
        raise RuntimeError(f"no Slurm: {ctx.slurm_missing}")
    if array and ctx.jobs > SLURM_MAX_ARRAY:
        raise RuntimeError(f"Slurm's default MaxArraySize takes at most {SLURM_MAX_ARRAY} "
                           f"tasks (indices 0-{SLURM_MAX_ARRAY - 1}); --jobs {ctx.jobs}")
    env = side.cluster.env
    busy = wait_for_idle(env, 60)
    sample = Sample()
    if busy:
        sample.note = f"other jobs were active on the cluster: {sorted(busy)[:10]}"
    offset = side.jobcomp.stat().st_size
    heads: set[str] = set()
    ended: dict[str, dict[str, str]] = {}  # Slurm job id (each task's own) -> jobcomp fields
    try:
        started_wall, started = time.time(), time.perf_counter()
        if array:
            heads.add(sbatch(side, ctx.work, f"--array=0-{ctx.jobs - 1}"))
        else:
            for _ in range(ctx.jobs):
                heads.add(sbatch(side, ctx.work))
        sample.submit_s = time.perf_counter() - started
        sample.submitted = ctx.jobs
        deadline = started + ctx.timeout_s
        while True:
            fields, offset = read_jobcomp(side.jobcomp, offset)
            for line in fields:
                if line.get("JobId") in heads or line.get("ArrayJobId") in heads:
                    ended[line["JobId"]] = line
            if len(ended) >= ctx.jobs:
                break
            if time.perf_counter() > deadline:
                sample.wall_s = time.perf_counter() - started
                raise CaseFailed(f"timed out after {ctx.timeout_s:g} s: {len(ended)} of "
                                 f"{ctx.jobs} jobs in {side.jobcomp}", sample)
            time.sleep(ctx.poll_s)
        sample.wall_s = time.perf_counter() - started
        ends = [t for line in ended.values() if (t := slurm_time(line.get("EndTime", "")))]
        sample.recorded_s = max(ends) - started_wall if ends else None
        states = Counter(f"{line.get('JobState', '?')} {line.get('ExitCode', '?')}"
                         for line in ended.values())
        sample.states = dict(states)
        sample.examples = [f"job {job}: {line.get('JobState')} {line.get('ExitCode')}"
                           for job, line in ended.items()
                           if (line.get("JobState"), line.get("ExitCode")) != ("COMPLETED", "0:0")
                           ][:3]
    except BaseException:
        for head in heads:
            with contextlib.suppress(subprocess.TimeoutExpired):
                slurm(env, "scancel", head)
        raise
    finally:  # not timed: until squeue lists none of them (completing ones included)
        still = wait_for_idle(env, 60) & {int(h) for h in heads}
        if still:
            sample.note = f"squeue still lists {len(still)} of them a minute after"
    return sample


# --------------------------------------------------------------------------- cases


def cases(jobs: int, modes: list[str]) -> list[Case]:
    last = jobs - 1
    table: dict[str, list[Case]] = {
        "separate": [
            Case(f"corral: {jobs} {TIMES} `submit_queued(spec)`", "corral",
                 lambda ctx: run_corral(ctx, array=False)),
            Case(f"slurm: {jobs} {TIMES} `sbatch --wrap true`", "baseline",
                 lambda ctx: run_slurm(ctx, array=False)),
        ],
        "array": [
            Case(f"corral: 1 `submit_queued(spec, array 0-{last})`", "corral",
                 lambda ctx: run_corral(ctx, array=True)),
            Case(f"slurm: 1 `sbatch --array=0-{last} --wrap true`", "baseline",
                 lambda ctx: run_slurm(ctx, array=True)),
        ],
    }
    return [case for mode in modes for case in table[mode]]


def mode_of(case: Case) -> str:
    return "array" if "array" in case.name else "separate"


def run_case(outcome: Outcome, ctx: Context) -> None:
    run: Callable[[Context], Sample] = outcome.case.run
    print(f"{outcome.case.name} ...", file=sys.stderr, flush=True)
    try:
        sample = run(ctx)
    except CaseFailed as exc:
        outcome.failure = str(exc)
        outcome.samples.append(exc.sample)
        print(f"  FAILED: {exc}", file=sys.stderr, flush=True)
        return
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        outcome.failure = f"{type(exc).__name__}: {exc}"
        print(f"  FAILED: {outcome.failure}", file=sys.stderr, flush=True)
        return
    except Exception as exc:  # corral raising: a finding, shown in full
        import traceback

        outcome.failure = (f"{type(exc).__name__}: {exc}\n"
                           + "".join(traceback.format_exception(exc)).strip())
        print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return
    outcome.samples.append(sample)
    print(f"  {sample.submitted} jobs: submitted in {sample.submit_s:.1f} s, all finished "
          f"after {sample.wall_s:.1f} s ({sample.rate:.2f} jobs/s), states {sample.states}",
          file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- reporting


def sample_of(outcome: Outcome) -> Sample | None:
    return outcome.samples[0] if outcome.samples and not outcome.failure else None


def states_text(sample: Sample) -> str:
    other = {k: v for k, v in sample.states.items() if k not in ("SUCCEEDED", "COMPLETED 0:0")}
    return ", ".join(f"{v} {k}" for k, v in sorted(other.items())) or "-"


def table(outcomes: list[Outcome]) -> str:
    rows = [f"| case | submit s | first submit {ARROW} last done s | jobs/s | "
            "last end recorded s | succeeded | other |", "|---|---|---|---|---|---|---|"]
    for outcome in outcomes:
        sample = sample_of(outcome)
        if sample is None:
            said = (f"failed: {outcome.failure.strip().splitlines()[0]}" if outcome.failure
                    else "not run")
            rows.append(f"| {outcome.case.name} | {said} | | | | | |")
            continue
        recorded = "-" if sample.recorded_s is None else f"{sample.recorded_s:.1f}"
        rows.append(f"| {outcome.case.name} | {sample.submit_s:.2f} | {sample.wall_s:.1f} | "
                    f"{sample.rate:.2f} | {recorded} | {sample.succeeded}/{sample.submitted} | "
                    f"{states_text(sample)} |")
    return "\n".join(rows)


def ratios(outcomes: list[Outcome], modes: list[str]) -> tuple[str, list[dict[str, Any]]]:
    rows = [f"| submitted as | corral jobs/s | slurm jobs/s | corral/slurm | "
            f"goal {GOAL:g}{TIMES} |", "|---|---|---|---|---|"]
    found = []
    for mode in modes:
        pair = {o.case.role: sample_of(o) for o in outcomes if mode_of(o.case) == mode}
        corral, base = pair.get("corral"), pair.get("baseline")
        label = "separate jobs" if mode == "separate" else "one array"
        c_text = f"{corral.rate:.2f}" if corral else "failed"
        b_text = f"{base.rate:.2f}" if base else "n/a"
        ratio = corral.rate / base.rate if corral and base and base.rate else None
        verdict = "n/a" if ratio is None else ("met" if ratio >= GOAL else "missed")
        r_text = "n/a" if ratio is None else f"{ratio:.2f}{TIMES}"
        rows.append(f"| {label} | {c_text} | {b_text} | {r_text} | {verdict} |")
        found.append({"mode": mode, "corral_jobs_per_s": corral.rate if corral else None,
                      "slurm_jobs_per_s": base.rate if base else None, "ratio": ratio})
    return "\n".join(rows), found


def print_report(ctx: Context, info: dict[str, Any], outcomes: list[Outcome],
                 modes: list[str]) -> list[dict[str, Any]]:
    print(f"\n## Queue throughput: {ctx.jobs} no-op jobs (`true`) per case, "
          f"{ctx.slots} at once in corral's queue\n")
    print(f"machine: {info['nproc']} CPUs, load {info['load_avg_1m_at_start']} at start "
          f"{ARROW} {os.getloadavg()[0]:.2f} at end; {info['platform']}; "
          f"Python {info['python']}")
    print(f"corral: CORRAL_QUEUE_CPUS={ctx.slots}, 1 CPU per job: {ctx.slots} at once; "
          f"done = every job terminal in the store, polled every {ctx.poll_s:g} s")
    side = ctx.slurm
    if side is None:
        print(f"slurm: not measured: {ctx.slurm_missing}\n")
    else:
        nodes = " + ".join(f"{n} {c}" for n, c in side.nodes.items())
        print(f"slurm: {side.version}, partition {side.partition}: {len(side.nodes)} nodes, "
              f"{side.total_cpus} CPUs ({nodes}); the benchmark's jobs: {side.describe()}"
              + ("" if side.at_once == ctx.slots else f", NOT the {ctx.slots} of corral"))
        print(f"slurm: done = the job's line in {side.jobcomp}, polled every {ctx.poll_s:g} s")
        print(harness.cluster_line(info))
    print(table(outcomes), end="\n\n")
    text, found = ratios(outcomes, modes)
    print(text)
    notes = [f"{o.case.role} ({mode_of(o.case)}): {s.note}" for o in outcomes
             for s in o.samples if s.note]
    examples = [f"{o.case.name}: {e}" for o in outcomes for s in o.samples for e in s.examples]
    if examples:
        print("\nunsuccessful jobs (first 3 per case):\n" + "\n".join(f"- {e}" for e in examples))
    harness.print_report_end(outcomes, "\n".join(f"note: {n}" for n in notes) or None)
    return found


def write_json(path: Path, ctx: Context, info: dict[str, Any], outcomes: list[Outcome],
               found: list[dict[str, Any]]) -> None:
    side = ctx.slurm
    data = {
        "machine": info, "jobs": ctx.jobs, "slots": ctx.slots, "poll_s": ctx.poll_s,
        "slurm": None if side is None else {
            "version": side.version, "partition": side.partition, "nodes": side.nodes,
            "use": side.use, "cpus_per_job": side.cpus_per_job, "at_once": side.at_once},
        "slurm_missing": ctx.slurm_missing,
        "cases": [{"name": o.case.name.replace("`", ""), "role": o.case.role,
                   "mode": mode_of(o.case), "failure": o.failure,
                   "samples": [{**asdict(s), "jobs_per_s": s.rate} for s in o.samples]}
                  for o in outcomes],
        "ratios": found,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    print(f"\nraw results written to {path}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per case (default: 1000)")
    parser.add_argument("--slots", type=int, default=2,
                        help="jobs at once: CORRAL_QUEUE_CPUS, and Slurm's nodes chosen to "
                             "match (default: 2)")
    parser.add_argument("--modes", default=",".join(MODES),
                        help="separate, array or both, comma-separated (default: both)")
    parser.add_argument("--poll", type=float, default=0.2,
                        help="seconds between looks for the end, both sides (default: 0.2)")
    parser.add_argument("--timeout", type=float,
                        help="seconds one case may take (default: max(300, 2 s per job))")
    parser.add_argument("--no-slurm", action="store_true", help="measure corral alone")
    parser.add_argument("--slurm-whole-cluster", action="store_true",
                        help="let Slurm run jobs on every node (not just --slots at once)")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR,
                        help=f"the test cluster's state dir (default: {DEFAULT_STATE_DIR})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scratch folder (corral homes; kept anyway on a failure)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes takes {', '.join(MODES)}")
    if args.jobs < 1 or args.slots < 1 or args.poll <= 0:
        parser.error("--jobs and --slots must be at least 1, --poll above 0")
    if args.timeout is None:
        args.timeout = max(300.0, 2.0 * args.jobs)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before anything of corral runs: the agent the first submission starts inherits it.
    os.environ["CORRAL_QUEUE_CPUS"] = str(args.slots)
    work = Path(tempfile.mkdtemp(prefix="corral-queue-bench-"))
    ctx = Context(args.jobs, args.slots, args.poll, args.timeout, work)
    if args.no_slurm:
        ctx.slurm_missing = "--no-slurm"
    else:
        try:
            ctx.slurm = attach_slurm(args.state_dir, args.slots, args.slurm_whole_cluster)
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
            ctx.slurm_missing = str(exc) or type(exc).__name__
            print(f"slurm: not measured: {ctx.slurm_missing}", file=sys.stderr)
    side = ctx.slurm
    owned = side.cluster.owned if side else None
    state_dir = side.cluster.state_dir if side else args.state_dir
    info = harness.machine_facts(state_dir, owned, side.cluster.bring_up_s if side else None)
    outcomes = [Outcome(case) for case in cases(args.jobs, args.modes)
                if case.role == "corral" or side is not None]
    try:
        for outcome in outcomes:
            try:
                run_case(outcome, ctx)
            except KeyboardInterrupt:  # report what ran (each case cleans up after itself)
                outcome.failure = "interrupted (Ctrl-C)"
                break
    finally:
        harness.release(owned)
        failed = any(o.failure or any(s.examples for s in o.samples) for o in outcomes)
        if args.keep or failed:
            print(f"scratch folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    found = print_report(ctx, info, outcomes, args.modes)
    if args.json:
        write_json(args.json, ctx, info, outcomes, found)
    return 1 if any(o.failure for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
