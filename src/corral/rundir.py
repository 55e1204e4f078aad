"""Run directories: where a job's plan, logs, payloads and results live (never its state).

``$CORRAL_HOME/runs/<job id>/`` (``CORRAL_HOME`` defaults to ``~/.corral``), readable by
its owner only (the environment in the plan may hold tokens)::

    plan.json       the rendered plan, exactly what was started
    hostfile        the job's hosts, for MPI and DeepSpeed
    logs/rank-R.log output of rank R;  logs/node-N.log output of node N's agent/launcher
    results/        return values of distributed functions

The job's state, ranks and history are in the job store (:mod:`corral.store`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from corral.store import corral_home


def runs_root() -> Path:
    return corral_home() / "runs"


def new_job_id(name: str) -> str:
    """A readable, unique id: ``<slug of name>-<yymmdd-hhmmss>-<6 hex>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "job"
    return f"{slug}-{time.strftime('%y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


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
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.mkdir(mode=0o700)
        (path / "logs").mkdir(mode=0o700)
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
