"""The Slurm backend: sbatch, scontrol/sacct, scancel, and logs on the shared filesystem."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from corral.backends.base import (
    Capabilities,
    ConfiguredBackend,
    JobRef,
    Plan,
    check_workdir,
)
from corral.console import working
from corral.errors import BackendError, SpecError, SubmitError
from corral.launchers.failures import parse_torchrun
from corral.logs import LogFollower, LogSource
from corral.rundir import new_job_id, runs_root
from corral.runtime.procs import describe_returncode
from corral.snapshot import snapshot_files
from corral.spec import Function, JobSpec, JobState
from corral.status import Failure, RankStatus, TaskStatus
from corral.store import JobRecord, Observation, Store, corral_home

from .options import SlurmOptions
from .render import COMMENT_PREFIX, SlurmPlan, render
from .transport import LocalTransport, SshTransport, Transport

# A job submitted with --requeue that Slurm shows FAILED is taken as failed only after
# this long: when one of its nodes dies, Slurm may show FAILED for a moment (the batch
# step killed with the job) before it counts the restart and queues the job again.
REQUEUE_SETTLE_SECONDS = 10.0

# Slurm's job states -> corral's. COMPLETING still has processes to clean up.
STATES = {
    "PENDING": JobState.PENDING, "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING, "REQUEUE_HOLD": JobState.PENDING,
    "RESV_DEL_HOLD": JobState.PENDING,
    "RUNNING": JobState.RUNNING, "COMPLETING": JobState.RUNNING,
    "SUSPENDED": JobState.RUNNING, "STAGE_OUT": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING, "RESIZING": JobState.RUNNING, "STOPPED": JobState.RUNNING,
    "COMPLETED": JobState.SUCCEEDED,
    "CANCELLED": JobState.CANCELLED,
    "TIMEOUT": JobState.TIMEOUT, "DEADLINE": JobState.TIMEOUT,
    "FAILED": JobState.FAILED, "NODE_FAIL": JobState.FAILED, "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED, "PREEMPTED": JobState.FAILED,  # unless requeued
    "SPECIAL_EXIT": JobState.FAILED, "REVOKED": JobState.FAILED,
}
# Pending reasons of a job that will wait forever as it is: say so, and what to change.
NEVER_STARTS = {
    "PartitionNodeLimit": "it can never start: it asks for more nodes than the partition "
                          "allows; cancel it and ask for fewer (or another partition)",
    "PartitionTimeLimit": "it can never start: its time limit is over the partition's; "
                          "cancel it and ask for less time",
    "PartitionConfig": "it can never start in this partition as configured (CPUs, memory "
                       "or GPUs per node); cancel it and ask for less",
    "BadConstraints": "it can never start: no node has the features it asks for",
    "AssocMaxNodesPerJobLimit": "it can never start: more nodes than your account allows",
    "QOSMaxNodePerJobLimit": "it can never start: more nodes than its QOS allows",
}
_SRUN_ERROR = re.compile(
    r"srun: error: (?P<host>\S+): tasks? (?P<tasks>[\d,-]+): (?P<what>Exited with exit code "
    r"(?P<code>\d+)|Killed|Terminated|Segmentation fault|Aborted)"
)
_SIGNALS = {"Killed": 9, "Terminated": 15, "Segmentation fault": 11, "Aborted": 6}


def parse_scontrol(text: str) -> list[dict[str, str]]:
    """``scontrol show job -o``: one line per job (array tasks too) of Key=Value pairs."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record: dict[str, str] = {}
        for match in re.finditer(r"(\w+(?:/\w+)?)=(.*?)(?=\s\w+(?:/\w+)?=|$)", line):
            record[match.group(1)] = match.group(2).strip()
        records.append(record)
    return records


def parse_srun_failure(text: str) -> tuple[str, int, int] | None:
    """(host, first task id, return code) from srun's first 'srun: error: ...' line."""
    match = _SRUN_ERROR.search(text)
    if not match:
        return None
    first_task = int(re.split(r"[,-]", match.group("tasks"))[0])
    code = int(match.group("code")) if match.group("code") else -_SIGNALS[match.group("what")]
    return match.group("host"), first_task, code


def _slurm_time(text: str | None) -> float | None:
    """Seconds since the epoch from Slurm's 2026-11-27T22:27:54 (local time); None if unset."""
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def expand_tasks(text: str) -> list[int]:
    """Slurm's ArrayTaskId: '3', '0-3', '[2-5%2]', '1,4-6' -> the task numbers."""
    numbers: list[int] = []
    for part in text.strip("[]").split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            numbers.extend(range(int(lo), int(hi or lo) + 1))
    return numbers


def _exit_code(text: str) -> int | None:
    """Slurm's ExitCode 'CODE:SIGNAL' -> subprocess style (-SIGNAL when killed)."""
    code, _, sig = text.partition(":")
    if not code.isdigit():
        return None
    return -int(sig) if sig.isdigit() and int(sig) else int(code)


def expand_nodelist(nodelist: str) -> list[str]:
    """node[1-3,5],gpu7 -> node1 node2 node3 node5 gpu7 (what scontrol show hostnames does)."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.append(f"{prefix}{n:0{len(lo)}d}")
    return hosts


class SlurmBackend(ConfiguredBackend[SlurmOptions]):
    name = "slurm"
    options_type = SlurmOptions
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=True, arrays=True
    )
    cancel_grace = 30.0

    def __init__(self, options: SlurmOptions | None = None, transport: Transport | None = None,
                 root: Path | None = None, store: Store | None = None) -> None:
        super().__init__(store)
        self.options = options or SlurmOptions()
        if transport is None:
            transport = (SshTransport(self.options.ssh, self.options.ssh_config)
                         if self.options.ssh else LocalTransport())
        self.transport = transport
        self._root = root

    @property
    def root(self) -> Path:
        return self._root or runs_root()

    def engine_address(self) -> dict[str, Any]:
        return {"ssh": self.options.ssh, "ssh_config": self.options.ssh_config}

    # -- render / submit ------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None) -> SlurmPlan:
        job_id = job_id or new_job_id(spec.name)
        run_root = self.options.run_root or str(self.root)
        python = self.options.python or ("python3" if self.options.ssh else sys.executable)
        workdir = os.path.abspath(spec.workdir or os.getcwd())
        return render(spec, job_id=job_id, run_dir=f"{run_root}/{job_id}", workdir=workdir,
                      options=self.options, python=python)

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        slurm_plan = self.render(spec) if plan is None else plan
        if not isinstance(slurm_plan, SlurmPlan):
            raise SubmitError(f"the slurm backend cannot submit a {type(slurm_plan).__name__}")
        check_workdir(spec, slurm_plan.workdir)
        for note in slurm_plan.notes:
            sys.stderr.write(f"corral: note: {note}\n")
        return super().submit(spec, slurm_plan)

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        assert isinstance(plan, SlurmPlan)
        t = self.transport
        t.make_dirs(plan.run_dir)  # owner only: the script holds the job's environment
        t.make_dirs(f"{plan.run_dir}/logs")  # Slurm opens the batch log there
        if self.options.snapshot:
            snap = snapshot_files(
                plan.workdir,  # never corral's own home (the job store) nor run dirs
                leave_out=[str(corral_home()), str(self.root), os.path.dirname(plan.run_dir)],
                exclude=self.options.snapshot_exclude, max_mb=self.options.snapshot_max_mb)
            for name, why in snap.skipped:
                sys.stderr.write(f"corral: warning: not copied with the job: {name} ({why})\n")
            with working(f"corral: copying {len(snap.files)} files "
                         f"({snap.size / 2**20:.1f} MiB) of {plan.workdir} with the job"):
                t.copy_files(plan.workdir, snap.files, plan.code_dir)
        if isinstance(spec.entrypoint, Function):
            from corral.runtime.call import dump_payload

            entry = spec.entrypoint
            t.write_bytes(f"{plan.run_dir}/function.pkl",
                          dump_payload(entry.fn, entry.call_args, dict(entry.call_kwargs)))
        t.write_bytes(plan.script_path, plan.script.encode())
        done = t.run(["sbatch", "--parsable", plan.script_path])
        slurm_id = done.stdout.strip().split(";")[0]
        if not slurm_id.isdigit():
            raise SubmitError(f"sbatch printed {done.stdout!r}, not a job id")
        return slurm_id

    # -- describe -------------------------------------------------------------------------

    def _scontrol_all(self) -> list[dict[str, str]]:
        """Every job slurmctld still remembers, in one call."""
        done = self.transport.run(["scontrol", "show", "job", "-o"], check=False)
        if done.returncode != 0:
            if "No jobs in the system" in (done.stdout + done.stderr):
                return []
            raise BackendError(f"scontrol show job failed (exit code {done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[:300]}")
        return [] if "No jobs in the system" in done.stdout else parse_scontrol(done.stdout)

    def _sacct(self, slurm_ids: Sequence[str]) -> list[dict[str, str]]:
        """Finished jobs slurmctld forgot (MinJobAge passed): accounting (slurmdbd), else
        the job-completion log (``sacct -c``); one call for all of them."""
        wanted = set(slurm_ids)
        for source in ("-X", "-c"):
            done = self.transport.run(["sacct", source, "-n", "-P", "-j", ",".join(slurm_ids),
                                       "-o", "JobID,State,ExitCode,NodeList"], check=False)
            if done.returncode == 0 and done.stdout.strip():
                break
        records = []
        for line in done.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 4 and parts[0].split("_")[0] in wanted:
                slurm_id, _, task = parts[0].partition("_")
                records.append({"JobId": parts[0], "JobState": parts[1].split()[0],
                                "ExitCode": parts[2], "NodeList": parts[3], "Reason": "None",
                                "ArrayJobId": slurm_id, "ArrayTaskId": task})
        return records

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        """One scontrol call for every live job, one sacct call for those it forgot."""
        by_slurm_id = {r.engine_id: r for r in records if r.engine_id}
        if not by_slurm_id:
            return {}
        grouped: dict[str, list[dict[str, str]]] = {}
        for job in self._scontrol_all():
            key = job.get("ArrayJobId") or job.get("JobId", "")
            if key in by_slurm_id:
                grouped.setdefault(key, []).append(job)
        missing = [i for i in by_slurm_id if i not in grouped]
        if missing:
            for job in self._sacct(missing):
                grouped.setdefault(job["ArrayJobId"], []).append(job)
        found = {}
        for slurm_id, jobs in grouped.items():
            record = by_slurm_id[slurm_id]
            seen = self._observe(record, jobs)
            if seen is not None:
                found[record.id] = seen
        for slurm_id in missing:
            record = by_slurm_id[slurm_id]
            if slurm_id not in grouped and time.time() - record.created > 60:
                found[record.id] = Observation(
                    JobState.UNKNOWN, f"Slurm has no record of job {slurm_id} (neither "
                    "slurmctld nor accounting)")
        return found

    def _observe(self, record: JobRecord, jobs: list[dict[str, str]]) -> Observation | None:
        """What Slurm shows of the job, as an observation; None to wait for a clearer
        look (a --requeue job that just failed may be about to run again)."""
        first = jobs[0]
        restarts = first.get("Restarts")
        attempt = int(restarts) + 1 if restarts and restarts.isdigit() else None
        requeueing = attempt is not None and attempt > record.attempt
        states = [self._state(j) for j in jobs]
        if requeueing:
            # When Slurm counts a restart, what it shows still belongs to the attempt that
            # ended: COMPLETING while its processes are cleaned up, even FAILED for a
            # moment. The new attempt is waiting; the next look gives its own state.
            states = [JobState.PENDING if s.is_terminal() or j.get("JobState") == "COMPLETING"
                      else s for j, s in zip(jobs, states, strict=True)]
        bad = [s for s in states if s not in (JobState.SUCCEEDED, JobState.PENDING,
                                              JobState.RUNNING)]
        if any(s in (JobState.PENDING, JobState.RUNNING) for s in states):
            state = JobState.RUNNING if JobState.RUNNING in states else JobState.PENDING
        else:
            state = bad[0] if bad else JobState.SUCCEEDED
        reason = first.get("Reason", "None")
        reason = "" if reason in ("None", "(null)") else reason
        if state is JobState.PENDING and reason in NEVER_STARTS:
            reason = f"{reason}: {NEVER_STARTS[reason]}"
        notes: tuple[str, ...] = (f"slurm job {record.engine_id} on {first.get('NodeList', '?')}",)
        started = finished = None
        if state is not JobState.PENDING:
            started = _slurm_time(first.get("StartTime")) or record.started or time.time()
        failure = None
        tasks, task_failures = (self._tasks(record, jobs, states)
                                if (record.options or {}).get("array") else (None, []))
        if state.is_terminal():
            finished = _slurm_time(first.get("EndTime")) or time.time()
            if (state is JobState.FAILED and (record.options or {}).get("requeue")
                    and time.time() - finished < REQUEUE_SETTLE_SECONDS):
                return None
            if state is JobState.TIMEOUT:
                reason = "time limit reached (Slurm TIMEOUT)"
            elif state is JobState.CANCELLED:
                reason = "cancelled"
            elif state is JobState.FAILED and task_failures:
                task, failure = task_failures[0]
                reason = f"task {task}: {failure.describe()}"
                notes = (*notes, *(f"task {t.task}: {t.state.value} {t.reason}".rstrip()
                                   for t in tasks or () if t.state is not JobState.SUCCEEDED))
            elif state is JobState.FAILED:
                failure = self._attribute_failure(record, first)
                reason = failure.describe()
        return Observation(state, reason, engine_attempt=attempt, started=started,
                           finished=finished, failure=failure, notes=notes, tasks=tasks,
                           ranks=self._rank_states(record, state, failure,
                                                   expand_nodelist(first.get("NodeList", ""))))

    def _tasks(self, record: JobRecord, jobs: list[dict[str, str]], states: list[JobState]
               ) -> tuple[tuple[TaskStatus, ...], list[tuple[int, Failure]]]:
        """Each task of an array job, and the failed ones' own failure attribution (in
        task order)."""
        found: dict[int, TaskStatus] = {}
        failures: list[tuple[int, Failure]] = []
        for job, state in zip(jobs, states, strict=True):
            for number in expand_tasks(job.get("ArrayTaskId", "")):
                failure = (self._attribute_failure(record, job, number)
                           if state is JobState.FAILED else None)
                code = failure.returncode if failure and failure.returncode is not None else (
                    _exit_code(job.get("ExitCode", "")))  # the failing rank's own code first
                found[number] = TaskStatus(
                    task=number, state=state, returncode=code,
                    reason=failure.describe() if failure else "",
                    engine_id=job.get("JobId"))
                if failure is not None:
                    failures.append((number, failure))
        return tuple(found[n] for n in sorted(found)), sorted(failures, key=lambda f: f[0])

    @staticmethod
    def _state(job: dict[str, str]) -> JobState:
        slurm_state = job.get("JobState", "")
        if slurm_state == "PREEMPTED" and job.get("Requeue") == "1":
            return JobState.PENDING  # Slurm requeues it: not a final failure
        return STATES.get(slurm_state, JobState.UNKNOWN)

    @staticmethod
    def _rank_states(record: JobRecord, state: JobState, failure: Failure | None,
                     hosts: list[str]) -> tuple[RankStatus, ...]:
        """Per-rank records: the job's state, the failing rank FAILED, the others stopped."""
        failed = failure.rank if failure else None
        others = JobState.CANCELLED if state is JobState.FAILED else state
        per_node = record.procs_per_node
        return tuple(
            RankStatus(rank=r, node=r // per_node,
                       host=hosts[r // per_node] if r // per_node < len(hosts) else None,
                       state=JobState.FAILED if r == failed else others,
                       returncode=failure.returncode if failure and r == failed
                       else (0 if state is JobState.SUCCEEDED else None))
            for r in range(record.nodes * per_node)
        )

    def _read_run_file(self, record: JobRecord, relative: str) -> bytes | None:
        try:
            return self.transport.read_bytes(f"{record.run_dir}/{relative}")
        except FileNotFoundError:
            return None

    def _log_text(self, record: JobRecord, name: str) -> str:
        try:
            data = self.transport.read_bytes(f"{record.run_dir}/logs/{name}")
        except (FileNotFoundError, BackendError):
            return ""
        return data.decode("utf-8", errors="replace")

    def _down_nodes(self, nodelist: str) -> list[str]:
        """Which of these nodes Slurm holds down or failed now (one scontrol call)."""
        done = self.transport.run(["scontrol", "show", "node", "-o", nodelist], check=False)
        return [n.get("NodeName", "?") for n in parse_scontrol(done.stdout)
                if re.search(r"DOWN|FAIL|NOT_RESPONDING", n.get("State", ""))]

    def _attribute_failure(self, record: JobRecord, job: dict[str, str],
                           task: int | None = None) -> Failure:
        """The first failing rank of the job (of one task of an array job), from srun's
        report in the batch log and the launchers' logs."""
        hosts = expand_nodelist(job.get("NodeList", ""))
        logs = f"array-{task}/" if task is not None else ""  # the task's own log folder
        batch_log = (f"batch-{record.engine_id}_{task}.log" if task is not None
                     else f"batch-{record.engine_id}.log")
        if job.get("JobState") == "NODE_FAIL":
            down = self._down_nodes(job.get("NodeList", "")) if hosts else []
            node = hosts.index(down[0]) if down and down[0] in hosts else 0
            named = f"node {node} (host {down[0]})" if down else "a node of the job"
            return Failure(node=node, rank=None, returncode=None,
                           reason=f"NODE_FAIL: Slurm lost {named}; its ranks died with it",
                           time=time.time())
        batch = self._log_text(record, batch_log)
        found = parse_srun_failure(batch)
        code = _exit_code(job.get("ExitCode", "1:0")) or 1
        if found is None:
            reason = job.get("Reason", "None")
            why = describe_returncode(code) if reason in ("None", "NonZeroExitCode") else (
                f"Slurm reports {reason} ({describe_returncode(code)}); see "
                f"{record.run_dir}/logs/{batch_log} and slurmd's log")
            return Failure(node=0, rank=None, returncode=code, reason=why,
                           last_lines=batch.splitlines()[-20:])
        host, srun_task, code = found
        node = hosts.index(host) if host in hosts else 0
        rank: int | None = srun_task
        if record.launcher in ("torchrun", "deepspeed"):  # a task is a node's launcher
            inner = parse_torchrun(self._log_text(record, f"{logs}node-{node}.log"))
            rank, code = (inner.rank, inner.returncode) if inner else (None, code)
        log = f"{logs}rank-{rank}.log" if rank is not None else f"{logs}node-{node}.log"
        lines = self._log_text(record, log).splitlines()[-20:]
        return Failure(
            node=node, rank=rank, returncode=code,
            reason=f"{describe_returncode(code)} on host {host}", last_lines=lines,
            log=f"{record.run_dir}/logs/{log}", time=time.time(),
        )

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        """Slurm jobs whose --comment carries one of these corral ids."""
        wanted = {r.id for r in records}
        found = {}
        for job in self._scontrol_all():
            comment = job.get("Comment", "")
            if comment.startswith(COMMENT_PREFIX) and comment[len(COMMENT_PREFIX):] in wanted:
                found[comment[len(COMMENT_PREFIX):]] = job.get("ArrayJobId") or job["JobId"]
        return found

    # -- logs, cancel ---------------------------------------------------------------------

    def logs(self, job_id: str, rank: int | None = None, follow: bool = False,
             task: int | None = None) -> Iterator[tuple[LogSource, str]]:
        """A rank's lines, or every rank's; an array job's from one task (``task``)."""
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        array = (record.options or {}).get("array")
        if array and task is None:
            raise SpecError([("task", None, f"job {job_id} is an array job (tasks {array}); "
                              "give the task: corral logs ID --task N")])
        if task is not None:
            known = [t.task for t in self.store.tasks(job_id)]
            if not array or (known and task not in known):
                accepted = f"one of {known}" if known else "no task: it is not an array job"
                raise SpecError([("task", task, f"job {job_id} has {accepted}")])
        log_dir = f"{record.run_dir}/logs" + (f"/array-{task}" if task is not None else "")
        follower = LogFollower(Path(log_dir), rank, reader=self.transport.read_bytes,
                               lister=lambda: self.transport.list_dir(log_dir))
        return self.follow(job_id, follower, follow, self.options.poll_seconds)

    def _run_lines(self, job_id: str) -> Iterator[tuple[LogSource, str]]:
        if self.options.array:  # each task has logs of its own: corral logs ID --task N
            return iter(())
        return super()._run_lines(job_id)

    def _stop(self, record: JobRecord) -> None:
        slurm_id = record.engine_id or self.find_submitted([record]).get(record.id)
        if slurm_id is not None:
            self.transport.run(["scancel", slurm_id])
