"""The distributed-function API from a real Jupyter kernel (nbclient executes the example)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("torch")

NOTEBOOK = REPO / "examples" / "notebook" / "ddp_in_a_notebook.ipynb"


def cell_text(cell: dict) -> str:
    outputs = cell.get("outputs", [])
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream")


def test_example_notebook_runs_on_a_real_kernel(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    assert os.environ["CORRAL_HOME"]  # the kernel inherits the test's isolated home
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    training = cell_text(code[1])
    assert "[n0 r0] step 0 loss" in training
    assert "world size 4 final loss" in training
    final_loss = float(training.split("final loss")[1].split()[0])
    first_loss = float(training.split("[n0 r0] step 0 loss")[1].split()[0])
    assert final_loss < first_loss / 10
    learned = training.split("learned weight")[1].strip().strip("[]").split(",")
    assert [round(float(w)) for w in learned] == list(range(8))
    error = cell_text(code[2])
    assert "caught from rank 1 -> ValueError bad shard on rank 1" in error
