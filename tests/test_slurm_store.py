"""The job store against the real Slurm test cluster: a submitter killed around sbatch,
the shared watcher's command count, and a job that Slurm requeues."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import leftover_processes, read_until, require
from corral.backends.slurm import SlurmBackend, SlurmOptions
from corral.spec import JobSpec, JobState
from corral.status import JobStatus
from corral.store import open_store

pytestmark = pytest.mark.slurm
CORRAL = [sys.executable, "-m", "corral.cli"]


def wrappers(folder: Path, log: Path, **bodies: str) -> dict[str, str]:
    """A PATH folder with shell wrappers around Slurm's commands; returns the env."""
    folder.mkdir(exist_ok=True)
    for name, body in bodies.items():
        real = shutil.which(name)
        assert real, name
        script = folder / name
        script.write_text(f"#!/bin/sh\nREAL={real}\n{body}\n")
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}", "CALL_LOG": str(log)}


def through_the_requeue(backend: SlurmBackend, job: str, slurm_id: str) -> JobStatus:
    """Follow a requeued job to its end. Slurm holds a requeued job back for a while
    (Reason=BeginTime); an administrator may let it start at once, which this does."""
    deadline = time.monotonic() + 240
    released = False
    while not (status := backend.describe(job)).state.is_terminal():
        assert time.monotonic() < deadline, status.summary()
        if status.attempt >= 2 and status.reason == "BeginTime" and not released:
            subprocess.run(["scontrol", "update", f"JobId={slurm_id}", "StartTime=now"],
                           check=True, capture_output=True)
            released = True
        time.sleep(0.2)
    return status


def job_id_of(stderr_lines: list[str]) -> str:
    """The id in `corral run`'s first line: corral: job ID on BACKEND: ..."""
    return stderr_lines[0].split()[2]


def slurm_jobs_with(job_id: str) -> list[str]:
    out = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True,
                         text=True).stdout
    return [line for line in out.splitlines() if f"Comment=corral-job={job_id}" in line]


@pytest.mark.parametrize("moment", ["before", "during", "after"])
def test_killed_submitter_is_reconciled_without_duplicates(
        cluster: object, tmp_path: Path, moment: str) -> None:
    require(shutil.which("sbatch") is not None, "no sbatch")
    kill_parent = "kill -9 $PPID"
    body = {
        "before": f"{kill_parent}; exit 1",  # dies before Slurm hears of the job
        "during": f'{kill_parent}; exec "$REAL" "$@"',  # dies while sbatch submits
        "after": f'out=$("$REAL" "$@"); echo "$out"; {kill_parent}',  # before it reads the id
    }[moment]
    env = wrappers(tmp_path / "bin", tmp_path / "calls", sbatch=body)
    env["CORRAL_SUBMIT_GRACE"] = "3"
    done = subprocess.run([*CORRAL, "run", "--backend", "slurm", "--detach", "--name",
                           f"crash-{moment}", "-o", f"python={sys.executable}", "sleep", "2"],
                          env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == -9, done.stderr  # the submitter really was killed
    store = open_store()
    [record] = store.jobs("slurm", live=True)
    assert record.state is JobState.SUBMITTING and record.engine_id is None
    time.sleep(3.5)
    listed = subprocess.run([*CORRAL, "ps", "-a", "--json"], capture_output=True, text=True,
                            env={**os.environ, "CORRAL_SUBMIT_GRACE": "3"}, timeout=60)
    assert listed.returncode == 0, listed.stderr
    [shown] = [j for j in json.loads(listed.stdout) if j["job_id"] == record.id]
    on_slurm = slurm_jobs_with(record.id)
    if moment == "before":
        assert shown["state"] == "FAILED" and "submission lost" in shown["reason"]
        assert on_slurm == []
    else:
        assert len(on_slurm) == 1  # adopted, never submitted twice
        adopted = store.get(record.id)
        assert adopted.engine_id and f"JobId={adopted.engine_id} " in on_slurm[0]
        assert "adopted" in " ".join(e.reason for e in store.events(record.id))
        backend = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.2))
        assert backend.wait(record.id, timeout=60).state is JobState.SUCCEEDED


def test_waiters_share_one_watcher(cluster: object, tmp_path: Path) -> None:
    interval = 1.0
    backend = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=interval))
    spec = JobSpec(name="w", entrypoint={"kind": "command", "argv": ["sleep", "3"]},
                   workdir=str(tmp_path))
    ids = [backend.submit(spec).job_id for _ in range(12)]
    log = tmp_path / "calls"
    counted = 'echo "$(basename "$0")" >> "$CALL_LOG"; exec "$REAL" "$@"'
    env = wrappers(tmp_path / "bin", log, scontrol=counted, sacct=counted, squeue=counted)
    started = time.monotonic()
    waiters = [subprocess.Popen([*CORRAL, "wait", *ids], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for waiter in waiters:
        out, err = waiter.communicate(timeout=240)
        assert waiter.returncode == 0, err
        assert out.count("SUCCEEDED") == len(ids)
    elapsed = time.monotonic() - started
    calls = log.read_text().split() if log.exists() else []
    # 4 waiters x 12 jobs, asking on their own, would make hundreds of calls; shared, the
    # engine is asked at most once per interval (scontrol, plus sacct for forgotten jobs).
    limit = 2 * (elapsed / interval + 2)
    assert 0 < len(calls) <= limit, (len(calls), elapsed, calls)


def test_engine_requeue_is_followed(cluster: object, tmp_path: Path) -> None:
    backend = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.1, requeue=True))
    marker = tmp_path / "ran-once"
    once = f"if [ -e {marker} ]; then echo second; else touch {marker}; exec sleep 60; fi"
    spec = JobSpec(name="requeued", entrypoint={"kind": "command", "argv": ["sh", "-c", once]},
                   workdir=str(tmp_path))
    job = backend.submit(spec).job_id
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert time.monotonic() < deadline, backend.describe(job).summary()
        time.sleep(0.2)
    record = backend.store.get(job)
    slurm_id = str(record.engine_id)
    # Requeued and held until the first attempt's processes are gone: a new attempt that
    # starts on the same node while slurmd still tears the old one down (same job id) can be
    # killed with it, which is Slurm's business, not what this test is about.
    subprocess.run(["scontrol", "requeuehold", slurm_id], check=True, capture_output=True)
    deadline = time.monotonic() + 60
    while leftover_processes(str(record.run_dir), job):
        assert time.monotonic() < deadline, leftover_processes(str(record.run_dir), job)
        time.sleep(0.2)
    held = backend.describe(job)
    assert held.state is JobState.PENDING and held.attempt == 2, held.summary()
    subprocess.run(["scontrol", "release", slurm_id], check=True, capture_output=True)
    status = through_the_requeue(backend, job, slurm_id)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert status.attempt == 2 and "(attempt 2)" in status.summary()
    moves = [(e.to_state, e.attempt) for e in backend.store.events(job)]
    assert ("PENDING", 2) in moves and moves[-1] == ("SUCCEEDED", 2)
    shown = subprocess.run([*CORRAL, "status", job], capture_output=True, text=True)
    assert "attempt 2" in shown.stdout and "requeued by the engine" in shown.stdout


@pytest.mark.parametrize("requeue", [False, True], ids=["no-requeue", "requeue"])
def test_node_failure_mid_job(cluster: object, tmp_path: Path, requeue: bool) -> None:
    backend = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.5,
                                        requeue=requeue))
    first_time = 'if [ "${SLURM_RESTART_COUNT:-0}" = 0 ]; then exec sleep 300; fi; echo again'
    spec = JobSpec(name="nodefail", entrypoint={"kind": "command",
                   "argv": ["sh", "-c", first_time]}, nodes=2, workdir=str(tmp_path))
    job = backend.submit(spec).job_id
    slurm_id = backend.store.get(job).engine_id
    deadline = time.monotonic() + 60
    while backend.describe(job).state is not JobState.RUNNING:
        assert time.monotonic() < deadline, backend.describe(job).summary()
        time.sleep(0.2)
    nodelist = subprocess.run(["squeue", "-h", "-j", str(slurm_id), "-o", "%N"],
                              capture_output=True, text=True, check=True).stdout.strip()
    from corral.backends.slurm.client import expand_nodelist

    victim = expand_nodelist(nodelist)[1]
    cluster.crash_node(victim)  # type: ignore[attr-defined]
    try:
        if not requeue:
            status = backend.wait(job, timeout=150)
            assert status.state is JobState.FAILED, status.summary()
            assert "NODE_FAIL" in status.reason and victim in status.reason, status.reason
            assert status.failure is not None and status.failure.node == 1
            return
        status = through_the_requeue(backend, job, str(slurm_id))
        # never a final FAILED: the requeued job ran again and succeeded
        assert status.state is JobState.SUCCEEDED and status.attempt == 2, status.summary()
        moves = [(e.to_state, e.attempt) for e in backend.store.events(job)]
        assert ("PENDING", 2) in moves and JobState.FAILED.value not in {m for m, _ in moves}
    finally:
        cluster.restore_node(victim)  # type: ignore[attr-defined]


def test_array_tasks_have_their_own_state_logs_and_failure(cluster: object) -> None:
    arrays = SlurmBackend(SlurmOptions(python=sys.executable, array="0-3", poll_seconds=0.2))
    task_says = ('echo "task $SLURM_ARRAY_TASK_ID rank $RANK"; '
                 'if [ "$SLURM_ARRAY_TASK_ID" = 2 ] && [ "$RANK" = 1 ]; then exit 7; fi')
    spec = JobSpec(name="arr", entrypoint={"kind": "command", "argv": ["sh", "-c", task_says]},
                   nodes=2)
    job = arrays.submit(spec).job_id
    status = arrays.wait(job, timeout=120)
    assert status.state is JobState.FAILED, status.summary()
    assert [(t.task, t.state) for t in status.tasks] == [
        (0, JobState.SUCCEEDED), (1, JobState.SUCCEEDED), (2, JobState.FAILED),
        (3, JobState.SUCCEEDED)]
    failed = status.tasks[2]
    assert failed.returncode == 7 and "rank 1 on node 1 failed: exit code 7" in failed.reason
    assert status.reason.startswith("task 2: rank 1 on node 1 failed: exit code 7")
    assert status.failure is not None and status.failure.rank == 1
    lines = [line for _, line in arrays.logs(job, task=3)]
    assert sorted(lines) == ["task 3 rank 0", "task 3 rank 1"]

    def corral(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CORRAL, *args], capture_output=True, text=True, timeout=60)

    logs = corral("logs", job, "--task", "2", "--rank", "1")
    assert logs.returncode == 0 and logs.stdout == "task 2 rank 1\n", logs.stderr
    assert corral("logs", job).returncode == 125  # an array job needs --task
    bad = corral("logs", job, "--task", "9")
    assert bad.returncode == 125 and "task: got 9" in bad.stderr
    assert corral("logs", job, "--task", "1", "--rank", "5").returncode == 125
    shown = corral("status", job)
    assert "task 2: FAILED returncode 7" in shown.stdout and "task 3: SUCCEEDED" in shown.stdout


def test_sigterm_to_a_foreground_slurm_run_cancels_the_job(leave_nothing: list, cluster: object,
                                                           tmp_path: Path) -> None:
    import signal

    proc = subprocess.Popen([*CORRAL, "run", "--backend", "slurm", "-o",
                             f"python={sys.executable}", "-o", "poll_seconds=0.2", "--nodes",
                             "2", "sh", "-c", "echo up; sleep 120"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leave_nothing.append(proc)  # stopped if the test fails
    read_until(proc.stdout, "up", count=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    [job] = open_store().jobs("slurm")
    assert job.state is JobState.CANCELLED, job.reason
    assert slurm_jobs_with(job.id)[0].split("JobState=")[1].startswith("CANCELLED")


def test_run_root_with_a_space_and_percent_works(cluster: object, tmp_path: Path) -> None:
    root = tmp_path / "my runs 100%j"
    backend = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.2,
                                        run_root=str(root)))
    job = backend.submit(JobSpec(name="spaced", workdir=str(tmp_path), entrypoint={
        "kind": "command", "argv": ["sh", "-c", "echo here; pwd"]})).job_id
    status = backend.wait(job, timeout=120)
    assert status.state is JobState.SUCCEEDED, status.summary()
    logs = root / job / "logs"
    assert next(line for _, line in backend.logs(job, rank=0)) == "here"
    batch = list(logs.glob("batch-*.log"))
    assert [p.name for p in batch] == [f"batch-{backend.store.get(job).engine_id}.log"]
    # corral's home (the job store) sits inside the working directory here: not copied
    assert not (root / job / "code" / "corral-home").exists()


def test_queue_that_smuggles_an_option_is_refused(cluster: object, tmp_path: Path) -> None:
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text('command: ["true"]\nqueue: "debug --comment=INJECTED"\n')
    done = subprocess.run([*CORRAL, "run", "--backend", "slurm", "-o",
                           f"python={sys.executable}", "-f", str(spec_file)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 125 and "queue: got 'debug --comment=INJECTED'" in done.stderr
    assert open_store().jobs() == []  # nothing recorded, nothing submitted


def test_a_foreground_run_shows_why_its_job_waits(
        leave_nothing: list, cluster: object, tmp_path: Path) -> None:
    import signal

    proc = subprocess.Popen([*CORRAL, "run", "--backend", "slurm", "-o",
                             f"python={sys.executable}", "-o", "partition=tiny", "-o",
                             "poll_seconds=0.2", "--nodes", "2", "true"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    leave_nothing.append(proc)  # stopped if the test fails
    said = read_until(proc.stderr, "PartitionNodeLimit: it can never start")
    assert any(f"{job_id_of(said)} PENDING: PartitionNodeLimit" in line for line in said)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    [job] = open_store().jobs("slurm")
    assert job.state is JobState.CANCELLED


def test_mpirun_inside_the_allocation_runs_as_root_too(cluster: object, tmp_path: Path) -> None:
    require(os.geteuid() == 0, "this checks the root case")
    backend = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.2,
                                        mpi_mode="mpirun"))
    spec = JobSpec(name="mpi-root", entrypoint={"kind": "script", "path": str(
        Path(__file__).parent / "programs" / "mpi_allreduce.py")}, args=[str(tmp_path)],
        nodes=2, procs_per_node=1, launcher="mpirun", workdir=str(tmp_path))
    status = backend.wait(backend.submit(spec).job_id, timeout=120)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert len(list(tmp_path.glob("rank-*.json"))) == 2
