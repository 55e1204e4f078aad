"""Small Linux process helpers shared by the node agent and the supervisor (stdlib only)."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None


def _prctl(option: int, value: int) -> bool:
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return int(_libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # not Linux
        return False


def become_subreaper() -> bool:
    """Orphaned descendants are re-parented to this process instead of init."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits."""
    return _prctl(PR_SET_PDEATHSIG, int(sig))


def describe_returncode(returncode: int | None) -> str:
    """'exit code 3', 'signal 9 (SIGKILL)' from a subprocess-style return code."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"signal {-returncode} ({signal_name(-returncode)})"
    if returncode > 128 and returncode - 128 < 65:
        number = returncode - 128
        return f"exit code {returncode} (signal {number}, {signal_name(number)})"
    return f"exit code {returncode}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def returncode_from_status(status: int) -> int:
    """subprocess-style return code from a waitpid status (negative: killed by a signal)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def kill_quietly(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def killpg_quietly(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def descendants(pid: int, proc: str = "/proc") -> list[int]:
    """Living processes below ``pid``: its children, theirs and so on, parents first.

    Found by parent pid in ``/proc/<pid>/stat``, so whatever their process group or
    session (torchrun's workers, anything started with setsid). Zombies are left out: they
    only wait to be reaped. Empty where there is no /proc.
    """
    try:
        names = os.listdir(proc)
    except OSError:
        return []
    children: dict[int, list[int]] = {}
    dead: set[int] = set()
    for name in names:
        if not name.isdigit():
            continue
        stat = _state_and_parent(f"{proc}/{name}/stat")
        if stat is None:
            continue  # exited since the listing
        state, parent = stat
        children.setdefault(parent, []).append(int(name))
        if state in ("Z", "X"):
            dead.add(int(name))
    found: list[int] = []
    seen = {pid}
    queue = list(children.get(pid, ()))
    while queue:
        child = queue.pop(0)
        if child in seen:
            continue
        seen.add(child)
        found.append(child)
        queue.extend(children.get(child, ()))
    return [p for p in found if p not in dead]


def _state_and_parent(stat_path: str) -> tuple[str, int] | None:
    """(state letter, parent pid) from a /proc/<pid>/stat file; None if it is gone."""
    try:
        with open(stat_path, "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ")" ends it
    fields = data[data.rfind(b")") + 1:].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[1])
    except (IndexError, ValueError):
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
