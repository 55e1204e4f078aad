"""Shared fixtures: an isolated CORRAL_HOME per test, and a check for leftover processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

PROGRAMS = Path(__file__).parent / "programs"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

# moto's server (an emulator of AWS) for the AWS backends' tests: fixtures `moto_session`, `moto`
from infra.moto_server import moto, moto_session  # noqa: E402, F401


@pytest.fixture(autouse=True)
def corral_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = tmp_path / "corral-home"
    monkeypatch.setenv("CORRAL_HOME", str(home))
    yield home
    stop_queue_agent(home)


def stop_queue_agent(home: Path) -> None:
    """Stop the queue agent a test's submissions started (by its PID and start time),
    waiting a moment for one that was still starting to say who it is."""
    import fcntl

    for child in psutil.Process().children():  # one this process started, maybe not up yet
        try:
            if "corral.queue.agent" in child.cmdline() and str(home) in " ".join(
                    child.cmdline()):
                child.terminate()
                child.wait(10)
        except psutil.Error:
            pass
    lock_path = home / "queue-agent.lock"
    deadline = time.monotonic() + 5
    while lock_path.exists() and time.monotonic() < deadline:
        with open(lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # no agent holds it
            except OSError:
                pass
        try:
            data = json.loads((home / "queue-agent.pid").read_text(encoding="utf-8"))
            agent = psutil.Process(int(data["pid"]))
            if abs(agent.create_time() - float(data["started"])) < 5:
                agent.terminate()
                agent.wait(10)
        except (OSError, ValueError, KeyError, psutil.Error):
            pass
        time.sleep(0.05)


@pytest.fixture
def programs() -> Path:
    return PROGRAMS


def require(condition: bool, reason: str) -> None:
    """Skip a test whose engine is missing here; in CI (CORRAL_CI=1) that is a failure."""
    if condition:
        return
    if os.environ.get("CORRAL_CI"):
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def leftover_processes(run_dir: str | os.PathLike[str], job_id: str) -> list[psutil.Process]:
    """Processes still alive that belong to a job: by command line or by environment."""
    found = []
    needle = str(run_dir)
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if needle in cmdline or proc.environ().get("CORRAL_JOB_ID") == job_id:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def read_rank_outputs(out_dir: Path) -> dict[int, dict]:
    """The JSON files that test programs write, one per rank."""
    return {
        int(p.stem.split("-")[1]): json.loads(p.read_text(encoding="utf-8"))
        for p in sorted(out_dir.glob("rank-*.json"))
    }


def python() -> str:
    return sys.executable


def _for_the_session(test_cluster: Any, what: str, keep: str) -> Iterator[object]:
    """Up (reusing a healthy one), its variables in os.environ while the session runs, then
    down again unless ``$keep`` is set."""
    started = time.monotonic()
    test_cluster.up()
    print(f"{what} test cluster up in {time.monotonic() - started:.1f}s")
    saved = {k: os.environ.get(k) for k in test_cluster.env}
    os.environ.update(test_cluster.env)
    yield test_cluster
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if not os.environ.get(keep):
        test_cluster.down()


@pytest.fixture(scope="session")
def cluster() -> Iterator[object]:
    require(os.geteuid() == 0, "the Slurm test cluster needs root (network namespaces)")
    require(shutil.which("slurmctld") is not None,
            "Slurm is not installed: make system-deps (apt-get install slurmctld slurmd ...)")
    sys.path.insert(0, str(REPO / "tests"))
    from infra.slurm_cluster import SlurmCluster

    state = Path(os.environ.get("CORRAL_SLURM_STATE", "/tmp/corral-slurm"))
    yield from _for_the_session(SlurmCluster(state), "slurm", "CORRAL_KEEP_SLURM")


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[object]:
    """A real Kubernetes control plane with Volcano, Kueue and JobSet, and 3 fake kubelets
    (tests/infra/k8s_cluster.py). Builds its binaries first if they are not cached (minutes)."""
    require(os.geteuid() == 0, "the Kubernetes test cluster needs root (network namespaces)")
    require(shutil.which("etcd") is not None,
            "etcd is not installed: make system-deps (apt-get install etcd-server)")
    require(shutil.which("openssl") is not None, "openssl is not installed: make system-deps")
    go = shutil.which("go") or "/usr/local/go/bin/go"
    require(Path(go).exists(), "Go is missing: the Kubernetes test cluster is built from source")
    sys.path.insert(0, str(REPO / "tests"))
    from infra.k8s_cluster import K8sCluster

    state = Path(os.environ.get("CORRAL_K8S_STATE", "/tmp/corral-k8s"))
    yield from _for_the_session(K8sCluster(state), "kubernetes", "CORRAL_KEEP_K8S")


@pytest.fixture
def leave_nothing() -> Iterator[list[subprocess.Popen[str]]]:
    """Corral processes a test starts: any still running when the test ends (it failed)
    gets SIGTERM, so that it cancels its job, then SIGKILL; nothing is left behind."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def read_until(stream: IO[str] | None, text: str, count: int = 1) -> list[str]:
    """Lines of a running process's output until ``count`` of them hold ``text``."""
    assert stream is not None
    lines: list[str] = []
    while sum(text in line for line in lines) < count:
        line = stream.readline()
        assert line, "the process ended first: " + "".join(lines)
        lines.append(line)
    return lines
