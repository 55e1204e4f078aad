"""The founding document's minGPT flow on the real Slurm test cluster: the same file as on
the local backend, with the backend changed on the command line (and the interpreter the
nodes should use, as for any Slurm job here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from corral.flow import Flow

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slurm


def test_mingpt_flow_on_the_slurm_cluster(cluster: object) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "flow", "run",
         str(REPO / "examples" / "flows" / "mingpt_flow.py"), "--backend", "slurm",
         "-o", f"python={sys.executable}", "-o", "poll_seconds=0.2", "--steps", "60"],
        capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    run = Flow("MinGPTFlow").latest_run
    losses = run["end"].task.data.losses
    assert [s for s, _, _ in losses] == [0, 50, 60] and losses[-1][1] < losses[0][1]
    assert run["join"].task.data.nodes_done == [0, 1]
    jobs = {t.record.job_id for t in run["train"].tasks}
    assert len(jobs) == 1  # one Slurm job of 2 nodes
