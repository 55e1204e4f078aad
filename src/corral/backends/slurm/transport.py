"""Where Slurm commands run and files go: this machine, or a login node over SSH.

The client talks only to a :class:`Transport`, so the same code submits from a login
node (``LocalTransport``) or from a laptop (``SshTransport``: ``ssh login sbatch ...``,
files copied with rsync), and tests can inject either.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from corral.errors import BackendError


class Transport(Protocol):
    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]: ...

    def write_bytes(self, path: str, data: bytes) -> None: ...

    def read_bytes(self, path: str, offset: int = 0) -> bytes: ...

    def list_dir(self, path: str) -> list[str]: ...

    def make_dirs(self, path: str) -> None:
        """Create ``path`` (and its parents); the folder itself readable by its owner only."""

    def copy_files(self, src_dir: str, files: Sequence[str], dst_dir: str) -> None: ...


def _failed(
    argv: Sequence[str], done: subprocess.CompletedProcess[str], where: str
) -> BackendError:
    detail = (done.stderr or done.stdout).strip()
    return BackendError(
        f"{shlex.join(argv)} failed on {where} with exit code {done.returncode}: {detail}"
    )


def run_command(argv: Sequence[str], *, timeout: float, **kwargs: object) -> (
        subprocess.CompletedProcess[Any]):
    """subprocess.run, with a hang or an unstartable program as a corral error that names
    the command and what it printed, never a traceback."""
    try:
        done: subprocess.CompletedProcess[Any] = subprocess.run(
            list(argv), capture_output=True, timeout=timeout, **kwargs)  # type: ignore[call-overload]
        return done
    except subprocess.TimeoutExpired as exc:
        said = exc.stderr or exc.stdout or b""
        text = said.decode(errors="replace") if isinstance(said, bytes) else str(said)
        raise BackendError(f"{shlex.join(argv)[:200]} did not finish in {timeout:g}s"
                           + (f"; it printed: {text.strip()[:300]}" if text.strip() else "")
                           + "; is the engine (or the ssh host) responding?") from None
    except OSError as exc:
        raise BackendError(f"cannot run {shlex.join(argv)[:200]}: {exc}") from None


class LocalTransport:
    """Slurm's commands on this machine (a login node, or a machine with a Slurm client)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = {**os.environ, **(env or {})}

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if shutil.which(argv[0], path=self.env.get("PATH")) is None:
            raise BackendError(f"{argv[0]!r} is not installed here: is this a Slurm login "
                               "node? To submit from elsewhere, set the slurm ssh option")
        done = run_command(argv, text=True, timeout=timeout, env=self.env)
        if check and done.returncode != 0:
            raise _failed(argv, done, "this machine")
        return done

    def write_bytes(self, path: str, data: bytes) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        Path(tmp).write_bytes(data)
        os.replace(tmp, path)

    def read_bytes(self, path: str, offset: int = 0) -> bytes:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return handle.read()

    def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    def make_dirs(self, path: str) -> None:
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)

    def copy_files(self, src_dir: str, files: Sequence[str], dst_dir: str) -> None:
        for name in files:
            target = Path(dst_dir, name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(src_dir, name), target, follow_symlinks=False)


class SshTransport:
    """Slurm's commands on a login node, through the user's ssh (and its config)."""

    def __init__(self, target: str, ssh_config: str | None = None) -> None:
        self.target = target
        self.ssh = ["ssh", "-o", "BatchMode=yes"]
        if ssh_config:
            self.ssh += ["-F", ssh_config]

    def _ssh(self, command: str, *, data: bytes | None = None, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
        done = run_command([*self.ssh, self.target, command], input=data, timeout=timeout)
        if check and done.returncode != 0:
            text = subprocess.CompletedProcess(done.args, done.returncode,
                                               done.stdout.decode(errors="replace"),
                                               done.stderr.decode(errors="replace"))
            raise _failed([self.target, command], text, self.target)
        return done

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        done = self._ssh(shlex.join(argv), check=False, timeout=timeout)
        result = subprocess.CompletedProcess(list(argv), done.returncode,
                                             done.stdout.decode(errors="replace"),
                                             done.stderr.decode(errors="replace"))
        if check and done.returncode != 0:
            raise _failed(argv, result, self.target)
        return result

    def write_bytes(self, path: str, data: bytes) -> None:
        parent = os.path.dirname(path)
        tmp = f"{path}.tmp"
        self._ssh(f"mkdir -p {shlex.quote(parent)} && cat > {shlex.quote(tmp)} && "
                  f"mv {shlex.quote(tmp)} {shlex.quote(path)}", data=data)

    def read_bytes(self, path: str, offset: int = 0) -> bytes:
        done = self._ssh(f"tail -c +{offset + 1} {shlex.quote(path)}", check=False)
        if done.returncode != 0:
            raise FileNotFoundError(path)
        return done.stdout

    def list_dir(self, path: str) -> list[str]:
        done = self._ssh(f"ls -1 {shlex.quote(path)}", check=False)
        return sorted(done.stdout.decode(errors="replace").split()) if done.returncode == 0 else []

    def make_dirs(self, path: str) -> None:
        self._ssh(f"mkdir -p {shlex.quote(path)} && chmod 700 {shlex.quote(path)}")

    def copy_files(self, src_dir: str, files: Sequence[str], dst_dir: str) -> None:
        if shutil.which("rsync") is None:
            raise BackendError("rsync is needed to copy code to the login node; install it")
        self._ssh(f"mkdir -p {shlex.quote(dst_dir)}")
        rsh = shlex.join(self.ssh)
        done = run_command(
            ["rsync", "-a", "--from0", "--files-from=-", "-e", rsh, f"{src_dir}/",
             f"{self.target}:{dst_dir}/"],
            input=b"\0".join(f.encode() for f in files), timeout=600,
        )
        if done.returncode != 0:
            raise BackendError(f"rsync to {self.target}:{dst_dir} failed: "
                               f"{done.stderr.decode(errors='replace').strip()}")
