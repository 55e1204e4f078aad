"""The demo: a few DDP steps of examples/mingpt on 2 emulated nodes, then a resume."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from conftest import REPO
from corral.api import run
from corral.console import LinePrinter
from corral.spec import JobSpec, JobState

pytest.importorskip("torch")


def train(ckpt: Path, steps: int) -> list[str]:
    out = io.StringIO()
    spec = JobSpec(
        name="mingpt",
        entrypoint={"kind": "script", "path": str(REPO / "examples/mingpt/train.py")},
        args=["--steps", str(steps), "--eval-every", "2", "--eval-iters", "1",
              "--checkpoint-dir", str(ckpt)],
        nodes=2, procs_per_node=1, launcher="torchrun",
    )
    status = run(spec, stream=LinePrinter(1, out, color=False))
    assert status.state is JobState.SUCCEEDED, status.summary()
    return out.getvalue().splitlines()


def test_mingpt_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    lines = train(tmp_path, 4)
    assert "[n0 r0] world_size 2 device cpu" in lines[0]
    losses = [float(line.split()[5]) for line in lines if line.startswith("[n0 r0] step ")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    saved = sorted(p.name for p in tmp_path.glob("ckpt_*.pt"))
    assert saved == ["ckpt_0000002.pt", "ckpt_0000004.pt"]
    resumed = train(tmp_path, 6)
    assert "[n0 r0] resumed from step 4" in resumed
    assert "[n0 r0] final step 6" in " ".join(resumed)
