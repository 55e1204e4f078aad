"""``corral.log``: metrics from every rank of a real 2 x 2 job, read back through the backend
and ``corral metrics``; the checks on values; what happens outside a job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import corral
from conftest import PROGRAMS
from corral import metrics
from corral.backends.local import LocalBackend
from corral.errors import MetricError
from corral.spec import JobSpec, JobState


def corral_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_metrics_round_trip_from_every_rank_of_a_2x2_job() -> None:
    spec = JobSpec(entrypoint={"kind": "script", "path": str(PROGRAMS / "log_metrics.py")},
                   nodes=2, procs_per_node=2, launcher="torchrun", workdir=str(PROGRAMS))
    status = corral.run(spec, stream=False)
    assert status.state is JobState.SUCCEEDED, status.summary()
    points = LocalBackend().read_metrics(status.job_id)
    assert sorted({p.rank for p in points}) == [0, 1, 2, 3]
    for rank in range(4):
        losses = [(p.step, p.value) for p in points if p.rank == rank and p.name == "loss"]
        assert losses == [(s, pytest.approx(rank + s / 10)) for s in range(5)]
        (final,) = [p for p in points if p.rank == rank and p.name == "final"]
        assert final.step is None and final.value == rank
    times = [p.time for p in points if p.rank == 0]
    assert times == sorted(times) and status.started and times[0] >= status.started - 1
    assert [p.rank for p in LocalBackend().read_metrics(status.job_id, rank=3)] == [3] * 11

    table = corral_cli("metrics", status.job_id)
    assert table.returncode == 0, table.stderr
    rows = [line.split() for line in table.stdout.splitlines()[1:]]
    assert ["3", "4", "loss", "3.4", "5"] in rows and ["0", "-", "final", "0", "1"] in rows
    every = corral_cli("metrics", status.job_id, "--all", "--json", "--name", "loss")
    lines = [json.loads(line) for line in every.stdout.splitlines()]
    assert len(lines) == 20 and {line["name"] for line in lines} == {"loss"}
    bad = corral_cli("metrics", status.job_id, "--rank", "9")
    assert bad.returncode != 0 and "ranks 0 to 3" in bad.stderr


@pytest.fixture
def in_a_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CORRAL_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setattr(metrics, "_writer", None)
    return tmp_path


@pytest.mark.parametrize("value", ["0.5", float("nan"), float("inf"), True, None, [1.0]])
def test_a_metric_that_is_not_a_finite_number_is_refused_by_name(in_a_job: Path,
                                                                   value: object) -> None:
    with pytest.raises(MetricError, match="loss="):  # a TypeError too
        corral.log(step=1, loss=value)  # type: ignore[arg-type]


def test_numpy_scalars_are_kept_as_floats_and_a_cut_line_is_skipped(in_a_job: Path) -> None:
    corral.log(step=3, loss=np.float32(0.25), count=np.int64(7))
    assert metrics._writer is not None
    metrics._writer.close()
    path = Path(metrics.metrics_file(str(in_a_job), 2))
    with open(path, "a") as handle:
        handle.write('[1.0, 4, {"loss": 0.')  # a writer that has not finished its line
    points = list(metrics.parse_points(2, path.read_text()))
    assert [(p.step, p.name, p.value) for p in points] == [(3, "loss", 0.25), (3, "count", 7.0)]
    with pytest.raises(MetricError, match="step="):
        corral.log(step=1.5, loss=1.0)  # type: ignore[arg-type]


def test_outside_a_job_nothing_is_kept_and_it_says_so_once(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CORRAL_RUN_DIR", raising=False)
    monkeypatch.setattr(metrics, "_writer", None)
    corral.log(loss=1.0)
    corral.log(loss=2.0)
    assert capsys.readouterr().err.count("not inside a corral job") == 1
