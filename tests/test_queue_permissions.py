"""Two real OS users (created by the test): one cannot cancel, read the environment of, or
read the logs of the other's queued job; the data itself refuses (file permissions), and
the queue's own check refuses a uid that is not the job's owner or root."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from corral.backends.local import LocalBackend
from corral.errors import CorralError
from corral.jobstate import JobState
from corral.queue.ledger import Ledger, PermissionDenied
from corral.queue.submission import Submission
from corral.spec import JobSpec
from corral.store import open_store

USERS = ("corral-qa", "corral-qb")


def ensure_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", name], check=True, capture_output=True)
        return pwd.getpwnam(name)


def as_user(user: pwd.struct_passwd, home: Path, work: Callable[[], Any]) -> Any:
    """Run ``work`` in a forked child that has become ``user`` (no root left), with
    CORRAL_HOME=home; return what it returned (JSON), or raise what it raised."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            os.environ["CORRAL_HOME"] = str(home)
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            result: dict[str, Any] = {"ok": work()}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = json.loads(pipe.read() or '{"error": "no answer"}')
    os.waitpid(pid, 0)
    if "error" in data:
        raise AssertionError(data["error"])
    return data["ok"]


@pytest.fixture
def two_users() -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd, Path]]:
    require(os.geteuid() == 0, "creating OS users needs root")
    require(shutil.which("useradd") is not None, "useradd is missing (Debian's passwd)")
    first, second = (ensure_user(name) for name in USERS)
    home = Path(tempfile.mkdtemp(prefix="corral-perm-")) / "home"  # not under /root
    home.parent.chmod(0o755)
    home.mkdir()
    os.chown(home, first.pw_uid, first.pw_gid)
    yield first, second, home
    shutil.rmtree(home.parent, ignore_errors=True)


def test_another_user_cannot_cancel_or_read_a_queued_job(
        two_users: tuple[pwd.struct_passwd, pwd.struct_passwd, Path]) -> None:
    first, second, home = two_users
    spec = JobSpec(name="private", entrypoint={"kind": "command", "argv": ["true"]},
                   env={"TOKEN": "s3cret"}, workdir="/")
    # Everything the children use is imported here, before they stop being root (the
    # interpreter's packages may sit where other users cannot read, such as /root).
    LocalBackend().submit_queued(spec, submission=Submission(hold=True))

    def submit() -> str:
        return LocalBackend().submit_queued(spec, submission=Submission(hold=True))[0]

    job_id = as_user(first, home, submit)
    run_dir = home / "runs" / job_id

    def cancel() -> str:
        try:
            LocalBackend().cancel(job_id)
        except CorralError as exc:
            return f"refused: {exc}"
        return "cancelled"

    def read_environment() -> str:
        try:
            return (run_dir / "environ.json").read_text()
        except PermissionError as exc:
            return f"refused: {exc.strerror}"

    def read_logs() -> str:
        try:
            return str(list(LocalBackend().logs(job_id)))
        except CorralError as exc:
            return f"refused: {exc}"

    assert as_user(second, home, cancel).startswith("refused: cannot open the job store")
    assert as_user(second, home, read_environment) == "refused: Permission denied"
    assert as_user(second, home, read_logs).startswith("refused:")
    assert as_user(first, home, read_environment).count("CORRAL_HOME") == 1  # its own: fine

    for path, mode in ((home / "corral.db", 0o600), (run_dir, 0o700),
                       (run_dir / "environ.json", 0o600), (run_dir / "spec.pkl", 0o600)):
        info = path.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (first.pw_uid, mode), path
    os.environ["CORRAL_HOME"] = str(home)
    try:
        store = open_store()
        assert store.get(job_id).state is JobState.PENDING  # untouched by the other user
        with pytest.raises(PermissionDenied, match=f"belongs to user {USERS[0]}"):
            Ledger(store).check_owner(job_id, second.pw_uid)
        assert Ledger(store).check_owner(job_id, 0).job_id == job_id  # root may
        assert LocalBackend().cancel(job_id).state is JobState.CANCELLED
    finally:
        from conftest import stop_queue_agent

        stop_queue_agent(home)
