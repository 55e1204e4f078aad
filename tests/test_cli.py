"""The corral command, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import leftover_processes, read_until
from corral.spec import JobState
from corral.store import open_store

CORRAL = [sys.executable, "-m", "corral.cli"]


def corral(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CORRAL, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=os.environ.copy())


def test_run_exit_code_and_prefixed_output(programs: Path, tmp_path: Path) -> None:
    done = corral("run", "--nodes", "2", "--procs-per-node", "2",
                  str(programs / "echo_args.py"), "--", str(tmp_path), "a b")
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        f"[n{r // 2} r{r}] args: ['a b']" for r in range(4)]
    assert "SUCCEEDED" in done.stderr
    failed = corral("run", "--nodes", "2", str(programs / "misbehave.py"), "--", "exit7", "1")
    assert failed.returncode == 7
    assert "rank 1 on node 1 failed: exit code 7" in failed.stderr
    assert "rank 1 about to exit7" in failed.stderr


def test_command_entrypoint_and_env(tmp_path: Path) -> None:
    done = corral("run", "--nodes", "2", "--env", "GREETING=hi there", "sh", "-c",
                  'echo "$GREETING from $RANK of $WORLD_SIZE on node $NODE_RANK"')
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == [
        "[n0 r0] hi there from 0 of 2 on node 0", "[n1 r1] hi there from 1 of 2 on node 1"]


def test_dry_run_prints_every_node_and_starts_nothing(programs: Path, corral_home: Path) -> None:
    script = str(programs / "ddp_allreduce.py")
    done = corral("run", "--dry-run", "--nodes", "2", "--launcher", "torchrun", "--no-fork",
                  script, "--", "out")
    assert done.returncode == 0, done.stderr
    assert "## node 0: exec" in done.stdout and "## node 1: exec" in done.stdout
    assert done.stdout.count("-m torch.distributed.run") == 2
    assert "--node-rank 1" in done.stdout
    assert not (corral_home / "runs").exists() or not any((corral_home / "runs").iterdir())
    forked = corral("run", "--dry-run", "--nodes", "2", "--procs-per-node", "2", script)
    assert "## node 1: fork" in forked.stdout and "preload once: torch" in forked.stdout
    assert forked.stdout.count("RANK=") >= 4


def test_bad_input_is_a_clear_error_not_a_traceback(programs: Path, tmp_path: Path) -> None:
    done = corral("run", "--nodes", "0", "--time-limit", "soon", str(programs / "echo_args.py"))
    assert done.returncode == 125
    assert "nodes: got 0" in done.stderr and "time_limit: got 'soon'" in done.stderr
    assert "Traceback" not in done.stderr
    missing = corral("run", "nope.py", cwd=tmp_path)
    assert missing.returncode == 125 and "script 'nope.py' not found" in missing.stderr
    env = corral("run", "--env", "NOEQUALS", "true")
    assert env.returncode == 125 and "KEY=VALUE" in env.stderr
    bad_file = tmp_path / "job.yaml"
    bad_file.write_text("script: x.py\nlauncher: slurm\n", encoding="utf-8")
    done = corral("run", "-f", str(bad_file))
    assert done.returncode == 125 and "launcher: got 'slurm'" in done.stderr


def test_job_file_with_flag_override(programs: Path, tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"name: from-file\nscript: {programs / 'echo_args.py'}\n"
                   f"args: ['{tmp_path}', 'from-file']\nnodes: 1\n", encoding="utf-8")
    done = corral("run", "-f", str(job), "--nodes", "2")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2
    record = json.loads((tmp_path / "rank-1.json").read_text())
    assert record["job"]["job_name"] == "from-file" and record["argv"] == ["from-file"]


def test_detach_ps_status_logs_cancel_wait(programs: Path) -> None:
    job_id = corral("run", "--detach", "--nodes", "2", str(programs / "misbehave.py"),
                    "--", "none", "-1").stdout.strip()
    assert job_id.startswith("misbehave-")
    deadline = time.monotonic() + 30
    while json.loads(corral("status", job_id, "--json").stdout)["state"] != "RUNNING":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    ps = corral("ps")
    assert job_id in ps.stdout and "RUNNING" in ps.stdout
    deadline = time.monotonic() + 30
    while "rank 1 started" not in corral("logs", job_id).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert corral("logs", job_id, "--rank", "0").stdout.startswith("rank 0 started")
    waited = corral("wait", "--timeout", "0.5", job_id)
    assert waited.returncode == 75 and "still RUNNING" in waited.stderr  # the wait ran out
    cancelled = corral("cancel", job_id)
    assert cancelled.stdout.strip() == f"{job_id}: CANCELLED"
    assert corral("cancel", job_id).stdout.strip() == f"{job_id}: CANCELLED"
    assert corral("wait", job_id).returncode == 130
    status = json.loads(corral("status", job_id, "--json").stdout)
    assert leftover_processes(status["run_dir"], job_id) == []
    assert job_id not in corral("ps").stdout and job_id in corral("ps", "-a").stdout


def test_unknown_job_id() -> None:
    done = corral("status", "no-such-job")
    assert done.returncode == 125 and "no job 'no-such-job'" in done.stderr


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"]])
def test_help(args: list[str]) -> None:
    done = corral(*args)
    assert done.returncode == 0 and "Usage" in done.stdout


def test_ctrl_c_stops_every_rank(leave_nothing: list, programs: Path, corral_home: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [*CORRAL, "run", "--nodes", "2", "--procs-per-node", "2", str(programs / "misbehave.py"),
         "--", "none", "-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=os.environ.copy(),
    )
    leave_nothing.append(proc)  # stopped if the test fails
    runs = corral_home / "runs"
    deadline = time.monotonic() + 30
    while not list(runs.glob("*/logs/rank-3.log")) or "started" not in (
        next(runs.glob("*/logs/rank-3.log")).read_text()
    ):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "CANCELLED" in err
    run_dir = next(runs.iterdir())
    record = open_store().get(run_dir.name)
    assert record.state is JobState.CANCELLED
    assert [e.source for e in open_store().events(run_dir.name)][-1] == "user"
    assert leftover_processes(run_dir, run_dir.name) == []


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_act_like_ctrl_c(
        leave_nothing: list, programs: Path, corral_home: Path, sig: str) -> None:
    import signal

    number = getattr(signal, sig)
    proc = subprocess.Popen(
        [*CORRAL, "run", "--nodes", "2", str(programs / "misbehave.py"), "--", "none", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    leave_nothing.append(proc)  # stopped if the test fails
    read_until(proc.stdout, "started", count=2)
    proc.send_signal(number)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + number, err
    [job] = open_store().jobs()
    assert job.state is JobState.CANCELLED
    assert leftover_processes(job.run_dir or "", job.id) == []


def test_wait_on_a_job_that_hit_its_time_limit_exits_124(programs: Path) -> None:
    job_id = corral("run", "--detach", "--time-limit", "1", str(programs / "misbehave.py"),
                    "--", "none", "-1").stdout.strip()
    waited = corral("wait", "--timeout", "60", job_id)
    assert waited.returncode == 124 and f"{job_id}: TIMEOUT" in waited.stdout


def test_cancel_wait_status_act_on_every_known_id_then_name_the_unknown(
        programs: Path) -> None:
    sleepy = corral("run", "--detach", str(programs / "misbehave.py"), "--", "none",
                    "-1").stdout.strip()
    done = corral("run", "--detach", "true").stdout.strip()
    cancelled = corral("cancel", "nope-1", sleepy, "nope-2")
    assert cancelled.returncode == 125
    assert f"{sleepy}: CANCELLED" in cancelled.stdout
    assert "no job 'nope-1', 'nope-2'" in cancelled.stderr
    waited = corral("wait", done, "nope-3")
    assert waited.returncode == 125 and f"{done}: SUCCEEDED" in waited.stdout
    shown = corral("status", "nope-4", done)
    assert shown.returncode == 125 and "SUCCEEDED" in shown.stdout and "nope-4" in shown.stderr
