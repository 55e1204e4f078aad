"""Flows run for real: every step a corral job on the local backend (the embedded queue).

Fan-out and joins with artifacts; a gang step of 2 nodes x 2 torchrun ranks whose
all_reduce is checked; its rank 3 failing fails the step and the run, naming the rank;
resuming reruns only from the gang step; the minGPT flow of the founding document."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.flow import Flow
from corral.flow.records import FlowRecords
from corral.store import open_store

FLOWS = Path(__file__).parent / "flows"
REPO = Path(__file__).resolve().parents[1]


def corral(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(autouse=True)
def roomy_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_QUEUE_CPUS", "8")  # steps of 1 CPU each, several at once
    monkeypatch.setenv("CORRAL_QUEUE_IDLE", "5")


def test_foreach_branch_and_joins_pass_artifacts(tmp_path: Path) -> None:
    done = corral("flow", "run", str(FLOWS / "run_fanout.py"), "--scale", "3")
    assert done.returncode == 0, done.stderr
    run = Flow("FanoutFlow").latest_run
    assert run.successful
    end = run["end"].task.data
    assert end.values == [3, 12, 27] and end.total == 42 and end.positions == [0, 1, 2]
    assert end.sides == ["left", "right"] and end.shared == "same everywhere"
    assert end.scale == 3
    assert sorted(t.id for t in run["square"].tasks) == ["0.0", "0.1", "0.2"]
    shown = corral("flow", "show", run.id)
    assert "square" in shown.stdout and "SUCCEEDED" in shown.stdout, shown.stderr
    listed = corral("flow", "ls")
    assert run.id in listed.stdout


def test_parameters_are_checked_before_anything_runs() -> None:
    bad = corral("flow", "run", str(FLOWS / "run_fanout.py"), "--scale", "many")
    assert bad.returncode == 125 and "--scale" in bad.stderr and "int" in bad.stderr
    unknown = corral("flow", "run", str(FLOWS / "run_fanout.py"), "--scal", "2")
    assert unknown.returncode == 125 and "scale" in unknown.stderr
    missing = corral("flow", "run", str(FLOWS / "run_gang.py"))
    assert missing.returncode == 125 and "out" in missing.stderr
    assert FlowRecords(open_store()).runs() == []


def test_gang_step_all_reduce_then_a_failing_rank_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    good = corral("flow", "run", str(FLOWS / "run_gang.py"), "--out", str(out))
    assert good.returncode == 0, good.stderr
    run = Flow("GangFlow").latest_run
    join = run["join"].task.data
    assert join.nodes == [0, 1]
    assert join.sums == [10.0] * 4  # 1+2+3+4 on each of the 4 ranks
    assert sorted(t.id for t in run["train"].tasks) == ["0.0", "0.1"]
    jobs = {t.record.job_id for t in run["train"].tasks}
    assert len(jobs) == 1  # one gang job of 2 nodes

    (out / "fail").write_text("")
    failed = corral("flow", "run", str(FLOWS / "run_gang.py"), "--out", str(out),
                    "--fail-rank", "3")
    assert failed.returncode == 1
    failed_run = Flow("GangFlow").latest_run
    assert failed_run.record.state == "FAILED"
    assert "step train" in failed_run.record.reason
    assert "rank 3 failed" in failed_run.record.reason, failed_run.record.reason
    assert {t.state for t in failed_run["train"].tasks} == {"FAILED"}

    (out / "fail").unlink()
    resumed = corral("flow", "resume", failed_run.id)
    assert resumed.returncode == 0, resumed.stderr
    again = Flow("GangFlow").latest_run
    assert again.record.origin == failed_run.id and again.successful
    assert [t.state for t in again["start"].tasks] == ["CLONED"]  # not run again
    assert again["start"].task.data.started_pid == failed_run["start"].task.data.started_pid
    assert {t.state for t in again["train"].tasks} == {"SUCCEEDED"}
    assert again["join"].task.data.sums == [10.0] * 4
    logs = corral("flow", "logs", again.id, "train")
    assert "sum 10" in logs.stdout, logs.stderr


def test_mingpt_flow_on_two_emulated_nodes() -> None:
    done = corral("flow", "run", str(REPO / "examples" / "flows" / "mingpt_flow.py"),
                  "--steps", "60")
    assert done.returncode == 0, done.stderr
    run = Flow("MinGPTFlow").latest_run
    losses = run["end"].task.data.losses
    assert [s for s, _, _ in losses] == [0, 50, 60]
    assert losses[-1][1] < losses[0][1]  # it learned
    assert run["join"].task.data.nodes_done == [0, 1]


def test_a_killed_runner_leaves_a_lost_run_that_resume_finishes(tmp_path: Path) -> None:
    marker = tmp_path / "wait"
    marker.write_text("")
    runner = subprocess.Popen([sys.executable, "-m", "corral.cli", "flow", "run",
                               str(FLOWS / "run_slow.py"), "--marker", str(marker)],
                              stderr=subprocess.PIPE, text=True)
    assert runner.stderr is not None
    for line in runner.stderr:
        if line.startswith("corral: slow/0 -> job"):
            break
    runner.kill()
    runner.communicate()
    lost = Flow("SlowFlow").latest_run
    assert lost.record.lost and lost.record.shown_state == "LOST"
    assert "LOST" in corral("flow", "ls").stdout
    from corral.backends.local import LocalBackend

    for task in lost["slow"].tasks:  # its job still runs: stop it, as a user would
        LocalBackend().cancel(task.record.job_id or "")
    marker.unlink()
    resumed = corral("flow", "resume", lost.id)
    assert resumed.returncode == 0, resumed.stderr
    assert "start/0 reused from run" in resumed.stderr
    again = Flow("SlowFlow").latest_run
    assert again.successful and again["slow"].task.data.waited
    assert again["start"].task.data.start_pid == lost["start"].task.data.start_pid
