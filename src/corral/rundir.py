"""Run directories: where a job's plan, logs, results and status live.

``$CORRAL_HOME/runs/<job id>/`` (``CORRAL_HOME`` defaults to ``~/.corral``)::

    job.json        what was submitted where (the record ``corral ps`` reads)
    plan.json       the rendered plan, exactly what was started
    status.json     the latest known status (written atomically)
    hostfile        the job's hosts, for MPI and DeepSpeed
    logs/rank-R.log output of rank R;  logs/node-N.log output of node N's agent/launcher
    results/        return values of distributed functions
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.errors import JobNotFound
from corral.spec import JobSpec, JobState
from corral.status import JobStatus


def corral_home() -> Path:
    return Path(os.environ.get("CORRAL_HOME") or Path.home() / ".corral")


def runs_root() -> Path:
    return corral_home() / "runs"


def new_job_id(name: str) -> str:
    """A readable, unique id: ``<slug of name>-<yymmdd-hhmmss>-<4 hex>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "job"
    return f"{slug}-{time.strftime('%y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, job_id: str, root: Path | None = None) -> RunDir:
        path = (root or runs_root()) / job_id
        (path / "logs").mkdir(parents=True, exist_ok=False)
        return cls(path)

    @classmethod
    def find(cls, job_id: str, root: Path | None = None) -> RunDir:
        path = (root or runs_root()) / job_id
        if not (path / "job.json").exists():
            raise JobNotFound(
                f"no job {job_id!r} under {path.parent}; `corral ps` lists the known jobs"
            )
        return cls(path)

    @property
    def job_id(self) -> str:
        return self.path.name

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def function_payload(self) -> Path:
        return self.path / "function.pkl"

    @property
    def results(self) -> Path:
        return self.path / "results"

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    def read_json(self, name: str) -> dict[str, Any]:
        with open(self.path / name, encoding="utf-8") as handle:
            data: dict[str, Any] = json.load(handle)
        return data

    def write_json(self, name: str, data: Any) -> None:
        write_json_atomic(self.path / name, data)

    def write_status(self, status: JobStatus) -> None:
        self.write_json("status.json", status.to_json())

    def read_status(self) -> JobStatus:
        return JobStatus.from_json(self.read_json("status.json"))

    def record_submission(self, spec: JobSpec, backend: str, run_dir: str,
                          **details: Any) -> JobStatus:
        """Write job.json (what was submitted where) and the first, PENDING status."""
        status = JobStatus(
            job_id=self.job_id, name=spec.name, backend=backend, state=JobState.PENDING,
            nodes=spec.nodes, procs_per_node=spec.procs_per_node, created=time.time(),
            run_dir=run_dir,
        )
        self.write_json("job.json", {
            "job_id": self.job_id, "name": spec.name, "backend": backend,
            "launcher": spec.launcher, "nodes": spec.nodes,
            "procs_per_node": spec.procs_per_node, "created": status.created,
            "run_dir": run_dir, **details,
        })
        self.write_status(status)
        return status


def iter_run_dirs(root: Path | None = None, backend: str | None = None) -> Iterator[RunDir]:
    """Every recorded run (of one backend, if given), newest first."""
    base = root or runs_root()
    if not base.is_dir():
        return
    entries = [p for p in base.iterdir() if (p / "job.json").exists()]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for path in entries:
        run = RunDir(path)
        if backend is None or run.read_json("job.json").get("backend", "local") == backend:
            yield run


def tail_lines(path: Path, count: int = 20, max_bytes: int = 64 * 1024) -> list[str]:
    """The last ``count`` lines of a file (empty if it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except FileNotFoundError:
        return []
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-count:]
