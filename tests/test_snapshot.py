"""What a Slurm job's code snapshot takes from the working directory, and what it refuses."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.errors import SubmitError
from corral.snapshot import snapshot_files


def test_run_roots_inside_the_working_directory_are_left_out(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    runs = tmp_path / "corral-runs"
    for n in range(3):  # earlier jobs' run dirs, each with a snapshot of its own
        (runs / f"job-{n}" / "code").mkdir(parents=True)
        (runs / f"job-{n}" / "code" / "train.py").write_text("print(1)\n")
    snap = snapshot_files(str(tmp_path), leave_out=[str(runs)])
    assert snap.files == ["train.py"]


def test_same_in_a_git_work_tree(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "runs" / "old" / "code").mkdir(parents=True)
    (tmp_path / "runs" / "old" / "code" / "train.py").write_text("x")
    snap = snapshot_files(str(tmp_path), leave_out=[str(tmp_path / "runs")])
    assert snap.files == ["train.py"]


def test_special_files_are_skipped_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "ok.py").write_text("x")
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "link.py").symlink_to(tmp_path / "ok.py")
    snap = snapshot_files(str(tmp_path))
    assert snap.files == ["link.py", "ok.py"]
    assert dict(snap.skipped) == {"pipe": "a FIFO", "dangling": "a broken symlink"}


def test_exclude_patterns_and_the_size_limit(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("x")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"\0" * (2 * 2**20))
    with pytest.raises(SubmitError, match=r"more than the limit of 1 MiB.*snapshot_exclude"):
        snapshot_files(str(tmp_path), max_mb=1)
    snap = snapshot_files(str(tmp_path), max_mb=1, exclude=["data/*"])
    assert snap.files == ["train.py"]
