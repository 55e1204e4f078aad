"""Resource profiles: the local backend's node agents sample every rank's CPU and memory
(and GPU where NVML sees one); a rank that holds 500 MB shows it, a busy rank shows its CPU,
torchrun's workers are told apart by their RANK, and sampling can be turned off."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import corral
from conftest import PROGRAMS
from corral.backends.local import LocalBackend
from corral.cli.profile import summarize
from corral.spec import JobSpec, JobState

MB = 2**20


def alloc_job(**fields: object) -> JobSpec:
    return JobSpec(entrypoint={"kind": "script", "path": str(PROGRAMS / "alloc_memory.py")},
                   workdir=str(PROGRAMS), **fields)


def test_every_rank_is_sampled_and_the_samples_are_plausible(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PROFILE_SECONDS", "0.5")
    status = corral.run(alloc_job(nodes=2), stream=False)
    assert status.state is JobState.SUCCEEDED, status.summary()
    samples, notes = LocalBackend().read_profile(status.job_id)
    summary = {row["rank"]: row for row in summarize(samples)}
    assert sorted(summary) == [0, 1] and all(r["samples"] >= 3 for r in summary.values())
    assert summary[1]["rss_max"] >= 500 * MB > summary[0]["rss_max"]
    assert summary[0]["cpu_max"] > 50 > summary[1]["cpu_mean"]  # rank 0 spins, 1 sleeps
    assert len(notes) == 2 and all("GPU" in note for note in notes)
    shown = subprocess.run([sys.executable, "-m", "corral.cli", "profile", status.job_id],
                           capture_output=True, text=True, timeout=60)
    lines = shown.stdout.splitlines()
    assert shown.returncode == 0 and lines[0].startswith("RANK") and len(lines) == 5, shown


def test_torchrun_workers_are_told_apart_from_the_agent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PROFILE_SECONDS", "0.5")
    # max_restarts needs torchrun's own agent: its workers are its children, not ours
    spec = alloc_job(procs_per_node=2, launcher="torchrun", max_restarts=1)
    status = corral.run(spec, stream=False)
    assert status.state is JobState.SUCCEEDED, status.summary()
    summary = {row["rank"]: row for row in summarize(LocalBackend().read_profile(
        status.job_id)[0])}
    assert set(summary) == {0, 1, None}  # None: torchrun's own agent
    assert summary[1]["rss_max"] >= 500 * MB and summary[0]["rss_max"] < 100 * MB


def test_sampling_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PROFILE_SECONDS", "0")
    status = corral.run(alloc_job(), stream=False)
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert not (Path(status.run_dir or "") / "profile").exists()
    assert LocalBackend().read_profile(status.job_id) == ([], [])


@pytest.mark.slurm
def test_slurm_nodes_are_sampled_beside_the_ranks(cluster: object) -> None:
    from corral.backends.slurm import SlurmBackend, SlurmOptions

    slurm = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.1,
                                      profile_seconds=0.5))
    job_id = slurm.submit(alloc_job(nodes=2)).job_id
    status = slurm.wait(job_id, timeout=180)
    assert status.state is JobState.SUCCEEDED, status.summary()
    samples, notes = slurm.read_profile(job_id)
    summary = {row["rank"]: row for row in summarize(samples)}
    assert {0, 1} <= set(summary), summary
    assert summary[1]["rss_max"] >= 500 * MB > summary[0]["rss_max"]
    assert summary[0]["cpu_max"] > 50
    assert len(notes) == 2  # one per node
