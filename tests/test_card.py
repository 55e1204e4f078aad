"""``corral card``: one self-contained HTML file per job with its spec, timeline, failure and
the plots of what its ranks logged and used."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import corral
from conftest import PROGRAMS
from corral.card import collect, plotly_bundle, render_card
from corral.spec import JobSpec, JobState


def figures_of(page: str) -> dict[str, list[dict]]:
    """Plot title -> its traces, from the figures' data written into the page."""
    found = {}
    for title, data in re.findall(r"data-title='([^']*)'>.*?Plotly\.newPlot\(\s*\"[^\"]+\",\s*"
                                  r"(\[.*?\]),\s*\{", page, flags=re.S):
        found[title] = json.loads(data)
    return found


def test_card_of_a_2x2_job_holds_its_metrics_and_profiles_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_PROFILE_SECONDS", "0.3")
    spec = JobSpec(entrypoint={"kind": "script", "path": str(PROGRAMS / "log_metrics.py")},
                   nodes=2, procs_per_node=2, launcher="torchrun", workdir=str(PROGRAMS))
    status = corral.run(spec, stream=False)
    assert status.state is JobState.SUCCEEDED, status.summary()
    out = tmp_path / "card.html"
    done = subprocess.run([sys.executable, "-m", "corral.cli", "card", status.job_id, "-o",
                           str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    page = out.read_text()
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=[\"']?https?:", page)  # offline
    assert "SUCCEEDED" in page and status.job_id in page and "log_metrics.py" in page
    figures = figures_of(page)
    loss = figures["metric: loss"]
    assert sorted(trace["name"] for trace in loss) == [f"rank {r}" for r in range(4)]
    rank3 = next(t for t in loss if t["name"] == "rank 3")
    assert rank3["x"] == [0, 1, 2, 3, 4] and rank3["y"] == pytest.approx([3, 3.1, 3.2, 3.3, 3.4])
    assert {"profile: CPU % (of one core)", "profile: resident memory (MB)"} <= set(figures)
    rss = figures["profile: resident memory (MB)"]
    assert {t["name"] for t in rss} >= {"rank 0", "rank 3"}
    assert all(v > 0 for t in rss for v in t["y"])  # a rank's shell shim is under 1 MB
    assert all(max(t["y"]) > 5 for t in rss)  # a Python process is not


def test_a_failed_jobs_card_shows_the_failure(tmp_path: Path) -> None:
    spec = JobSpec(entrypoint={"kind": "command", "argv": ["sh", "-c",
                                                           'echo dying; exit "$RANK"']},
                   nodes=2)
    status = corral.run(spec, stream=False)
    assert status.state is JobState.FAILED
    page = render_card(collect(status.job_id), plotly_bundle())
    assert "<h2>Failure</h2>" in page and "rank 1 on node 1 failed" in page
    assert "No metrics" in page and "exit code" in page


def test_a_flow_run_gets_a_card_per_step(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_QUEUE_CPUS", "8")
    flow = Path(__file__).parent / "flows" / "linear.py"
    done = subprocess.run([sys.executable, "-m", "corral.cli", "flow", "run", str(flow)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_id = re.search(r"flow run (\S+) SUCCEEDED", done.stdout + done.stderr)
    assert run_id is not None, done.stdout + done.stderr
    cards = subprocess.run([sys.executable, "-m", "corral.cli", "flow", "card",
                            run_id.group(1), "-o", str(tmp_path / "cards")],
                           capture_output=True, text=True, timeout=120)
    assert cards.returncode == 0, cards.stderr
    written = sorted(p.name.split("-")[0] for p in (tmp_path / "cards").glob("*.html"))
    assert written == ["end", "middle", "start"]
    page = next((tmp_path / "cards").glob("middle-*.html")).read_text()
    assert "SUCCEEDED" in page and "corral.flow.task" in page
