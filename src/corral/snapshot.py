"""Which files of the working directory go to the cluster with a job.

In a git work tree: every tracked file plus untracked files that git does not ignore
(``git ls-files --cached --others --exclude-standard``). Elsewhere: everything except
virtual environments, caches and VCS folders. Later edits never change a queued job.

Never copied: corral's own run directories (a run root inside the working directory would
otherwise copy every earlier snapshot into the next), files matching the ``exclude``
patterns, and anything that is not a regular file or a symlink to one (FIFOs, sockets,
devices, broken links: skipped, each with a warning). A snapshot larger than ``max_mb`` is
refused before anything is copied, with a message that says how to leave files out.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from corral.errors import SubmitError

SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".mypy_cache",
             ".pytest_cache", ".ruff_cache", "node_modules", ".ipynb_checkpoints", ".corral"}
DEFAULT_MAX_MB = 1024


@dataclass(frozen=True)
class Snapshot:
    files: list[str]  # relative to the working directory
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)
    size: int = 0


def _git_files(workdir: str) -> list[str] | None:
    try:
        done = subprocess.run(
            ["git", "-C", workdir, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return sorted(n.decode("utf-8", "surrogateescape") for n in done.stdout.split(b"\0") if n)


def _walk_files(workdir: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            if not name.endswith(".pyc"):
                found.append(os.path.relpath(os.path.join(root, name), workdir))
    return sorted(found)


def _inside(path: str, folders: Sequence[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders)


def _kind(path: Path) -> str | None:
    """None for a regular file (or a link to one); else why it cannot be copied."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a broken symlink" if path.is_symlink() else "gone"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if stat.S_ISREG(mode):
        return None
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return what
    return "not a regular file"


def snapshot_files(workdir: str, *, leave_out: Sequence[str] = (),
                   exclude: Sequence[str] = (), max_mb: float = DEFAULT_MAX_MB) -> Snapshot:
    """The files to copy from ``workdir``; ``leave_out`` are absolute folders (run roots)."""
    root = os.path.realpath(workdir)
    outside = [os.path.relpath(os.path.realpath(f), root) for f in leave_out
               if _inside(os.path.realpath(f), [root])]
    names = _git_files(workdir)
    if names is None:
        names = _walk_files(workdir)
    files: list[str] = []
    skipped: list[tuple[str, str]] = []
    total = 0
    for name in names:
        if _inside(name, outside) or any(fnmatch.fnmatch(name, p) for p in exclude):
            continue
        path = Path(workdir, name)
        why = _kind(path)
        if why is not None:
            if why != "gone":
                skipped.append((name, why))
            continue
        files.append(name)
        total += path.stat().st_size
    if total > max_mb * 2**20:
        biggest = sorted(files, key=lambda f: Path(workdir, f).stat().st_size)[-3:]
        raise SubmitError(
            f"the working directory {workdir} holds {total / 2**20:.0f} MiB to copy with the "
            f"job, more than the limit of {max_mb:g} MiB (largest: {', '.join(biggest)}); "
            "leave data and outputs out with .gitignore or -o snapshot_exclude='data/*', "
            "raise -o snapshot_max_mb=N, or set -o snapshot=false to run from the working "
            "directory itself")
    return Snapshot(files, skipped, total)
