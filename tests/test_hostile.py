"""Hostile names, args and env values reach the program literally, on every launcher."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import read_rank_outputs, require
from corral.backends.local import LocalBackend, LocalOptions
from corral.spec import JobSpec, JobState

HOSTILE = [
    "it's \"quoted\"",
    "$(touch /tmp/corral-pwned)",
    "`touch /tmp/corral-pwned`",
    "line one\nline two",
    "ünïcødé 🚀 名前",
    "--not-an-option",
    "; rm -rf / #",
    "$HOME ${PATH} %n %t",
    "",
]
NAME = "we'ird $(name) `x` ünï\nline"


def hostile_spec(programs: Path, out: Path, launcher: str, **fields: object) -> JobSpec:
    return JobSpec(
        name=NAME, entrypoint={"kind": "script", "path": str(programs / "echo_args.py")},
        args=[str(out), *HOSTILE], launcher=launcher,
        env={f"HOSTILE_{i}": value for i, value in enumerate(HOSTILE)}, **fields,
    )


LAUNCHERS = [
    pytest.param("none", True, "openmpi", id="none-fork"),
    pytest.param("none", False, "openmpi", id="none-exec"),
    pytest.param("torchrun", False, "openmpi", id="torchrun-agent"),
    pytest.param("mpirun", False, "openmpi", id="mpirun-openmpi"),
    pytest.param("mpirun", False, "mpich", id="mpirun-mpich"),
]
MPI_TOOL = {"openmpi": "mpirun", "mpich": "mpiexec.hydra"}


@pytest.mark.parametrize(("launcher", "fork", "mpi"), LAUNCHERS)
def test_hostile_values_reach_the_program_literally(
    programs: Path, tmp_path: Path, launcher: str, fork: bool, mpi: str
) -> None:
    if launcher == "mpirun":
        require(shutil.which(MPI_TOOL[mpi]) is not None, f"{MPI_TOOL[mpi]} not installed")
    canary = Path("/tmp/corral-pwned")
    canary.unlink(missing_ok=True)
    spec = hostile_spec(programs, tmp_path, launcher, nodes=2, procs_per_node=1,
                        preload=None if fork else [], mpi=mpi)
    status = LocalBackend(LocalOptions(fork=fork)).run(spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(tmp_path)
    assert sorted(ranks) == [0, 1]
    for record in ranks.values():
        assert record["argv"] == HOSTILE
        for i, value in enumerate(HOSTILE):
            assert record["env"][f"HOSTILE_{i}"] == value
        assert record["job"]["job_name"] == NAME
    assert not canary.exists()


def test_dry_run_lines_are_safe_shell(programs: Path, tmp_path: Path) -> None:
    """Each printed line, run by a real shell, passes the values through unchanged."""
    spec = hostile_spec(programs, tmp_path, "none", preload=[])
    plan = LocalBackend().render(spec)
    line = plan.nodes[0].processes[0].shell_line()
    words = shlex.split(line)
    assert words[-len(HOSTILE):] == HOSTILE
    out = subprocess.run(["sh", "-c", f"env -i {line}"], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    assert not Path("/tmp/corral-pwned").exists()
    record = read_rank_outputs(tmp_path)[0]
    assert record["argv"] == HOSTILE and record["env"]["HOSTILE_3"] == "line one\nline two"
    assert "args:" in out.stdout


def test_names_reasons_and_log_excerpts_are_shown_escaped(tmp_path: Path) -> None:
    import subprocess
    import sys

    evil = "printf 'clear\\033[2J\\033]0;pwned\\007 done\\r\\n'; exit 4"
    done = subprocess.run([sys.executable, "-m", "corral.cli", "run", "--name",
                           "n\x1b[31mame", "sh", "-c", evil], capture_output=True, text=True,
                          cwd=tmp_path, timeout=60)
    assert done.returncode == 4
    summary = done.stderr.split("corral: job", 1)[1]
    assert "\x1b" not in summary and "\\x1b[2J" in summary and "\\x07" in summary
    job_id = done.stderr.split()[2]
    status = subprocess.run([sys.executable, "-m", "corral.cli", "status", job_id],
                            capture_output=True, text=True, timeout=60)
    ps = subprocess.run([sys.executable, "-m", "corral.cli", "ps", "-a"],
                        capture_output=True, text=True, timeout=60)
    for shown in (status.stdout, ps.stdout):
        assert "\x1b" not in shown and "\x07" not in shown
    assert "n\\x1b[31mame" in ps.stdout
