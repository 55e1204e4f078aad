"""A third-party backend, installed as a package with an entry point in the group
``corral.backends``, is used by name like a built-in one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

TOY = REPO / "tests" / "plugins" / "corral-toy"


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("toy-site")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(site), str(TOY)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert list(site.glob("corral_toy-*.dist-info/entry_points.txt"))
    return site


def corral(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "corral.cli", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_installed_backend_runs_jobs_by_name(toy_site: Path) -> None:
    done = corral(toy_site, "run", "--backend", "toy", "sh", "-c", "echo hello from the toy")
    assert done.returncode == 0, done.stderr
    assert "hello from the toy" in done.stdout
    failed = corral(toy_site, "run", "--backend", "toy", "sh", "-c", "exit 3")
    assert failed.returncode != 0 and "FAILED" in failed.stderr
    listed = corral(toy_site, "ps", "-a", "--backend", "toy")
    assert listed.returncode == 0 and listed.stdout.count("toy") >= 2, listed.stdout


def test_unknown_backend_lists_the_installed_ones(toy_site: Path) -> None:
    done = corral(toy_site, "run", "--backend", "nope", "true")
    assert done.returncode == 125
    assert ("accepted: aws-batch, azure-batch, gcp-batch, kubernetes, local, sagemaker, slurm, "
            "toy") in done.stderr
