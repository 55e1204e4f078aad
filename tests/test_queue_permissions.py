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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import require
from corral.backends.local import LocalBackend
from corral.errors import CorralError, PermissionDenied
from corral.jobstate import JobState
from corral.queue.ledger import Ledger
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
    assert "the corral home is another user" in as_user(second, home, cancel)
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


@pytest.fixture
def shared_queue(two_users: tuple[pwd.struct_passwd, pwd.struct_passwd, Path]
                 ) -> Iterator[tuple[pwd.struct_passwd, pwd.struct_passwd, Path]]:
    """A shared queue served by root (one faked GPU), as `corral queue serve` runs it."""
    first, second, home = two_users
    shared = home.parent / "shared"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0", "CORRAL_QUEUE_CPUS": "2"}
    agent = subprocess.Popen([sys.executable, "-m", "corral.cli", "queue", "serve",
                              str(shared)], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (shared / "queue.sock").exists():
        assert agent.poll() is None and time.monotonic() < deadline, agent.stderr
        time.sleep(0.05)
    yield first, second, shared
    agent.terminate()
    agent.communicate(timeout=30)


def test_a_shared_queue_runs_each_users_job_as_that_user_one_gpu_at_a_time(
        shared_queue: tuple[pwd.struct_passwd, pwd.struct_passwd, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second, home = shared_queue
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what every user sees of the one GPU
    script = 'id -u; date +%s.%N; sleep 2; date +%s.%N'
    spec = JobSpec(name="shared", entrypoint={"kind": "command", "argv": ["sh", "-c", script]},
                   resources={"gpus": 1}, workdir="/")
    LocalBackend().render(spec)  # imports what the children need while still root

    def submit() -> str:
        os.environ["TOKEN"] = f"secret-of-{os.getuid()}"
        return LocalBackend().submit_queued(spec)[0]

    mine, theirs = as_user(first, home, submit), as_user(second, home, submit)

    def meddle() -> dict[str, str]:
        found = {}
        for what, act in (("cancel", lambda: LocalBackend().cancel(mine)),
                          ("hold", lambda: Ledger(open_store()).set_held(mine, True)),
                          ("logs", lambda: list(LocalBackend().logs(mine))),
                          ("environ", lambda: (home / "runs" / mine / "environ.json")
                           .read_text())):
            try:
                act()
                found[what] = "allowed"
            except (CorralError, OSError) as exc:
                found[what] = f"{type(exc).__name__}: {exc}"
        found["ps"] = " ".join(sorted(r.user for r in open_store().jobs()))
        return found

    refused = as_user(second, home, meddle)
    assert refused["cancel"].startswith("SharedQueueError: job " + mine + " belongs to user "
                                        + USERS[0]), refused
    assert "read-only for you" in refused["hold"], refused
    assert refused["logs"].startswith("PermissionDenied"), refused
    assert refused["environ"].startswith("PermissionError"), refused
    assert refused["ps"] == " ".join(sorted(USERS))  # everyone sees the list, as squeue

    os.environ["CORRAL_HOME"] = str(home)
    store = open_store()
    deadline = time.monotonic() + 60
    while store.jobs(live=True):
        assert time.monotonic() < deadline, [(r.id, r.state, r.reason) for r in store.jobs()]
        time.sleep(0.1)
    assert {r.state for r in store.jobs()} == {JobState.SUCCEEDED}
    runs = {}
    for job_id, user in ((mine, first), (theirs, second)):
        uid, start, end = (home / "runs" / job_id / "logs" / "rank-0.log").read_text().split()
        runs[job_id] = (float(start), float(end))
        assert int(uid) == user.pw_uid  # the rank ran as its user
        assert "secret" not in json.dumps(store.get(job_id).spec)
    (a_start, a_end), (b_start, b_end) = runs[mine], runs[theirs]
    assert a_end <= b_start or b_end <= a_start  # one GPU: one job at a time

    def read_own_environment() -> str:
        return json.loads((home / "runs" / mine / "environ.json").read_text())["TOKEN"]

    assert as_user(first, home, read_own_environment) == f"secret-of-{first.pw_uid}"
