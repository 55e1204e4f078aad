"""The node agent stops every process below it, not only its own process group.

torchrun starts its workers in sessions of their own, and a rank may start a process with
``start_new_session=True`` that ignores SIGTERM. Cancelling the job (or the ranks ending)
must still leave no process of the job behind: the agent finds its descendants through
/proc (``procs.descendants``), SIGTERMs them, and SIGKILLs what is left after the grace
period. Processes are told apart by their environment (``CORRAL_JOB_ID``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from conftest import leftover_processes
from corral.backends.local import LocalBackend, LocalOptions
from corral.rundir import RunDir
from corral.runtime import procs
from corral.spec import JobSpec, JobState

# Until it is stopped: far longer than any test, so a job that ends was stopped.
FOREVER = 600
READY_TIMEOUT = 120  # for ranks (and torchrun's rendezvous) to start; not a timing check

# A rank: writes its pid, optionally starts a grandchild in a new session that ignores
# SIGTERM (and waits until it runs), then sleeps, or returns at once with "return".
RANK = f"""
import os, subprocess, sys, time

out, grandchild, then = sys.argv[1], sys.argv[2] == "grandchild", sys.argv[3]
rank = os.environ["RANK"]

def publish(name, pid):
    path = os.path.join(out, name)
    with open(path + ".tmp", "w") as handle:
        handle.write(str(pid))
    os.rename(path + ".tmp", path)

if grandchild:
    pid_file = os.path.join(out, f"grandchild-{{rank}}.pid")
    subprocess.Popen([sys.executable, "-c", GRANDCHILD, pid_file], start_new_session=True)
    while not os.path.exists(pid_file):
        time.sleep(0.01)
publish(f"rank-{{rank}}.pid", os.getpid())
if then == "sleep":
    time.sleep({FOREVER})
"""
GRANDCHILD = f"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1] + ".tmp", "w") as handle:
    handle.write(str(os.getpid()))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep({FOREVER})
"""


@pytest.fixture
def jobs() -> Iterator[list[tuple[str, str]]]:
    """(run dir, job id) of the jobs a test starts; whatever they leave is killed after."""
    started: list[tuple[str, str]] = []
    yield started
    for run_dir, job_id in started:
        for proc in leftover_processes(run_dir, job_id):
            try:
                proc.kill()
            except psutil.Error:
                pass


def rank_program(tmp_path: Path) -> Path:
    path = tmp_path / "rank.py"
    path.write_text(f"GRANDCHILD = {GRANDCHILD!r}\n{RANK}", encoding="utf-8")
    return path


def spec_for(tmp_path: Path, out: Path, launcher: str, fork: bool, grandchild: bool,
             then: str, nodes: int = 1, procs_per_node: int = 1) -> JobSpec:
    return JobSpec(
        name="cleanup", entrypoint={"kind": "script", "path": str(rank_program(tmp_path))},
        args=[str(out), "grandchild" if grandchild else "none", then], launcher=launcher,
        nodes=nodes, procs_per_node=procs_per_node, preload=["json"] if fork else [],
    )


def pids(out: Path, prefix: str) -> list[int]:
    return [int(p.read_text()) for p in sorted(out.glob(f"{prefix}-*.pid"))]


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def check_mode(run_dir: str, fork: bool) -> None:
    plan = RunDir(Path(run_dir)).read_json("plan.json")
    assert {node["mode"] for node in plan["nodes"]} == {"fork" if fork else "exec"}


def test_descendants_are_found_in_other_sessions() -> None:
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'],"
            " start_new_session=True)\n"
            "time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        assert procs.wait_until(lambda: len(procs.descendants(child.pid)) == 1, 30)
        [grandchild] = procs.descendants(child.pid)
        assert os.getsid(grandchild) != os.getsid(child.pid)  # not in our session
        mine = procs.descendants(os.getpid())
        assert mine.index(child.pid) < mine.index(grandchild)  # parents first
        assert procs.descendants(grandchild) == []
        os.kill(grandchild, signal.SIGKILL)
        # exited but not yet reaped (a zombie): no longer a living descendant
        assert procs.wait_until(lambda: procs.descendants(child.pid) == [], 30)
    finally:
        for pid in procs.descendants(child.pid):
            procs.kill_quietly(pid, signal.SIGKILL)
        child.kill()
        child.wait()


def test_descendants_of_a_process_without_children() -> None:
    assert procs.descendants(2**22 + 1) == []  # above any pid_max: no such process
    assert procs.descendants(os.getpid(), proc="/no/such/proc") == []


CANCEL_CASES = [
    # launcher, fork, grandchild, nodes, procs per node
    pytest.param("torchrun", False, False, 2, 2, id="torchrun-workers"),
    pytest.param("torchrun", False, True, 1, 2, id="torchrun-grandchild"),
    pytest.param("none", True, True, 1, 2, id="fork-grandchild"),
    pytest.param("none", False, True, 1, 2, id="exec-grandchild"),
]


@pytest.mark.parametrize(("launcher", "fork", "grandchild", "nodes", "per_node"),
                         CANCEL_CASES)
def test_cancel_leaves_no_process(tmp_path: Path, jobs: list[tuple[str, str]], launcher: str,
                                  fork: bool, grandchild: bool, nodes: int,
                                  per_node: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    backend = LocalBackend(LocalOptions(fork=fork))
    spec = spec_for(tmp_path, out, launcher, fork, grandchild, "sleep", nodes, per_node)
    ref = backend.submit(spec)
    run_dir = str(backend.root / ref.job_id)
    jobs.append((run_dir, ref.job_id))
    world = nodes * per_node
    assert procs.wait_until(lambda: len(pids(out, "rank")) == world, READY_TIMEOUT), (
        backend.describe(ref.job_id).summary())
    check_mode(run_dir, fork)
    ranks = pids(out, "rank")
    sleepers = ranks + pids(out, "grandchild")
    # the premise: torchrun's workers, and the grandchildren, lead sessions of their own
    assert all((os.getsid(pid) == pid) is (launcher == "torchrun") for pid in ranks)
    assert all(os.getsid(pid) == pid for pid in pids(out, "grandchild"))
    assert {p.pid for p in leftover_processes(run_dir, ref.job_id)} >= set(sleepers)

    status = backend.cancel(ref.job_id)

    assert status.state is JobState.CANCELLED, status.summary()
    assert leftover_processes(run_dir, ref.job_id) == []
    assert [pid for pid in sleepers if alive(pid)] == []


@pytest.mark.parametrize("fork", [True, False], ids=["fork", "exec"])
def test_what_ranks_leave_running_is_stopped_when_they_end(
    tmp_path: Path, jobs: list[tuple[str, str]], fork: bool
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    spec = spec_for(tmp_path, out, "none", fork, True, "return", procs_per_node=2)
    status = LocalBackend(LocalOptions(fork=fork)).run(spec)
    jobs.append((status.run_dir or "", status.job_id))
    check_mode(status.run_dir or "", fork)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert len(pids(out, "grandchild")) == 2
    assert leftover_processes(status.run_dir or "", status.job_id) == []
    node_log = Path(status.run_dir or "") / "logs" / "node-0.log"
    assert "stopping what they left running" in node_log.read_text()
