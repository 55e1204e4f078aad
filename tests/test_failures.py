"""A failing rank fails the job fast, names itself, and leaves no process behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import leftover_processes, require
from corral.backends.local import LocalBackend, LocalOptions
from corral.spec import JobSpec, JobState
from corral.status import JobStatus

# The other ranks sleep 120 s: a job that ends in seconds was stopped, not waited for.
SLEEPERS_WOULD_TAKE = 120


def misbehave(programs: Path, mode: str, bad_rank: int, **fields: object) -> JobSpec:
    return JobSpec(name="misbehave", entrypoint={"kind": "script", "path": str(
        programs / "misbehave.py")}, args=[mode, str(bad_rank)], **fields)


def assert_stopped_fast(status: JobStatus) -> None:
    assert status.duration is not None and status.duration < SLEEPERS_WOULD_TAKE / 4
    assert status.failure is not None and status.failure.time is not None
    assert status.finished is not None
    # the contract: every other rank is stopped within 2 s of the failure
    assert status.finished - status.failure.time < 2.0
    assert leftover_processes(status.run_dir or "", status.job_id) == []


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "exec"])
def test_rank_exit_code_fails_job(programs: Path, fork: bool) -> None:
    spec = misbehave(programs, "exit3", 3, nodes=2, procs_per_node=2,
                     preload=None if fork else [])
    status = LocalBackend(LocalOptions(fork=fork)).run(spec)
    assert status.state is JobState.FAILED
    failure = status.failure
    assert failure is not None
    assert (failure.rank, failure.node, failure.returncode) == (3, 1, 3)
    assert failure.last_lines[-1] == "rank 3 about to exit3"
    assert status.returncode == 3
    summary = status.summary()
    assert "rank 3 on node 1 failed: exit code 3" in summary
    assert "rank 3 about to exit3" in summary
    assert_stopped_fast(status)
    others = [r for r in status.ranks if r.rank != 3]
    assert all(r.state is JobState.CANCELLED for r in others)


def test_rank_sigkill_fails_job(programs: Path) -> None:
    status = LocalBackend().run(misbehave(programs, "kill", 1, nodes=2, procs_per_node=1))
    assert status.state is JobState.FAILED
    failure = status.failure
    assert failure is not None
    assert (failure.rank, failure.node, failure.returncode) == (1, 1, -9)
    assert "signal 9 (SIGKILL)" in status.summary()
    assert status.returncode == 137
    assert_stopped_fast(status)


def test_hang_past_time_limit(programs: Path) -> None:
    started = time.monotonic()
    spec = misbehave(programs, "none", -1, nodes=2, procs_per_node=2, time_limit=1.5)
    status = LocalBackend().run(spec)
    assert status.state is JobState.TIMEOUT
    assert "time limit of 1.5s" in status.reason
    assert status.returncode == 124
    assert time.monotonic() - started < SLEEPERS_WOULD_TAKE / 4
    assert leftover_processes(status.run_dir or "", status.job_id) == []


@pytest.mark.parametrize("mode", ["exit3", "kill"])
def test_torchrun_agent_reports_the_failing_rank(programs: Path, mode: str) -> None:
    spec = misbehave(programs, mode, 1, nodes=2, procs_per_node=1, launcher="torchrun")
    status = LocalBackend(LocalOptions(fork=False)).run(spec)
    assert status.state is JobState.FAILED
    failure = status.failure
    assert failure is not None
    assert failure.rank == 1
    assert failure.returncode == (3 if mode == "exit3" else -9)
    assert f"rank 1 about to {mode}" in failure.last_lines
    assert status.duration is not None and status.duration < SLEEPERS_WOULD_TAKE / 4
    assert leftover_processes(status.run_dir or "", status.job_id) == []


@pytest.mark.parametrize(("mpi", "tool"), [("openmpi", "mpirun"), ("mpich", "mpiexec.hydra")])
def test_mpi_rank_exit_fails_the_job_fast_and_is_named(programs: Path, mpi: str,
                                                       tool: str) -> None:
    import shutil

    require(shutil.which(tool) is not None, f"{tool} ({mpi}) not installed")
    spec = misbehave(programs, "exit3", 2, nodes=2, procs_per_node=2, launcher="mpirun",
                     mpi=mpi)
    status = LocalBackend().run(spec)
    assert status.state is JobState.FAILED
    failure = status.failure
    assert failure is not None
    assert (failure.rank, failure.node, failure.returncode) == (2, 1, 3)
    assert failure.last_lines[-1] == "rank 2 about to exit3"
    assert status.duration is not None and status.duration < SLEEPERS_WOULD_TAKE / 4
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def test_supervisor_crash_leaves_no_orphans_and_is_reported(programs: Path) -> None:
    import os
    import signal

    from corral.api import submit
    from corral.runtime.procs import wait_until

    handle = submit(misbehave(programs, "none", -1, nodes=2, procs_per_node=2))
    assert wait_until(lambda: handle.state is JobState.RUNNING, 30)
    status = handle.status()
    assert wait_until(lambda: all(r.pid for r in handle.status().ranks), 30)
    os.kill(int(status.engine_id or 0), signal.SIGKILL)  # the supervisor's pid
    # A look at the job after the supervisor is gone notices it, stops its ranks and
    # records it.
    assert wait_until(lambda: handle.state.is_terminal(), 10)
    final = handle.status()
    assert final.state is JobState.FAILED
    assert "supervisor died" in final.reason, final.reason
    assert not [r for r in final.ranks if r.state in (JobState.RUNNING, JobState.PENDING)]
    assert wait_until(lambda: not leftover_processes(status.run_dir or "", status.job_id), 10)


def test_restarts_that_give_up_name_the_first_real_cause(programs: Path) -> None:
    """torchrun restarts the ranks once; when it gives up, the summary names the rank's own
    exit code, not an error that a peer hit because of it."""
    spec = misbehave(programs, "exit3", 1, nodes=2, procs_per_node=1, launcher="torchrun",
                     max_restarts=1)
    status = LocalBackend().run(spec)
    assert status.state is JobState.FAILED
    assert status.failure is not None
    assert (status.failure.rank, status.failure.returncode) == (1, 3), status.summary()
    log = "".join(status.failure.last_lines)
    assert log.count("about to exit3") == 2  # it did restart once
