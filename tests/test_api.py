"""The Python API: run/submit handles and distributed functions."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

import corral
from conftest import leftover_processes, read_until
from corral.api import JobHandle, submit
from corral.errors import JobFailed, RankError
from corral.spec import JobSpec, JobState

pytest.importorskip("torch")


@corral.distributed(nodes=2, procs_per_node=2, stream=False)
def allreduce_rank(scale: float) -> dict:
    import torch
    import torch.distributed as dist

    info = corral.env()
    dist.init_process_group("gloo")
    tensor = torch.tensor([float(info.rank + 1)]) * scale
    dist.all_reduce(tensor)
    dist.destroy_process_group()
    return {"rank": info.rank, "node": info.node_rank, "sum": tensor.item()}


def test_distributed_function_returns_rank_zero_value() -> None:
    result = allreduce_rank(2.0)
    assert result == {"rank": 0, "node": 0, "sum": 20.0}


def test_distributed_function_all_ranks() -> None:
    @corral.distributed(nodes=2, procs_per_node=1, all_ranks=True, stream=False)
    def who(offset: int) -> tuple[int, int, int]:
        info = corral.env()
        return info.rank + offset, info.node_rank, info.world_size

    assert who(10) == [(10, 0, 2), (11, 1, 2)]


class Boom(RuntimeError):
    pass


def test_exception_on_rank_one_reaches_the_caller() -> None:
    @corral.distributed(nodes=1, procs_per_node=2, stream=False)
    def fails() -> int:
        import time as t

        if corral.env().rank == 1:
            raise Boom("rank one is unhappy")
        t.sleep(60)
        return 0

    started = time.monotonic()
    with pytest.raises(RankError) as info:
        fails()
    assert time.monotonic() - started < 30  # rank 0 was stopped, not waited for
    error = info.value
    assert error.rank == 1 and error.node == 0
    assert "rank 1 (node 0) raised" in str(error)
    assert "Boom: rank one is unhappy" in error.remote_traceback
    assert "in fails" in error.remote_traceback
    assert isinstance(error.__cause__, Boom)
    assert error.status.state is JobState.FAILED


def test_streamed_output_is_prefixed() -> None:
    buffer = io.StringIO()
    from corral.console import LinePrinter

    @corral.distributed(nodes=2, stream=LinePrinter(1, buffer, color=False))
    def hello() -> None:
        print("hello from", corral.env().rank)

    hello()
    lines = sorted(buffer.getvalue().splitlines())
    assert lines == ["[n0 r0] hello from 0", "[n1 r1] hello from 1"]


def test_submit_handle_wait_logs_result(programs: Path, tmp_path: Path) -> None:
    spec = JobSpec(name="echo", entrypoint={"kind": "script", "path": str(
        programs / "echo_args.py")}, args=[str(tmp_path), "x"], nodes=2)
    handle = submit(spec)
    assert isinstance(handle, JobHandle)
    status = handle.wait(timeout=60)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert handle.logs(rank=1) == "args: ['x']\n"
    assert sorted(handle.logs().splitlines()) == ["[n0 r0] args: ['x']", "[n1 r1] args: ['x']"]
    assert corral.get_backend("local").describe(handle.job_id).state is JobState.SUCCEEDED


def test_submit_then_cancel_stops_everything(programs: Path) -> None:
    spec = JobSpec(name="sleepy", entrypoint={"kind": "script", "path": str(
        programs / "misbehave.py")}, args=["none", "-1"], nodes=2, procs_per_node=2)
    handle = submit(spec)
    deadline = time.monotonic() + 30
    while handle.state is not JobState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.05)
    status = handle.cancel()
    assert status.state is JobState.CANCELLED, status.summary()
    assert handle.cancel().state is JobState.CANCELLED  # idempotent
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def test_run_with_check_raises_job_failed(programs: Path) -> None:
    spec = JobSpec(name="bad", entrypoint={"kind": "command", "argv": ["false"]})
    with pytest.raises(JobFailed, match="exit code 1"):
        corral.run(spec, stream=False, check=True)
    status = corral.run(spec, stream=False)
    assert status.state is JobState.FAILED and status.returncode == 1


def test_unpicklable_function_is_refused_before_anything_starts(corral_home: Path) -> None:
    import threading

    lock = threading.Lock()

    @corral.distributed(stream=False)
    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(corral.CorralError, match="cannot be pickled"):
        uses_lock()
    assert not any((corral_home / "runs").glob("*/job.json"))


def test_unreadable_results_name_the_rank_and_type(tmp_path: Path) -> None:
    from corral.errors import ResultUnreadable

    (tmp_path / "onlythere.py").write_text("class Thing:\n    pass\n")

    def make(where: str, rank_with_thing: int) -> object:
        import os
        import sys

        sys.path.insert(0, where)
        import onlythere  # importable on the ranks, not in the caller

        return onlythere.Thing() if int(os.environ["RANK"]) == rank_with_thing else "plain"

    one = corral.distributed(nodes=2, launcher="none", stream=False)(make)
    assert one(str(tmp_path), 1) == "plain"  # only rank 0 is read back
    every = corral.distributed(nodes=2, launcher="none", stream=False, all_ranks=True)(make)
    with pytest.raises(ResultUnreadable, match=r"rank 1 \(a onlythere\.Thing\)"):
        every(str(tmp_path), 1)


def test_attach_gives_a_working_handle_whose_repr_works(programs: Path) -> None:
    spec = JobSpec(name="later", entrypoint={"kind": "command", "argv": ["sh", "-c", "echo hi"]})
    job_id = submit(spec).job_id
    handle = corral.attach(job_id)
    assert handle.wait(timeout=60).state is JobState.SUCCEEDED
    assert handle.logs(rank=0) == "hi\n"
    again = eval(repr(handle), {"corral": corral})
    assert again.job_id == job_id and again.state is JobState.SUCCEEDED


def test_ctrl_c_in_run_cancels_the_job_and_stops_a_sweep(
        leave_nothing: list, programs: Path) -> None:
    import signal
    import subprocess
    import sys

    from corral.store import open_store

    proc = subprocess.Popen([sys.executable, str(programs / "sweep.py")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leave_nothing.append(proc)  # stopped if the test fails
    read_until(proc.stdout, "started")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 3 and "interrupted during run 0" in out
    assert "run 1" not in out and "the loop went on" not in out
    [job] = open_store().jobs()
    assert job.name == "sweep-0" and job.state is JobState.CANCELLED
    assert leftover_processes(job.run_dir or "", job.id) == []
