"""An engine that cannot be asked marks only its own jobs UNKNOWN (with the reason);
every other job is listed as usual, and nothing shows a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from corral.backends.slurm import SlurmBackend, SlurmOptions
from corral.spec import JobSpec, JobState
from corral.states import Source
from corral.store import Observation, open_store

CORRAL = [sys.executable, "-m", "corral.cli"]


def test_slurm_unreachable_marks_only_slurm_jobs_unknown(tmp_path: Path) -> None:
    import corral

    done = corral.run(JobSpec(name="here", entrypoint={"kind": "command", "argv": ["true"]}),
                      stream=False)
    assert done.state is JobState.SUCCEEDED
    slurm = SlurmBackend(SlurmOptions(poll_seconds=0.1))
    spec = JobSpec(name="there", entrypoint={"kind": "command", "argv": ["true"]})
    record = slurm.record(spec, slurm.render(spec))
    open_store().apply(record.id, Observation(JobState.PENDING), Source.SUBMIT, engine_id="77")
    no_slurm = {**os.environ, "PATH": str(tmp_path)}  # no scontrol, no sacct
    listed = subprocess.run([*CORRAL, "ps", "-a", "--json"], capture_output=True, text=True,
                            env=no_slurm)
    assert listed.returncode == 0, listed.stderr
    jobs = {j["name"]: j for j in json.loads(listed.stdout)}
    assert jobs["here"]["state"] == "SUCCEEDED"
    assert jobs["there"]["state"] == "UNKNOWN"
    assert "scontrol" in jobs["there"]["reason"] and "not installed" in jobs["there"]["reason"]
    shown = subprocess.run([*CORRAL, "status", record.id], capture_output=True, text=True,
                           env=no_slurm)
    assert shown.returncode == 0 and "UNKNOWN" in shown.stdout
    assert "Traceback" not in shown.stderr + listed.stderr
