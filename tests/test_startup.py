"""What the corral command imports to start: only what the command uses.

These tests check behaviour, never time (bench/startup.py measures time): ``corral ps``
reads the job store without pydantic, rich or any backend, ``corral run --dry-run`` on the
local backend imports no other backend, and ``corral --help`` lists every command without
importing them.
"""

from __future__ import annotations

import getpass
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path

import click

import corral
from corral.cli import COMMANDS, LazyGroup, cli
from corral.console import cells
from corral.jobstate import JobState
from corral.states import Source
from corral.store import Observation, open_store

HEAVY_FOR_PS = ("pydantic", "pydantic_core", "rich", "importlib.metadata", "corral.spec",
                "corral.backends.base", "corral.backends.local", "corral.backends.slurm",
                "corral.cli.run")
NEVER_FOR_LOCAL = ("corral.backends.slurm", "kubernetes", "boto3", "ray", "torch", "rich")


# Runs the command as the console script does, then lists sys.modules. (``python -X
# importtime`` would miss what importlib.import_module imports, and the commands and
# backends are imported that way.)
DRIVER = """
import sys
from corral.cli import main
code = main(sys.argv[2:])
names = sorted(sys.modules)
with open(sys.argv[1], "w") as out:
    out.write("\\n".join(names))
sys.exit(code)
"""


def imported_by(*args: str, tmp: Path) -> set[str]:
    """The modules ``corral ARGS`` has imported when it is done (whatever its exit code:
    ``corral wait`` exits with the job's)."""
    listing = tmp / "modules.txt"
    done = subprocess.run([sys.executable, "-c", DRIVER, str(listing), *args],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=60)
    assert "Traceback" not in done.stderr and listing.exists(), done.stderr
    modules = set(listing.read_text().splitlines())
    assert "corral.cli" in modules
    return modules


def loaded(modules: set[str], names: tuple[str, ...]) -> list[str]:
    """Which of ``names`` (or their submodules) are among ``modules``."""
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


def finished_job(job_id: str, name: str = "train") -> None:
    store = open_store()
    store.create(job_id, name=name, backend="local", poll_key="local:x", nodes=2,
                 procs_per_node=4)
    store.apply(job_id, Observation(JobState.PENDING), Source.SUBMIT)
    store.apply(job_id, Observation(JobState.FAILED, "rank 3 failed: exit code 1",
                                    finished=time.time()), Source.SUPERVISOR)


def test_ps_on_an_empty_store_imports_no_spec_no_backend(tmp_path: Path) -> None:
    assert loaded(imported_by("ps", tmp=tmp_path), HEAVY_FOR_PS) == []


def test_ps_status_wait_on_finished_jobs_read_only_the_store(tmp_path: Path) -> None:
    finished_job("done-1")
    for args in (("ps", "-a"), ("ps", "-a", "--json"), ("status", "done-1"),
                 ("wait", "done-1")):
        assert loaded(imported_by(*args, tmp=tmp_path), HEAVY_FOR_PS) == [], args


def test_ps_with_a_local_job_running_imports_no_spec(tmp_path: Path) -> None:
    from corral.api import submit
    from corral.spec import JobSpec

    handle = submit(JobSpec(name="sleepy", entrypoint={"kind": "command",
                                                       "argv": ["sleep", "60"]}))
    try:
        modules = imported_by("ps", tmp=tmp_path)
        assert "corral.backends.local.client" in modules  # it did look at the job
        assert loaded(modules, ("pydantic", "corral.spec", "corral.launchers",
                                "corral.backends.local.render")) == []
    finally:
        handle.cancel()


def test_dry_run_on_the_local_backend_imports_no_other_backend(tmp_path: Path) -> None:
    modules = imported_by("run", "--dry-run", "echo", "hi", tmp=tmp_path)
    assert "corral.backends.local" in modules and "pydantic" in modules
    assert loaded(modules, NEVER_FOR_LOCAL) == []


def commands_section(group: click.Group, width: int) -> str:
    context = click.Context(group, terminal_width=width, max_content_width=width)
    formatter = context.make_formatter()
    group.format_commands(context, formatter)
    return formatter.getvalue()


def test_help_lists_every_command_with_its_own_short_help(tmp_path: Path) -> None:
    assert loaded(imported_by("--help", tmp=tmp_path), ("corral.cli.jobs", "corral.cli.run")) == []
    eager = click.Group(commands={name: getattr(importlib.import_module(module), attribute)
                                  for name, (module, attribute, _) in COMMANDS.items()})
    for width in (50, 80, 120):
        fresh = LazyGroup("corral")
        assert commands_section(fresh, width) == commands_section(eager, width)
        assert fresh.commands == {}  # listed without being imported
    done = subprocess.run([sys.executable, "-m", "corral.cli", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert all(f"  {name} " in done.stdout for name in COMMANDS), done.stdout


def test_every_command_in_the_table_is_the_command_of_that_name() -> None:
    context = click.Context(cli)
    for name, (_, _, summary) in COMMANDS.items():
        command = cli.get_command(context, name)
        assert command is not None and command.name == name
        assert (command.help or "").split("\n\n")[0].strip() == summary
    assert cli.get_command(context, "nope") is None


def test_version_and_job_state_stay_where_they_were() -> None:
    done = subprocess.run([sys.executable, "-m", "corral.cli", "--version"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and corral.__version__ in done.stdout
    from corral.spec import JobState as from_spec

    assert corral.JobState is from_spec is JobState


def test_ps_table_is_escaped_one_line_per_job(corral_home: Path) -> None:
    finished_job("hostile", name="we'ird\nname\x1b[31m")
    finished_job("wide", name="日本語")
    done = subprocess.run([sys.executable, "-m", "corral.cli", "ps", "-a"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["JOB", "ID", "NAME", "USER", "BACKEND", "STATE", "NODES",
                              "AGE", "REASON"]
    assert "\x1b" not in done.stdout and len(rows) == 2  # one line per job when piped
    hostile = next(row for row in rows if "hostile" in row)
    assert "we'ird\\nname\\x1b[31m" in hostile and "rank 3 failed: exit code 1" in hostile
    wide = next(row for row in rows if "wide" in row)  # columns line up on the screen
    assert cells(wide[:wide.index("local")]) == cells(header[:header.index("BACKEND")])
    assert cells(wide[:wide.index(getpass.getuser())]) == cells(header[:header.index("USER")])
