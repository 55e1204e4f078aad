"""Which files of the working directory go to the cluster with a job.

In a git work tree: every tracked file plus untracked files that git does not ignore
(``git ls-files --cached --others --exclude-standard``). Elsewhere: everything except
virtual environments, caches and VCS folders. Later edits never change a queued job.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from corral.errors import SubmitError

SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".mypy_cache",
             ".pytest_cache", ".ruff_cache", "node_modules", ".ipynb_checkpoints", ".corral"}
MAX_BYTES = 1 << 30


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
    names = [n.decode("utf-8", "surrogateescape") for n in done.stdout.split(b"\0") if n]
    return sorted(n for n in names if os.path.isfile(os.path.join(workdir, n)))


def _walk_files(workdir: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(workdir):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            if not name.endswith(".pyc"):
                found.append(os.path.relpath(os.path.join(root, name), workdir))
    return sorted(found)


def snapshot_files(workdir: str) -> list[str]:
    files = _git_files(workdir)
    if files is None:
        files = _walk_files(workdir)
    total = sum(Path(workdir, f).stat().st_size for f in files)
    if total > MAX_BYTES:
        raise SubmitError(
            f"the working directory {workdir} holds {total / 2**20:.0f} MiB to copy with the "
            "job; ignore data and outputs in .gitignore, or set the slurm option snapshot=false"
        )
    return files
