"""A rank ends exactly as ``python script.py`` ends, whether the node agent forked it or
exec'd a fresh interpreter: threads joined, atexit handlers run, streams flushed, the
same exit status, the same ``__main__``, ``sys.argv``, ``sys.path[0]`` and working directory.

Each case runs tests/programs/exit_semantics/observe.py three times: with plain python (the
reference), and as a one-rank job of the real local backend in fork mode and in exec mode.
The program writes what it observed as JSON files; the files, the exit status and the
whole rank log must be those of plain python.

Forking needs something to preload: without one (``preload=[]``, or a script importing
nothing heavy) the backend execs. The fork cases preload ``json``, so they need no torch;
one more case preloads torch, since the interpreter then shuts down with torch loaded.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import PROGRAMS, leftover_processes
from corral.backends.local import LocalBackend, LocalOptions
from corral.spec import JobSpec, JobState
from corral.status import JobStatus

PROGRAM = PROGRAMS / "exit_semantics" / "observe.py"
ALL_FILES = {"main.json", "thread.json", "atexit.json"}
HAS_TORCH = importlib.util.find_spec("torch") is not None


@dataclass(frozen=True)
class Case:
    ending: str
    returncode: int  # subprocess style: negative for a signal
    files: set[str] = field(default_factory=lambda: set(ALL_FILES))
    env: dict[str, str] = field(default_factory=dict)
    module: bool = False  # run as ``python -m prog.observe``
    preload: tuple[str, ...] = ("json",)  # what the agent imports before forking


BUFFERED = {"PYTHONUNBUFFERED": ""}  # corral sets it to 1; empty means unset to python
CASES = {
    "return": Case("return", 0),
    "exit3": Case("exit3", 3),
    "exit-msg": Case("exit-msg", 1),
    "exit-none": Case("exit-none", 0),
    "raise": Case("raise", 1),
    "interrupt": Case("interrupt", -signal.SIGINT),  # python dies by SIGINT after shutdown
    "sigterm": Case("sigterm", -signal.SIGTERM, files={"main.json"}),
    "return-buffered": Case("return", 0, env=BUFFERED),
    "raise-buffered": Case("raise", 1, env=BUFFERED),
    "module": Case("return", 0, module=True),
    "module-raise-buffered": Case("raise", 1, env=BUFFERED, module=True),
    "return-torch-preloaded": Case("return", 0, preload=("torch",)),
}
# (case, fork): every case in both modes; preloading torch matters only when forking.
RUNS = [pytest.param(name, fork, id=f"{name}-{'fork' if fork else 'exec'}",
                     marks=[pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")]
                     if "torch" in case.preload else [])
        for name, case in CASES.items() for fork in (True, False)
        if fork or "torch" not in case.preload]


@dataclass(frozen=True)
class Outcome:
    returncode: int | None
    log: str
    files: dict[str, dict]


def workdir_with_program(tmp_path: Path) -> Path:
    """The program in a subdirectory of the working directory: sys.path[0] != cwd."""
    work = tmp_path / "work"
    (work / "prog").mkdir(parents=True)
    shutil.copy(PROGRAM, work / "prog" / "observe.py")
    return work


def target(case: Case) -> list[str]:
    return ["-m", "prog.observe"] if case.module else ["prog/observe.py"]


def observations(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in out.glob("*.json")}


def run_plain(case: Case, work: Path, out: Path) -> Outcome:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
    env.update({"PYTHONUNBUFFERED": "1", **case.env})  # what corral gives every rank
    log = out.parent / f"{out.name}.log"
    with open(log, "wb") as handle:
        done = subprocess.run([sys.executable, *target(case), str(out), case.ending], cwd=work,
                              env=env, stdin=subprocess.DEVNULL, stdout=handle,
                              stderr=subprocess.STDOUT, timeout=60, check=False)
    return Outcome(done.returncode, log.read_text(encoding="utf-8"), observations(out))


def run_job(case: Case, work: Path, out: Path, fork: bool) -> tuple[JobStatus, Outcome]:
    entrypoint = ({"kind": "module", "module": "prog.observe"} if case.module
                  else {"kind": "script", "path": "prog/observe.py"})
    spec = JobSpec(name="exit-semantics", entrypoint=entrypoint, args=[str(out), case.ending],
                   workdir=str(work), env=case.env, preload=case.preload if fork else [])
    status = LocalBackend(LocalOptions(fork=fork)).run(spec)
    run_dir = Path(status.run_dir or "")
    plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    assert [node["mode"] for node in plan["nodes"]] == ["fork" if fork else "exec"]
    assert status.notes == []  # no fallback from fork to exec
    log = (run_dir / "logs" / "rank-0.log").read_text(encoding="utf-8")
    assert leftover_processes(run_dir, status.job_id) == []
    return status, Outcome(status.ranks[0].returncode, log, observations(out))


def without_orig_argv(files: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: v for k, v in record.items() if k != "orig_argv"}
            for name, record in files.items()}


@pytest.mark.parametrize(("name", "fork"), RUNS)
def test_rank_ends_as_plain_python(tmp_path: Path, name: str, fork: bool) -> None:
    case = CASES[name]
    work = workdir_with_program(tmp_path)
    out = tmp_path / "out"  # the same argument for both runs; the files are moved between
    out.mkdir()
    plain = run_plain(case, work, out)
    out.rename(tmp_path / "plain")
    out.mkdir()
    status, job = run_job(case, work, out, fork)

    # plain python does what the case says ...
    assert plain.returncode == case.returncode, plain.log
    assert set(plain.files) == case.files, plain.log
    # ... and the rank does exactly the same
    assert job.returncode == plain.returncode, job.log
    assert without_orig_argv(job.files) == without_orig_argv(plain.files)
    assert job.log == plain.log

    # the rank ran in the mode the test claims (sys.orig_argv is the interpreter's own)
    agent_started_it = "corral.runtime.node" in job.files["main.json"]["orig_argv"]
    assert agent_started_it is fork

    # what python promises, spelled out
    seen = job.files["main.json"]
    script = str(work / "prog" / "observe.py")
    assert seen["name"] == "__main__" and seen["main_module_is_this"]
    assert seen["file"] == script
    assert seen["argv"] == [script if case.module else "prog/observe.py",
                            str(out), case.ending]
    assert seen["path0"] == (str(work) if case.module else str(work / "prog"))
    assert seen["cwd"] == str(work)
    if "thread.json" in case.files:
        assert job.files["thread.json"] == {"main_thread_alive": False}
        at_exit = job.files["atexit.json"]
        assert at_exit["order"] == ["second registered", "first registered"]
        assert at_exit["thread_finished_before"] is True
        assert at_exit["argv"] == seen["argv"] and at_exit["main_module_is_this"]
        assert job.log.endswith("atexit: last handler, no newline")  # flushed at exit
    assert "main: no newline, no flush;" in job.log

    expected_state = JobState.SUCCEEDED if case.returncode == 0 else JobState.FAILED
    assert status.state is expected_state, status.summary()
    if case.returncode != 0:
        assert status.failure is not None and status.failure.rank == 0
        assert status.failure.returncode == case.returncode
    if case.ending == "exit-msg":
        assert "exit-msg: bad things happened\n" in job.log
    if case.ending == "raise":
        assert "Traceback (most recent call last):\n" in job.log
        assert f'File "{script}", line ' in job.log and "RuntimeError: boom\n" in job.log
        assert "runtime/node.py" not in job.log  # none of the agent's frames
        assert ("<frozen runpy>" in job.log) is case.module  # as ``python -m`` shows them
    if case.returncode < 0:
        assert status.failure is not None
        number = -case.returncode
        assert status.failure.reason == f"signal {number} ({signal.Signals(number).name})"
