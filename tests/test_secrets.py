"""Run directories and the job store hold the jobs' environments (tokens, keys): readable
by their owner only."""

from __future__ import annotations

import stat
from pathlib import Path

import corral
from corral.backends.slurm.transport import LocalTransport
from corral.spec import JobSpec, JobState
from corral.store import open_store


def mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def test_local_run_dir_and_store_are_private(corral_home: Path) -> None:
    status = corral.run(JobSpec(name="secret", env={"API_TOKEN": "s3cr3t"},
                                entrypoint={"kind": "command", "argv": ["true"]}), stream=False)
    assert status.state is JobState.SUCCEEDED
    run_dir = Path(status.run_dir or "")
    assert "s3cr3t" in (run_dir / "plan.json").read_text()
    assert mode(run_dir) == 0o700 and mode(run_dir / "logs") == 0o700
    assert mode(run_dir.parent) == 0o700  # runs/
    store = open_store().path
    assert [mode(f"{store}{suffix}") for suffix in ("", "-wal", "-shm")] == [0o600] * 3


def test_slurm_run_dirs_made_by_the_transport_are_private(tmp_path: Path) -> None:
    target = tmp_path / "runs" / "job-1"
    LocalTransport().make_dirs(str(target))
    LocalTransport().make_dirs(str(target / "logs"))
    assert mode(target) == 0o700 and mode(target / "logs") == 0o700
