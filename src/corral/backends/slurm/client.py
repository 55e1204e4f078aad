"""The Slurm backend: sbatch, scontrol/sacct, scancel, and logs on the shared filesystem."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from corral.backends.base import Backend, Capabilities, JobRef, Plan
from corral.errors import JobNotFound, SubmitError
from corral.launchers.failures import parse_torchrun
from corral.logs import LogFollower, LogSource
from corral.rundir import RunDir, iter_run_dirs, new_job_id, runs_root
from corral.runtime.procs import describe_returncode
from corral.spec import Function, JobSpec, JobState, Script
from corral.status import Failure, JobStatus, RankStatus

from .options import SlurmOptions
from .render import SlurmPlan, render
from .snapshot import snapshot_files
from .transport import LocalTransport, SshTransport, Transport

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
    "OUT_OF_MEMORY": JobState.FAILED, "PREEMPTED": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED, "REVOKED": JobState.FAILED,
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
            record[match.group(1)] = match.group(2)
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


class SlurmBackend(Backend):
    name = "slurm"
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=True, arrays=True
    )

    def __init__(self, options: SlurmOptions | None = None, transport: Transport | None = None,
                 root: Path | None = None) -> None:
        self.options = options or SlurmOptions()
        if transport is None:
            transport = (SshTransport(self.options.ssh, self.options.ssh_config)
                         if self.options.ssh else LocalTransport())
        self.transport = transport
        self._root = root

    @property
    def root(self) -> Path:
        return self._root or runs_root()

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
        if not os.path.isdir(slurm_plan.workdir):
            raise SubmitError(f"workdir: {slurm_plan.workdir!r} is not a directory")
        entry = spec.entrypoint
        if isinstance(entry, Script) and not entry.path.startswith("/") and not os.path.isfile(
            os.path.join(slurm_plan.workdir, entry.path)
        ):
            raise SubmitError(f"entrypoint: script {entry.path!r} not found in "
                              f"{slurm_plan.workdir}; nothing was submitted")
        record = RunDir.create(slurm_plan.job_id, self.root)
        t = self.transport
        t.make_dirs(f"{slurm_plan.run_dir}/logs")  # Slurm opens the batch log there
        if self.options.snapshot:
            t.copy_files(slurm_plan.workdir, snapshot_files(slurm_plan.workdir),
                         slurm_plan.code_dir)
        if isinstance(spec.entrypoint, Function):
            from corral.runtime.call import dump_payload

            entry = spec.entrypoint
            t.write_bytes(f"{slurm_plan.run_dir}/function.pkl",
                          dump_payload(entry.fn, entry.call_args, dict(entry.call_kwargs)))
        t.write_bytes(slurm_plan.script_path, slurm_plan.script.encode())
        done = t.run(["sbatch", "--parsable", slurm_plan.script_path])
        slurm_id = done.stdout.strip().split(";")[0]
        if not slurm_id.isdigit():
            raise SubmitError(f"sbatch printed {done.stdout!r}, not a job id")
        record.record_submission(spec, self.name, slurm_plan.run_dir, slurm_job_id=slurm_id,
                                 options=self.options.model_dump(mode="json"))
        return JobRef(self.name, slurm_plan.job_id)

    def slurm_id(self, job_id: str) -> str:
        """The Slurm job id behind a corral job id."""
        return str(self._record(job_id)["slurm_job_id"])

    def _record(self, job_id: str) -> dict[str, Any]:
        record = RunDir.find(job_id, self.root).read_json("job.json")
        if record.get("backend") != self.name:
            raise JobNotFound(f"job {job_id!r} ran on {record.get('backend')}, not slurm")
        return record

    # -- describe -------------------------------------------------------------------------

    def _query(self, slurm_id: str) -> list[dict[str, str]]:
        done = self.transport.run(["scontrol", "show", "job", "-o", slurm_id], check=False)
        if done.returncode == 0:
            return parse_scontrol(done.stdout)
        # Gone from slurmctld's memory (MinJobAge passed): ask accounting (slurmdbd), else
        # the job-completion log (`sacct -c`).
        for source in ("-X", "-c"):
            done = self.transport.run(["sacct", source, "-n", "-P", "-j", slurm_id, "-o",
                                       "JobID,State,ExitCode,NodeList"], check=False)
            if done.returncode == 0 and done.stdout.strip():
                break
        records = []
        for line in done.stdout.splitlines():
            parts = line.split("|")
            if len(parts) >= 4 and parts[0].split("_")[0] == slurm_id:
                records.append({"JobId": parts[0], "JobState": parts[1].split()[0],
                                "ExitCode": parts[2], "NodeList": parts[3], "Reason": "None"})
        return records

    def describe(self, job_id: str) -> JobStatus:
        record = self._record(job_id)
        run = RunDir.find(job_id, self.root)
        status = run.read_status()
        if status.state.is_terminal():
            return status
        jobs = self._query(str(record["slurm_job_id"]))
        if not jobs:
            status.reason = "Slurm has no record of the job (yet)"
            return status
        states = [STATES.get(j.get("JobState", ""), JobState.PENDING) for j in jobs]
        bad = [s for s in states if s not in (JobState.SUCCEEDED, JobState.PENDING,
                                              JobState.RUNNING)]
        if any(s in (JobState.PENDING, JobState.RUNNING) for s in states):
            status.state = JobState.RUNNING if JobState.RUNNING in states else JobState.PENDING
        else:
            status.state = bad[0] if bad else JobState.SUCCEEDED
        first = jobs[0]
        reason = first.get("Reason", "None")
        status.reason = "" if reason in ("None", "(null)") else reason
        status.notes = [f"slurm job {record['slurm_job_id']} on {first.get('NodeList', '?')}"]
        if status.state is not JobState.PENDING:
            status.started = _slurm_time(first.get("StartTime")) or status.started or time.time()
        if status.state.is_terminal():
            status.finished = _slurm_time(first.get("EndTime")) or time.time()
            if status.state is JobState.TIMEOUT:
                status.reason = "time limit reached (Slurm TIMEOUT)"
            elif status.state is JobState.CANCELLED:
                status.reason = "cancelled"
            elif status.state is JobState.FAILED:
                self._attribute_failure(status, record, first)
        self._rank_states(status)
        if status.state.is_terminal():
            run.write_status(status)
        return status

    @staticmethod
    def _rank_states(status: JobStatus) -> None:
        """Per-rank records: the job's state, the failing rank FAILED, the others stopped."""
        failed = status.failure.rank if status.failure else None
        others = JobState.CANCELLED if status.state is JobState.FAILED else status.state
        status.ranks = [
            RankStatus(rank=r, node=r // status.procs_per_node,
                       state=JobState.FAILED if r == failed else others,
                       returncode=status.failure.returncode if status.failure and r == failed
                       else (0 if status.state is JobState.SUCCEEDED else None))
            for r in range(status.nodes * status.procs_per_node)
        ]

    def _log_text(self, record: dict[str, Any], name: str) -> str:
        try:
            data = self.transport.read_bytes(f"{record['run_dir']}/logs/{name}")
        except FileNotFoundError:
            return ""
        return data.decode("utf-8", errors="replace")

    def _attribute_failure(self, status: JobStatus, record: dict[str, Any],
                           job: dict[str, str]) -> None:
        hosts = expand_nodelist(job.get("NodeList", ""))
        batch = self._log_text(record, f"batch-{record['slurm_job_id']}.log")
        found = parse_srun_failure(batch)
        exit_text, _, signal_text = job.get("ExitCode", "1:0").partition(":")
        code = int(exit_text or 0) or -int(signal_text or 0) or 1
        if found is None:
            reason = job.get("Reason", "None")
            why = describe_returncode(code) if reason in ("None", "NonZeroExitCode") else (
                f"Slurm reports {reason} ({describe_returncode(code)}); see "
                f"{record['run_dir']}/logs/batch-{record['slurm_job_id']}.log and slurmd's log")
            status.failure = Failure(node=0, rank=None, returncode=code, reason=why,
                                     last_lines=batch.splitlines()[-20:])
            status.reason = status.failure.describe()
            return
        host, task, code = found
        node = hosts.index(host) if host in hosts else 0
        rank: int | None = task
        if record["launcher"] in ("torchrun", "deepspeed"):  # a task is a node's launcher
            inner = parse_torchrun(self._log_text(record, f"node-{node}.log"))
            rank, code = (inner.rank, inner.returncode) if inner else (None, code)
        log = f"rank-{rank}.log" if rank is not None else f"node-{node}.log"
        lines = self._log_text(record, log).splitlines()[-20:]
        status.failure = Failure(
            node=node, rank=rank, returncode=code,
            reason=f"{describe_returncode(code)} on host {host}", last_lines=lines,
            log=f"{record['run_dir']}/logs/{log}", time=time.time(),
        )
        status.reason = status.failure.describe()

    # -- logs, cancel, list ---------------------------------------------------------------

    def logs(self, job_id: str, rank: int | None = None,
             follow: bool = False) -> Iterator[tuple[LogSource, str]]:
        record = self._record(job_id)
        log_dir = f"{record['run_dir']}/logs"
        follower = LogFollower(Path(log_dir), rank, reader=self.transport.read_bytes,
                               lister=lambda: self.transport.list_dir(log_dir))
        return self.follow(job_id, follower, follow, self.options.poll_seconds)

    def cancel(self, job_id: str, timeout: float = 30.0) -> JobStatus:
        status = self.describe(job_id)
        if status.state.is_terminal():
            return status
        self.transport.run(["scancel", self.slurm_id(job_id)])
        deadline = time.monotonic() + timeout
        while not (status := self.describe(job_id)).state.is_terminal():
            if time.monotonic() > deadline:
                break
            time.sleep(self.options.poll_seconds)
        return status

    def list(self) -> list[JobStatus]:
        return [self.describe(run.job_id) for run in iter_run_dirs(self.root, self.name)]

    def wait(self, job_id: str, timeout: float | None = None, poll: float | None = None
             ) -> JobStatus:
        return super().wait(job_id, timeout, self.options.poll_seconds if poll is None else poll)
