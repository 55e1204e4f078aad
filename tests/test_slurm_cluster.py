"""The Slurm backend on a real multi-node Slurm cluster (slurmctld + 3 slurmd in network
namespaces, started once for this module by tests/infra/slurm_cluster.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import PROGRAMS, REPO, read_rank_outputs, require
from corral.api import submit
from corral.backends.slurm import SlurmBackend, SlurmOptions
from corral.spec import JobSpec, JobState

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm(cluster: object, tmp_path: Path) -> SlurmBackend:
    # run dirs live under the test's CORRAL_HOME: the namespaces share this filesystem
    return SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.1))


def program(script: str, *args: str, **fields: object) -> JobSpec:
    fields.setdefault("name", script.removesuffix(".py"))
    return JobSpec(entrypoint={"kind": "script", "path": str(PROGRAMS / script)},
                   args=list(args), workdir=str(PROGRAMS), **fields)


def job_processes(job_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if job_id in " ".join(proc.info["cmdline"] or []) or (
                proc.environ().get("CORRAL_JOB_ID") == job_id
            ):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def run(slurm: SlurmBackend, spec: JobSpec, timeout: float = 180) -> object:
    ref = slurm.submit(spec)
    status = slurm.wait(ref.job_id, timeout=timeout)
    assert status.state.is_terminal(), status.summary()
    return status


def test_ddp_two_nodes_two_ranks(slurm: SlurmBackend, tmp_path: Path) -> None:
    status = run(slurm, program("ddp_allreduce.py", str(tmp_path), nodes=2, procs_per_node=2,
                                launcher="torchrun"))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    assert all(r["sum"] == [10.0] * 4 for r in ranks.values())
    hosts = {r["host"] for r in ranks.values()}
    assert len(hosts) == 2 and hosts <= {"node1", "node2", "node3"}
    by_node = {r["env"]["NODE_RANK"]: r["host"] for r in ranks.values()}
    assert len(by_node) == 2


def test_open_mpi_through_pmix(slurm: SlurmBackend, tmp_path: Path) -> None:
    status = run(slurm, program("mpi_allreduce.py", str(tmp_path), nodes=2, procs_per_node=2,
                                launcher="mpirun"))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, record in ranks.items():
        assert record["sum"] == 10 and record["mpi_size"] == 4
        assert record["env"]["RANK"] == str(rank)
        assert record["env"]["NODE_RANK"] == str(rank // 2)


def test_mingpt_few_steps_on_two_nodes(slurm: SlurmBackend, tmp_path: Path) -> None:
    spec = JobSpec(name="mingpt", entrypoint={"kind": "script",
                   "path": str(REPO / "examples/mingpt/train.py")},
                   args=["--steps", "4", "--eval-every", "2", "--eval-iters", "1",
                         "--checkpoint-dir", str(tmp_path)],
                   nodes=2, procs_per_node=1, launcher="torchrun", workdir=str(REPO))
    status = run(slurm, spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    log = "".join(line + "\n" for _, line in slurm.logs(status.job_id, rank=0))
    assert "world_size 2" in log and "final step 4" in log
    assert (Path(status.run_dir or "") / "code/examples/mingpt/train.py").exists()


def test_cancel_stops_processes_on_both_nodes(slurm: SlurmBackend) -> None:
    ref = slurm.submit(program("misbehave.py", "none", "-1", nodes=2, procs_per_node=1))
    deadline = time.monotonic() + 60
    while len({r for r in job_processes(ref.job_id) if "misbehave" in " ".join(r.cmdline())}) < 2:
        assert time.monotonic() < deadline, "ranks never started"
        time.sleep(0.2)
    status = slurm.cancel(ref.job_id)
    assert status.state is JobState.CANCELLED
    deadline = time.monotonic() + 20
    while job_processes(ref.job_id):
        assert time.monotonic() < deadline, job_processes(ref.job_id)
        time.sleep(0.2)


def test_failing_rank_on_node_two_is_named(slurm: SlurmBackend) -> None:
    status = run(slurm, program("misbehave.py", "exit3", "3", nodes=2, procs_per_node=2))
    assert status.state is JobState.FAILED
    failure = status.failure
    assert failure is not None
    assert (failure.rank, failure.node, failure.returncode) == (3, 1, 3)
    summary = status.summary()
    assert "rank 3 on node 1 failed: exit code 3 on host node2" in summary
    assert "rank 3 about to exit3" in summary


def test_failing_torchrun_rank_is_named(slurm: SlurmBackend) -> None:
    status = run(slurm, program("misbehave.py", "exit5", "1", nodes=2, procs_per_node=1,
                                launcher="torchrun"))
    assert status.state is JobState.FAILED
    failure = status.failure
    assert failure is not None and (failure.rank, failure.returncode) == (1, 5)


def test_time_limit_is_timeout(slurm: SlurmBackend) -> None:
    status = run(slurm, program("misbehave.py", "none", "-1", time_limit=60), timeout=240)
    assert status.state is JobState.TIMEOUT
    assert "time limit" in status.reason
    assert status.returncode == 124


def test_array_and_afterok_dependency(cluster: object, tmp_path: Path) -> None:
    arrays = SlurmBackend(SlurmOptions(python=sys.executable, array="0-2", poll_seconds=0.1))
    first = arrays.submit(JobSpec(name="arr", entrypoint={"kind": "command", "argv": [
        "sh", "-c", f'echo "$SLURM_ARRAY_TASK_ID" > {tmp_path}/task-$SLURM_ARRAY_TASK_ID'
    ]}, workdir=str(tmp_path)))
    after = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.1,
                                      dependency=f"afterok:{arrays.store.get(first.job_id).engine_id}"))
    second = after.submit(JobSpec(name="after", entrypoint={"kind": "command", "argv": [
        "sh", "-c", f"ls {tmp_path} > {tmp_path}/seen"]}, workdir=str(tmp_path)))
    assert after.wait(second.job_id, timeout=120).state is JobState.SUCCEEDED
    assert arrays.describe(first.job_id).state is JobState.SUCCEEDED
    seen = (tmp_path / "seen").read_text().split()
    assert {"task-0", "task-1", "task-2"} <= set(seen)


def test_pending_job_shows_slurms_reason_in_ps(cluster: object) -> None:
    tiny = SlurmBackend(SlurmOptions(python=sys.executable, partition="tiny", poll_seconds=0.1))
    blocker = tiny.submit(program("misbehave.py", "none", "-1"))
    waiting = tiny.submit(program("misbehave.py", "none", "-1"))
    try:
        deadline = time.monotonic() + 30
        while tiny.describe(waiting.job_id).reason not in ("Resources", "Priority"):
            assert time.monotonic() < deadline, tiny.describe(waiting.job_id)
            time.sleep(0.2)
        ps = subprocess.run([sys.executable, "-m", "corral.cli", "ps"], capture_output=True,
                            text=True, check=True)
        line = next(x for x in ps.stdout.splitlines() if waiting.job_id in x)
        assert "PENDING" in line and ("Resources" in line or "Priority" in line)
    finally:
        tiny.cancel(waiting.job_id)
        tiny.cancel(blocker.job_id)


def test_hostile_values_reach_the_program(slurm: SlurmBackend, tmp_path: Path) -> None:
    hostile = ["it's \"q\"", "$(touch /tmp/corral-pwned)", "`id`", "a\nb", "ünï 🚀", "--x", ""]
    spec = program("echo_args.py", str(tmp_path), *hostile, nodes=2, launcher="torchrun",
                   name="we'ird $(x)\nname", env={f"H{i}": v for i, v in enumerate(hostile)})
    status = run(slurm, spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    for record in read_rank_outputs(tmp_path).values():
        assert record["argv"] == hostile
        assert [record["env"][f"H{i}"] for i in range(len(hostile))] == hostile
        assert record["job"]["job_name"] == "we'ird $(x)\nname"
    assert not Path("/tmp/corral-pwned").exists()


def test_cli_run_streams_logs_and_exits_with_the_job(cluster: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "slurm", "-o",
         f"python={sys.executable}", "--nodes", "2", "sh", "-c", "echo on $(hostname) rank $RANK"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[n0 r0] on node1 rank 0", "[n1 r1] on node2 rank 1"]
    failed = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "slurm", "--nodes", "2",
         "sh", "-c", 'test "$RANK" = 0 || exit 4'], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 4, failed.stderr
    assert "rank 1 on node 1 failed: exit code 4 on host node2" in failed.stderr


def test_ssh_submission_end_to_end(cluster: object, tmp_path: Path) -> None:
    require(shutil.which("rsync") is not None, "rsync is not installed")
    remote_root = tmp_path / "remote-runs"
    target, config = cluster.ssh_target, cluster.ssh_config  # type: ignore[attr-defined]
    options = SlurmOptions(ssh=target, ssh_config=str(config), run_root=str(remote_root),
                           python=sys.executable, poll_seconds=0.1)
    handle = submit(program("echo_args.py", str(tmp_path), "over ssh", nodes=2),
                    SlurmBackend(options))
    status = handle.wait(timeout=120)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert sorted(handle.logs().splitlines()) == [
        "[n0 r0] args: ['over ssh']", "[n1 r1] args: ['over ssh']"]
    assert (remote_root / handle.job_id / "code" / "echo_args.py").exists()
    status_cli = subprocess.run([sys.executable, "-m", "corral.cli", "status", handle.job_id],
                                capture_output=True, text=True, check=True)
    assert "SUCCEEDED" in status_cli.stdout


def test_distributed_function_over_ssh(cluster: object, tmp_path: Path) -> None:
    import corral

    remote_root = tmp_path / "remote-runs"
    target, config = cluster.ssh_target, cluster.ssh_config  # type: ignore[attr-defined]
    options = SlurmOptions(ssh=target, ssh_config=str(config), run_root=str(remote_root),
                           python=sys.executable, poll_seconds=0.1)

    @corral.distributed(nodes=2, launcher="none", all_ranks=True,
                        backend=SlurmBackend(options), stream=False, workdir=str(tmp_path))
    def where(offset: int) -> tuple[int, str]:
        import os
        import socket

        return int(os.environ["RANK"]) + offset, socket.gethostname()

    results = where(10)
    assert [r for r, _ in results] == [10, 11]
    assert len({host for _, host in results}) == 2
    assert (remote_root / where.last_status.job_id / "results" / "rank-1.pkl").exists()  # type: ignore[union-attr]


def test_cli_detach_then_wait_logs_status_cancel(cluster: object) -> None:
    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True,
                              text=True, timeout=120)

    job_id = corral("run", "--backend", "slurm", "--detach", "-o", f"python={sys.executable}",
                    "--nodes", "2", "sh", "-c", "echo hello from $RANK").stdout.strip()
    assert corral("wait", job_id).stdout.strip() == f"{job_id}: SUCCEEDED"
    assert sorted(corral("logs", job_id).stdout.splitlines()) == [
        "[n0 r0] hello from 0", "[n1 r1] hello from 1"]
    assert corral("logs", job_id, "--rank", "1").stdout == "hello from 1\n"
    status = corral("status", job_id)
    assert "SUCCEEDED" in status.stdout and "rank 1 node 1" in status.stdout
    assert corral("cancel", job_id).stdout.strip() == f"{job_id}: SUCCEEDED"  # finished: as is


def test_ctrl_c_on_a_foreground_run_cancels_the_slurm_job(cluster: object,
                                                          corral_home: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "slurm", "-o",
         f"python={sys.executable}", "--nodes", "2", str(PROGRAMS / "misbehave.py"), "--",
         "none", "-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while "rank 1 started" not in "".join(
        p.read_text() for p in (corral_home / "runs").glob("*/logs/rank-1.log")
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    job_id = next((corral_home / "runs").iterdir()).name
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "CANCELLED" in err
    deadline = time.monotonic() + 20
    while job_processes(job_id):
        assert time.monotonic() < deadline, job_processes(job_id)
        time.sleep(0.2)
