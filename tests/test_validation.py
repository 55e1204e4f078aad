"""Validation that is consistent: bounded numbers, combinations that cannot work, options
that list what is accepted, job files read relative to themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.errors import SpecError
from corral.spec import JobSpec

CORRAL = [sys.executable, "-m", "corral.cli"]
ECHO = {"kind": "command", "argv": ["true"]}


def corral(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


@pytest.mark.parametrize("limit", ["nan", "inf", "-5", "0", "00:99:99", "1:60", "400d",
                                   float("nan"), float("inf"), -1])
def test_time_limits_are_finite_positive_and_real_clock_values(limit: object) -> None:
    with pytest.raises(SpecError, match="time_limit"):
        JobSpec(entrypoint=ECHO, time_limit=limit)


@pytest.mark.parametrize("grace", ["nan", "-1", "1e9"])
def test_grace_periods_are_bounded(grace: str) -> None:
    done = corral("run", "--dry-run", "-o", f"grace_seconds={grace}", "true")
    assert done.returncode == 125 and "local.grace_seconds" in done.stderr


@pytest.mark.parametrize("timeout", ["nan", "-1", "inf"])
def test_wait_timeouts_are_bounded(timeout: str) -> None:
    done = corral("wait", "--timeout", timeout, "some-job")
    assert done.returncode == 125 and "timeout" in done.stderr


def test_combinations_that_cannot_work_are_refused() -> None:
    mpi = corral("run", "--dry-run", "--mpi", "mpich", "true")
    assert mpi.returncode == 125 and "--launcher mpirun" in mpi.stderr
    restarts = corral("run", "--dry-run", "--max-restarts", "2", "true")
    assert restarts.returncode == 125 and "max_restarts needs launcher 'torchrun'" in (
        restarts.stderr)


def test_unknown_backend_option_lists_the_accepted_ones() -> None:
    done = corral("run", "--dry-run", "-o", "graze_seconds=2", "true")
    assert done.returncode == 125
    assert "accepts: fork, grace_seconds" in done.stderr and "graze_seconds" in done.stderr
    slurm = corral("run", "--backend", "slurm", "--dry-run", "-o", "partiton=x", "true")
    assert slurm.returncode == 125 and "partition" in slurm.stderr


def test_job_files_read_relative_to_themselves(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    (jobs / "src").mkdir(parents=True)
    (jobs / "src" / "show.py").write_text(
        "import os, sys; print('args', sys.argv[1:], 'seed', os.environ['SEED'])\n")
    (jobs / "job.yaml").write_text(
        "script: src/show.py\nargs: ['--a']\nenv: {SEED: 3, DEBUG: true}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = corral("run", "-f", str(jobs / "job.yaml"), "--", "--b", "2", cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    assert "args ['--a', '--b', '2'] seed 3" in done.stdout


@pytest.mark.parametrize("key", ["RANK", "WORLD_SIZE", "MASTER_ADDR", "CORRAL_JOB_ID"])
def test_variables_corral_sets_cannot_be_given(key: str) -> None:
    with pytest.raises(SpecError, match=f"{key} is set by corral"):
        JobSpec(entrypoint=ECHO, env={key: "3"})
    done = corral("run", "--dry-run", "--env", f"{key}=3", "true")
    assert done.returncode == 125 and f"{key} is set by corral" in done.stderr


def test_a_users_thread_count_is_kept(tmp_path: Path) -> None:
    done = corral("run", "--nodes", "2", "--env", "OMP_NUM_THREADS=3", "sh", "-c",
                  'echo "threads $OMP_NUM_THREADS"', cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.count("threads 3") == 2, done.stdout
