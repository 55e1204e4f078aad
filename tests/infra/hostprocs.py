"""Processes of the test clusters, seen from the host: run a command, read /proc, stop what a
cluster started (by PID, only while it still runs the command it was started as), find what
runs in a cluster's network namespaces, wait for a condition. Standard library only; used
by slurm_cluster.py and k8s_cluster.py."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def run(*argv: str, check: bool = True, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def stat(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: [state, ppid, ...]; [] if there is no such PID."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def alive(pid: int) -> bool:
    """True while the process runs (a zombie counts as gone)."""
    return stat(pid)[:1] not in ([], ["Z"])


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def running(pid: int, name: str) -> bool:
    """The process runs and is still the command `name` (its PID was not reused)."""
    return alive(pid) and comm(pid) == name


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_all(procs: list[tuple[int, str]], grace: float, kill_wait: float = 2.0) -> None:
    """SIGTERM each (pid, comm) that still runs `comm`; SIGKILL whatever is left after `grace` s."""
    live = [pid for pid, name in procs if running(pid, name)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        for pid in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while live and time.monotonic() < deadline:
            time.sleep(0.05)
            for pid in live:
                reap(pid)
            live = [pid for pid in live if alive(pid)]
        if not live:
            return
    raise RuntimeError(f"could not stop processes {live}")


def daemon_pids(pid_dir: Path) -> dict[str, tuple[int, str]]:
    """{name: (pid, comm)} from pid_dir/NAME.pid ("PID COMM")."""
    found = {}
    for path in sorted(pid_dir.glob("*.pid")) if pid_dir.is_dir() else []:
        pid, _, name = path.read_text().strip().partition(" ")
        if pid.isdigit() and name:
            found[path.stem] = (int(pid), name)
    return found


def pids_in_netns(names: list[str]) -> list[int]:
    """PIDs of processes whose network namespace is one of `names` (by nsfs inode)."""
    inodes = set()
    for ns in names:
        with contextlib.suppress(OSError):
            inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
    pids = []
    for entry in os.listdir("/proc") if inodes else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def wait_until(ok: Callable[[], bool], timeout: float, what: str,
               detail: Callable[[], str] | None = None) -> None:
    """Poll `ok` every 0.1 s; TimeoutError naming `what` (and `detail()`) after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() >= deadline:
            extra = f": {detail()}" if detail else ""
            raise TimeoutError(f"{what} after {timeout:.0f}s{extra}")
        time.sleep(0.1)


def foreign_cluster_up(bridge: str, state_dir: Path) -> Path | None:
    """The state dir of another cluster that holds `bridge` (named in its alias) and whose
    daemons still run: a cluster that `up` and `down` with `state_dir` must leave alone."""
    try:
        owner = Path(Path(f"/sys/class/net/{bridge}/ifalias").read_text().strip() or "/")
    except OSError:
        return None
    up = any(running(*proc) for proc in daemon_pids(owner / "pids").values())
    return owner if owner != state_dir and up else None


def start_fresh(bridge: str, state_dir: Path, down: Callable[[], None],
                start: Callable[[], None]) -> None:
    """Start a cluster from scratch: refused while another state dir's cluster holds
    `bridge`; whatever this one left is taken down first, and again if the start fails
    (nothing stays half-started; the logs stay)."""
    owner = foreign_cluster_up(bridge, state_dir)
    if owner:
        raise RuntimeError(f"the cluster with state dir {owner} is up: take it down first")
    down()
    try:
        start()
    except BaseException:
        down()
        raise
