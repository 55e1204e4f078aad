"""The embedded queue with real processes: submit, ps reasons, logs, cancel, wait; GPUs
(one faked GPU), fractions of a GPU, dependencies, arrays, retries, preemption, hold."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import PROGRAMS, leftover_processes
from corral.backends.local import LocalBackend
from corral.jobstate import JobState
from corral.queue.agent import agent_running
from corral.queue.model import DependencyKind
from corral.queue.submission import Submission, parse_after, parse_array
from corral.spec import JobSpec
from corral.store import open_store

JOB = str(PROGRAMS / "queue_job.py")


@pytest.fixture(autouse=True)
def small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two CPUs and one (faked) GPU for the queue, whatever this machine has."""
    monkeypatch.setenv("CORRAL_QUEUE_CPUS", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setenv("CORRAL_QUEUE_PREEMPT_GRACE", "2")
    monkeypatch.setenv("CORRAL_QUEUE_IDLE", "3")


def job(out: Path, name: str, seconds: float, *extra: str, **fields: object) -> JobSpec:
    return JobSpec(name=name, entrypoint={"kind": "script", "path": JOB},
                   args=[str(out), name, str(seconds), *extra], **fields)


def submit(spec: JobSpec, **submission: object) -> str:
    return LocalBackend().submit_queued(spec, submission=Submission(**submission))[0]


def wait_all(ids: list[str], timeout: float = 60) -> dict[str, JobState]:
    backend = LocalBackend()
    return {i: backend.wait(i, timeout=timeout).state for i in ids}


def ran(out: Path, name: str, attempt: int = 1) -> dict[str, float]:
    data: dict[str, float] = json.loads((out / f"{name}.{attempt}.json").read_text())
    return data


def overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def corral(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


def until(check: object, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_submit_ps_logs_cancel_wait_through_the_cli(tmp_path: Path) -> None:
    first = corral("submit", "--cpus", "2", "--name", "first", JOB, "--", str(tmp_path),
                   "first", "3")
    assert first.returncode == 0, first.stderr
    first_id = first.stdout.strip()
    second = corral("submit", "--cpus", "2", "--name", "second", JOB, "--", str(tmp_path),
                    "second", "30")
    second_id = second.stdout.strip()
    store = open_store()
    until(lambda: store.get(first_id).state is JobState.RUNNING, what="first job running")
    until(lambda: store.get(second_id).reason == "Resources", what="reason Resources")
    ps = corral("ps")
    assert ps.returncode == 0, ps.stderr
    line = next(line for line in ps.stdout.splitlines() if line.startswith(second_id))
    assert "PENDING" in line and "Resources" in line, ps.stdout
    logs = corral("logs", "-f", first_id)
    assert logs.stdout.splitlines() == ["[n0 r0] first started", "[n0 r0] first done"]
    until(lambda: store.get(second_id).state is JobState.RUNNING, what="second job started")
    assert not overlap(ran(tmp_path, "first"), {"start": store.get(second_id).started or 0,
                                                "end": time.time()})
    record = store.get(second_id)
    cancelled = corral("cancel", second_id)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout, cancelled.stderr
    assert leftover_processes(record.run_dir or "", second_id) == []
    waited = corral("wait", first_id)
    assert waited.returncode == 0, waited.stderr
    assert corral("wait", second_id).returncode != 0


def test_cancelling_a_waiting_job_starts_nothing(tmp_path: Path) -> None:
    blocker = submit(job(tmp_path, "blocker", 30, resources={"cpus": 2}))
    waiting = submit(job(tmp_path, "waiting", 1, resources={"cpus": 2}))
    store = open_store()
    until(lambda: store.get(blocker).state is JobState.RUNNING, what="blocker running")
    status = LocalBackend().cancel(waiting)
    assert status.state is JobState.CANCELLED and status.reason == "cancelled while queued"
    LocalBackend().cancel(blocker)
    time.sleep(1.5)  # a pass after the blocker ended must not start the cancelled job
    assert not (tmp_path / "waiting.1.json").exists()
    assert store.get(waiting).started is None


def test_two_one_gpu_jobs_on_one_gpu_run_one_after_the_other(tmp_path: Path) -> None:
    ids = [submit(job(tmp_path, f"gpu{i}", 1.0, resources={"gpus": 1})) for i in range(2)]
    assert set(wait_all(ids).values()) == {JobState.SUCCEEDED}
    a, b = ran(tmp_path, "gpu0"), ran(tmp_path, "gpu1")
    assert a["gpus"] == b["gpus"] == "0"
    assert not overlap(a, b)


def test_half_gpus_share_one_gpu_and_never_exceed_it(tmp_path: Path) -> None:
    ids = [submit(job(tmp_path, f"half{i}", 2.0, resources={"gpus": 0.5, "cpus": 0.5}))
           for i in range(3)]
    assert set(wait_all(ids).values()) == {JobState.SUCCEEDED}
    runs = [ran(tmp_path, f"half{i}") for i in range(3)]
    assert all(r["gpus"] == "0" for r in runs)
    assert overlap(runs[0], runs[1])  # two halves at once
    third = runs[2]
    assert sum(overlap(third, r) for r in runs[:2]) <= 1  # never three halves at once


def test_dependencies_afterok_afternotok_afterany(tmp_path: Path) -> None:
    good = submit(job(tmp_path, "good", 0.5))
    bad = submit(job(tmp_path, "bad", 0.5, "4"))
    after_good = submit(job(tmp_path, "after_good", 0.1), after=parse_after([good]))
    never = submit(job(tmp_path, "never", 0.1), after=parse_after([f"afterok:{bad}"]))
    after_bad = submit(job(tmp_path, "after_bad", 0.1), after=parse_after([f"afternotok:{bad}"]))
    any_bad = submit(job(tmp_path, "any_bad", 0.1), after=parse_after([f"afterany:{bad}"]))
    states = wait_all([good, bad, after_good, after_bad, any_bad])
    assert states == {good: JobState.SUCCEEDED, bad: JobState.FAILED,
                      after_good: JobState.SUCCEEDED, after_bad: JobState.SUCCEEDED,
                      any_bad: JobState.SUCCEEDED}
    assert ran(tmp_path, "after_good")["start"] >= ran(tmp_path, "good")["end"]
    assert ran(tmp_path, "after_bad")["start"] >= ran(tmp_path, "bad")["end"]
    store = open_store()
    until(lambda: store.get(never).reason == "DependencyNeverSatisfied", what="never reason")
    assert store.get(never).state is JobState.PENDING
    assert LocalBackend().cancel(never).state is JobState.CANCELLED
    assert parse_after(["afterany:a:b"])[1].kind is DependencyKind.AFTER_ANY


def test_array_runs_every_task_at_most_n_at_once(tmp_path: Path) -> None:
    spec = job(tmp_path, "task", 0.8, resources={"cpus": 0.1})
    ids = LocalBackend().submit_queued(spec, submission=Submission(array=parse_array("0-5%2")))
    assert len(ids) == 6
    assert set(wait_all(ids).values()) == {JobState.SUCCEEDED}
    # every task wrote task.<attempt>.json in turn; read them all
    runs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("task-*.1.json"))]
    assert sorted(int(r["task"]) for r in runs) == [0, 1, 2, 3, 4, 5]
    most = max(sum(overlap(a, b) for b in runs) for a in runs)  # counts itself
    assert most <= 2


def test_a_failed_job_is_retried_then_succeeds(tmp_path: Path) -> None:
    job_id = submit(job(tmp_path, "flaky", 0.1, "--fail-first"), retries=2)
    status = LocalBackend().wait(job_id, timeout=60)
    assert status.state is JobState.SUCCEEDED and status.attempt == 2, status.summary()
    events = open_store().events(job_id)
    assert [(e.from_state, e.to_state) for e in events].count(("RUNNING", "PENDING")) == 1
    assert any("attempt 1 failed (rank 0 on node 0 failed: exit code 3)" in e.reason
               for e in events), [e.reason for e in events]
    assert ran(tmp_path, "flaky", 2)["attempt"] == 2


def test_preemption_signals_waits_stops_and_requeues(tmp_path: Path) -> None:
    victim = submit(job(tmp_path, "victim", 60, resources={"cpus": 2}), preemptible=True)
    store = open_store()
    until(lambda: store.get(victim).state is JobState.RUNNING
          and all(r.pid for r in store.ranks(victim)), what="victim running")
    time.sleep(0.5)  # its signal handler is installed
    urgent = submit(job(tmp_path, "urgent", 0.5, resources={"cpus": 2}, priority=500))
    until(lambda: (tmp_path / "victim.usr1").exists(), what="SIGUSR1 to the victim")
    warned = float((tmp_path / "victim.usr1").read_text())
    assert store.get(urgent).state is JobState.PENDING  # the grace period runs first
    assert wait_all([urgent])[urgent] is JobState.SUCCEEDED
    assert ran(tmp_path, "urgent")["start"] >= warned + 1.5  # grace of 2 s, then stopped
    status = LocalBackend().wait(victim, timeout=60)
    assert status.state is JobState.SUCCEEDED and status.attempt == 2, status.summary()
    assert ran(tmp_path, "victim", 1)["start"] >= ran(tmp_path, "urgent")["end"]
    reasons = [e.reason for e in store.events(victim)]
    assert any("preempted for job " + urgent in r for r in reasons), reasons


def test_held_job_waits_until_released(tmp_path: Path) -> None:
    job_id = submit(job(tmp_path, "held", 0.1), hold=True)
    store = open_store()
    until(lambda: store.get(job_id).reason == "Held", what="reason Held")
    time.sleep(1.0)
    assert store.get(job_id).state is JobState.PENDING
    released = corral("release", job_id)
    assert released.returncode == 0 and "released" in released.stdout, released.stderr
    assert wait_all([job_id])[job_id] is JobState.SUCCEEDED


def test_foreground_run_waits_for_the_gpu_a_queued_job_holds(tmp_path: Path) -> None:
    queued = submit(job(tmp_path, "queued", 2.0, resources={"gpus": 1}))
    store = open_store()
    until(lambda: store.get(queued).state is JobState.RUNNING, what="queued job running")
    run = corral("run", "--gpus", "1", "--name", "fg", JOB, "--", str(tmp_path), "fg", "0.2")
    assert run.returncode == 0, run.stderr
    assert "PENDING: Resources" in run.stderr, run.stderr
    assert not overlap(ran(tmp_path, "queued"), ran(tmp_path, "fg"))
    assert ran(tmp_path, "fg")["gpus"] == "0"


def test_a_job_larger_than_the_machine_is_refused_naming_the_field(tmp_path: Path) -> None:
    result = corral("submit", "--gpus", "2", JOB, "--", str(tmp_path), "big", "0")
    assert result.returncode == 125
    assert "resources.gpus" in result.stderr and "has 1" in result.stderr, result.stderr
    huge = corral("submit", "--memory", "1000T", JOB, "--", str(tmp_path), "huge", "0")
    assert huge.returncode == 125
    assert "resources" in huge.stderr and "MiB" in huge.stderr, huge.stderr
    bad = corral("submit", "--array", "5-1", JOB)
    assert bad.returncode == 125 and "array" in bad.stderr, bad.stderr
    unknown = corral("submit", "--after", "no-such-job", JOB)
    assert unknown.returncode == 125 and "after" in unknown.stderr, unknown.stderr


def test_ps_priority_queue_and_nodes(tmp_path: Path) -> None:
    blocker = submit(job(tmp_path, "blocker", 30, resources={"cpus": 2, "gpus": 1}))
    store = open_store()
    until(lambda: store.get(blocker).state is JobState.RUNNING, what="blocker running")
    low = submit(job(tmp_path, "low", 0.1, resources={"cpus": 2}, priority=-500))
    high = submit(job(tmp_path, "high", 0.1, resources={"cpus": 2}, priority=500))
    prio = json.loads(corral("ps", "--priority", "--json").stdout)
    assert [p["job_id"] for p in prio] == [high, low]
    assert prio[0]["qos"] > prio[1]["qos"]
    nodes = json.loads(corral("nodes", "--json").stdout)
    assert nodes["gpus"] == ["0"] and nodes["allocated"]["cpus"] == 2
    assert nodes["gpu_use"][0]["jobs"] == [blocker]
    assert corral("queue", "set", "batch", "--weight", "3").returncode == 0
    queues = json.loads(corral("queue", "--json").stdout)
    assert {q["queue"]: q["weight"] for q in queues["queues"]}["batch"] == 3
    for job_id in (blocker, low, high):
        LocalBackend().cancel(job_id)


def test_the_agent_exits_when_idle_and_a_killed_one_is_replaced(tmp_path: Path) -> None:
    store = open_store()
    first = submit(job(tmp_path, "one", 0.1))
    assert wait_all([first])[first] is JobState.SUCCEEDED
    pid = json.loads((store.path.parent / "queue-agent.pid").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)  # killed, not idle: the next look starts another
    until(lambda: not agent_running(store), what="the killed agent's lock freed")
    second = submit(job(tmp_path, "two", 0.1))
    assert wait_all([second])[second] is JobState.SUCCEEDED
    until(lambda: not agent_running(store), timeout=20, what="the idle agent to exit")


def test_python_api_submit_with_queue_options_and_arrays(tmp_path: Path) -> None:
    import corral

    first = corral.submit(job(tmp_path, "api_first", 0.2), retries=1)
    then = corral.submit(job(tmp_path, "api_then", 0.1), after=[first.job_id])
    tasks = corral.submit_array(job(tmp_path, "api_task", 0.1, resources={"cpus": 0.5}),
                                "0-2")
    assert [t.job_id for t in tasks] == [f"{tasks[0].job_id[:-2]}_{i}" for i in range(3)]
    assert all(t.wait(timeout=60).state is JobState.SUCCEEDED for t in [first, then, *tasks])
    assert ran(tmp_path, "api_then")["start"] >= ran(tmp_path, "api_first")["end"]
    assert sorted(p.name for p in tmp_path.glob("api_task-*.1.json")) == [
        "api_task-0.1.json", "api_task-1.1.json", "api_task-2.1.json"]
    with pytest.raises(corral.SpecError, match="array"):
        corral.submit_array(job(tmp_path, "bad", 0.1), "x-y")


def test_a_running_job_is_charged_to_its_users_fair_share_while_it_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_QUEUE_CHARGE_SECONDS", "0.5")
    job_id = submit(job(tmp_path, "long", 4, resources={"cpus": 2}))
    store = open_store()
    until(lambda: store.get(job_id).state is JobState.RUNNING, what="job running")
    time.sleep(2.0)
    during = json.loads(corral("queue", "--json").stdout)
    assert store.get(job_id).state is JobState.RUNNING
    used = {u["user"]: u["usage_cpu_s"] for u in during["users"]}
    assert 1.0 <= sum(used.values()) <= 2 * 4.0, used  # ~2 CPUs x 1-2 s so far
    assert wait_all([job_id])[job_id] is JobState.SUCCEEDED
    after = json.loads(corral("queue", "--json").stdout)
    total = sum(u["usage_cpu_s"] for u in after["users"])
    assert 7.0 <= total <= 2 * 4.0 + 2.0, after  # the whole run, charged once


def test_a_waiting_foreground_run_killed_leaves_no_job_behind(tmp_path: Path) -> None:
    blocker = submit(job(tmp_path, "blocker", 30, resources={"cpus": 2}))
    store = open_store()
    until(lambda: store.get(blocker).state is JobState.RUNNING, what="blocker running")
    run = subprocess.Popen([sys.executable, "-m", "corral.cli", "run", "--cpus", "2",
                            "--name", "fg", JOB, "--", str(tmp_path), "fg", "0.1"],
                           stderr=subprocess.PIPE, text=True)
    until(lambda: any(r.name == "fg" for r in store.jobs()), what="the run's job queued")
    fg = next(r.id for r in store.jobs() if r.name == "fg")
    until(lambda: store.get(fg).reason == "Resources", what="reason Resources")
    run.kill()
    run.communicate()
    until(lambda: store.get(fg).state is JobState.CANCELLED, what="the orphan cancelled")
    assert "ended before the job started" in store.get(fg).reason
    LocalBackend().cancel(blocker)
    time.sleep(1.0)
    assert not (tmp_path / "fg.1.json").exists()  # it never ran
