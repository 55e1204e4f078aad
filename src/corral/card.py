"""A job's card: one self-contained HTML file (no network, no CDN) with the job's spec, its
timeline, the failure summary, and plots of what its ranks logged (``corral.log``) and of
their CPU, memory and GPU use over time (the node agents' samples).

The plots are Plotly figures: Plotly is what many data scientists already use, its charts
are interactive (hover shows the rank and value, legends toggle ranks, zoom), and its
JavaScript ships inside the Python package, so it is written into the file once and the
card works offline. :func:`render_card` is pure; :func:`collect` reads the job.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.errors import MissingDependency
from corral.metrics import Point
from corral.status import JobStatus
from corral.store import Event

MB = 2**20


@dataclass(frozen=True)
class CardData:
    status: JobStatus
    spec: dict[str, Any] | None
    events: Sequence[Event] = ()
    points: Sequence[Point] = ()
    samples: Sequence[dict[str, Any]] = ()
    notes: Sequence[str] = ()
    launcher: str | None = None
    made: float = field(default_factory=time.time)


def _plotly() -> Any:
    try:
        import plotly.graph_objects as go
    except ImportError:
        raise MissingDependency("plotly", "card", purpose="to draw a job's card") from None
    return go


def _when(stamp: float | None) -> str:
    return "-" if stamp is None else time.strftime("%Y-%m-%d %H:%M:%S",
                                                   time.localtime(stamp))


def _rank_name(rank: int | None) -> str:
    return "node agent / launcher" if rank is None else f"rank {rank}"


def metric_figures(points: Sequence[Point]) -> list[tuple[str, Any]]:
    """One figure per metric, a line per rank (x: the step where given, else seconds)."""
    go = _plotly()
    start = min((p.time for p in points), default=0.0)
    figures = []
    for name in sorted({p.name for p in points}):
        fig = go.Figure()
        for rank in sorted({p.rank for p in points if p.name == name}):
            mine = [p for p in points if p.name == name and p.rank == rank]
            by_step = all(p.step is not None for p in mine)
            fig.add_trace(go.Scatter(
                x=[p.step if by_step else round(p.time - start, 3) for p in mine],
                y=[p.value for p in mine], mode="lines+markers", name=f"rank {rank}"))
        fig.update_layout(title=name, xaxis_title="step" if all(
            p.step is not None for p in points if p.name == name) else "seconds",
            height=320, margin={"t": 40, "b": 40, "l": 50, "r": 10})
        figures.append((f"metric: {name}", fig))
    return figures


def profile_figures(samples: Sequence[dict[str, Any]]) -> list[tuple[str, Any]]:
    """CPU %, RSS and (when sampled) GPU memory and utilization over time, a line per rank."""
    if not samples:
        return []
    go = _plotly()
    start = min(s["t"] for s in samples)
    ranks = sorted({s.get("rank") for s in samples}, key=lambda r: (r is None, r or 0))
    panels = [("CPU % (of one core)", "cpu", 1.0), ("resident memory (MB)", "rss", MB)]
    if any("gpu_mem" in s for s in samples):
        panels += [("GPU memory (MB)", "gpu_mem", MB), ("GPU utilization %", "gpu_util", 1.0)]
    figures = []
    for title, key, scale in panels:
        fig = go.Figure()
        for rank in ranks:
            mine = [s for s in samples if s.get("rank") == rank]
            fig.add_trace(go.Scatter(x=[round(s["t"] - start, 2) for s in mine],
                                     y=[s.get(key, 0) / scale for s in mine],
                                     mode="lines", name=_rank_name(rank)))
        fig.update_layout(title=title, xaxis_title="seconds", height=300,
                          margin={"t": 40, "b": 40, "l": 50, "r": 10})
        figures.append((f"profile: {title}", fig))
    return figures


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def rank_rows(data: CardData) -> list[list[Any]]:
    """Per rank: node, host, state, exit code, and when the sampler first and last saw it."""
    seen: dict[Any, list[float]] = {}
    for sample in data.samples:
        seen.setdefault(sample.get("rank"), []).append(sample["t"])
    rows = []
    for rank in data.status.ranks:
        times = seen.get(rank.rank, [])
        rows.append([rank.rank, rank.node, rank.host or "-", rank.state.value,
                     "-" if rank.returncode is None else rank.returncode,
                     _when(min(times)) if times else "-", _when(max(times)) if times else "-"])
    return rows


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:left}pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:.85em}
.state{font-weight:bold}.SUCCEEDED{color:#196c2e}.FAILED,.TIMEOUT{color:#b3261e}
"""


def _plots(figures: list[tuple[str, Any]]) -> list[str]:
    return [f"<div class='plot' data-title='{html.escape(title)}'>"
            f"{fig.to_html(full_html=False, include_plotlyjs=False)}</div>"
            for title, fig in figures]


def render_card(data: CardData, plotly_js: str) -> str:
    """The whole card as one HTML document (``plotly_js``: Plotly's bundle, inlined)."""
    status = data.status
    parts = [f"<h1>{html.escape(status.name)} &middot; {html.escape(status.job_id)}</h1>",
             f"<p class='state {status.state.value}'>{status.state.value}"
             f"{': ' + html.escape(status.reason) if status.reason else ''}</p>",
             _table([["backend", status.backend],
                     ["nodes x ranks per node", f"{status.nodes} x {status.procs_per_node}"],
                     ["launcher", data.launcher or "-"], ["user", status.user or "-"],
                     ["submitted", _when(status.created)], ["started", _when(status.started)],
                     ["finished", _when(status.finished)],
                     ["duration", "-" if status.duration is None
                      else f"{status.duration:.1f} s"],
                     ["run directory", status.run_dir or "-"]], ["", ""])]
    if status.failure is not None or status.state.value in ("FAILED", "TIMEOUT"):
        parts += ["<h2>Failure</h2>", f"<pre>{html.escape(status.summary())}</pre>"]
    parts += ["<h2>Ranks</h2>", _table(rank_rows(data), ["rank", "node", "host", "state",
                                                          "exit code", "first sampled",
                                                          "last sampled"])]
    parts += ["<h2>Timeline</h2>", _table(
        [[_when(e.time), e.from_state or "-", e.to_state, e.attempt, e.source, e.reason]
         for e in data.events], ["time", "from", "to", "attempt", "by", "why"])]
    parts.append("<h2>Metrics</h2>")
    parts += _plots(metric_figures(data.points)) or [
        "<p>No metrics: ranks record them with <code>corral.log(step=..., loss=...)</code>."
        "</p>"]
    parts.append("<h2>Resources</h2>")
    parts += [f"<p>{html.escape(note)}</p>" for note in data.notes]
    parts += _plots(profile_figures(data.samples)) or [
        "<p>No resource samples (the local backend's node agents take them every "
        "CORRAL_PROFILE_SECONDS).</p>"]
    if data.spec:
        parts += ["<h2>Spec</h2>",
                  f"<pre>{html.escape(json.dumps(data.spec, indent=1, default=str))}</pre>"]
    parts.append(f"<p><small>card made {_when(data.made)} by corral</small></p>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(status.name)} {html.escape(status.job_id)}</title>"
            f"<style>{STYLE}</style><script>{plotly_js}</script></head>"
            "<body>" + "\n".join(parts) + "</body></html>")


def collect(job_id: str) -> CardData:
    """Everything a card shows, read through the job's backend and the store."""
    from corral.backends import backend_for_job
    from corral.store import open_store

    store = open_store()
    record = store.get(job_id)
    backend = backend_for_job(record)
    status = backend.describe(job_id)
    samples, notes = backend.read_profile(job_id)
    return CardData(status=status, spec=record.spec, events=store.events(job_id),
                    points=backend.read_metrics(job_id), samples=samples, notes=notes,
                    launcher=record.launcher)


def plotly_bundle() -> str:
    _plotly()
    from plotly.offline import get_plotlyjs

    return str(get_plotlyjs())
