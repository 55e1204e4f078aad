"""A third-party backend in a few lines: runs the job's command as one process on this
machine, and keeps its exit code in the run directory. It knows only corral's public
Backend contract (hooks: render, _launch, describe_many, _stop, logs)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from corral.backends.base import Backend, Capabilities
from corral.logs import LogFollower, LogSource
from corral.rundir import new_job_id, runs_root
from corral.spec import Command, JobSpec, JobState, Script
from corral.store import JobRecord, Observation


@dataclass(frozen=True)
class ToyPlan:
    job_id: str
    run_dir: str
    argv: tuple[str, ...]

    def dry_run_text(self) -> str:
        return f"# toy job {self.job_id}\n{shlex.join(self.argv)}\n"


class ToyBackend(Backend):
    name = "toy"
    capabilities = Capabilities(gang=False, logs=True, follow=True, elastic=False,
                                queues=False, arrays=False)

    def render(self, spec: JobSpec, job_id: str | None = None) -> ToyPlan:
        job_id = job_id or new_job_id(spec.name)
        entry = spec.entrypoint
        head = list(entry.argv) if isinstance(entry, Command) else (
            [sys.executable, entry.path] if isinstance(entry, Script) else ["true"])
        return ToyPlan(job_id, str(runs_root() / job_id), (*head, *spec.args))

    def _launch(self, spec: JobSpec, plan: object, record: JobRecord) -> str:
        assert isinstance(plan, ToyPlan)
        logs = Path(plan.run_dir, "logs")
        logs.mkdir(parents=True)
        script = f'{shlex.join(plan.argv)}; echo $? > "{plan.run_dir}/exit"'
        with open(logs / "rank-0.log", "wb") as log:
            process = subprocess.Popen(["sh", "-c", script], stdout=log, stderr=log,
                                       start_new_session=True)
        return str(process.pid)

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        found = {}
        for record in records:
            exit_file = Path(record.run_dir or "", "exit")
            if exit_file.exists():
                code = int(exit_file.read_text() or 1)
                found[record.id] = Observation(
                    JobState.SUCCEEDED if code == 0 else JobState.FAILED,
                    "" if code == 0 else f"exit code {code}")
            elif record.state is JobState.PENDING:
                found[record.id] = Observation(JobState.RUNNING)
        return found

    def _stop(self, record: JobRecord) -> None:
        if record.engine_id:
            try:
                os.killpg(int(record.engine_id), signal.SIGTERM)
            except ProcessLookupError:
                pass
        Path(record.run_dir or "", "exit").write_text("143")

    def logs(self, job_id: str, rank: int | None = None,
             follow: bool = False) -> Iterator[tuple[LogSource, str]]:
        record = self.store.get(job_id)
        return self.follow(job_id, LogFollower(Path(record.run_dir or "", "logs"), rank),
                           follow)
