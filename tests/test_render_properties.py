"""Property: every user string of a spec either is refused at validation, or reaches the
program byte for byte, when the rendered sbatch script runs (here under bash, with stub
``srun`` and ``scontrol``: what matters is how the script quotes, not Slurm itself)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PROGRAMS
from corral.backends.slurm import SlurmOptions
from corral.backends.slurm.render import QUEUE_NAME, render
from corral.errors import SpecError
from corral.spec import JobSpec

SRUN = """#!/bin/sh
# stub srun: drop srun's own options, run the rest once as task 0 of node 0
while [ $# -gt 0 ]; do case "$1" in --*) shift ;; *) break ;; esac; done
SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NODEID=0 exec "$@"
"""
SCONTROL = """#!/bin/sh
# stub scontrol: `scontrol show hostnames LIST` for a one-node allocation
echo node1
"""
HOSTILE = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24),
    st.sampled_from(["$(touch /tmp/corral-pwned)", "`id`", "a\nb", "it's \"q\"", "%j %%",
                     "\x00SLURM_JOB_ID\x00", "--x", "", " ", "\\", "${HOME}", "'", "ü🚀"]),
)


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("stubs")
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arg=HOSTILE, argv_item=HOSTILE, env_value=HOSTILE, name=HOSTILE, queue=HOSTILE)
def test_user_strings_are_refused_or_reach_the_program(
        stubs: Path, tmp_path: Path, arg: str, argv_item: str, env_value: str, name: str,
        queue: str) -> None:
    out = tmp_path / "seen.json"
    out.unlink(missing_ok=True)
    values = (arg, argv_item, env_value, name, queue)
    try:
        spec = JobSpec(name=name, queue=queue or None, args=[arg], env={"HOSTILE": env_value},
                       entrypoint={"kind": "command", "argv": [
                           sys.executable, str(PROGRAMS / "dump_argv.py"), str(out),
                           argv_item]})
        plan = render(spec, job_id="j-1", run_dir=str(tmp_path / "run"),
                      workdir=str(tmp_path), options=SlurmOptions(snapshot=False),
                      python=sys.executable)
    except SpecError:
        # refused only for a reason: NUL, no name, or a queue Slurm does not accept
        assert any("\x00" in v for v in values) or not name or len(name) > 200 or (
            queue and not re.match(QUEUE_NAME, queue))
        return
    assert not any("\x00" in v for v in values)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node1"}
    done = subprocess.run(["bash", "-c", plan.script], env=env, capture_output=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(out.read_text(encoding="utf-8"))
    assert seen == {"argv": [argv_item, arg], "hostile": env_value, "name": name, "rank": "0"}
    assert not Path("/tmp/corral-pwned").exists()
    if queue:
        assert f"#SBATCH --partition={queue}\n" in plan.script
    for line in plan.script.splitlines():  # each #SBATCH line is one option, as sbatch reads
        if line.startswith("#SBATCH "):
            assert len(shlex.split(line.removeprefix("#SBATCH "))) == 1, line
