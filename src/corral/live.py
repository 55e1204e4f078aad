"""The live terminal view of a running job (``corral run`` / ``corral wait`` on a terminal).

A panel kept at the bottom of the terminal (rich's ``Live``): the job's state and elapsed
time, per node how many ranks are waiting, running, done or failed, and each rank's last
``corral.log`` values; the job's log lines scroll above it, labelled as in plain output.
:func:`render_panel` is pure (the job's status and metric points in, a rich table out); the
:class:`LiveView` reads them from the store and the run directory twice a second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from corral.jobstate import JobState
from corral.logs import LogSource
from corral.metrics import Point
from corral.status import JobStatus

REFRESH_SECONDS = 0.5
SHOWN_METRICS = 3  # per rank, the most recently logged names


def _elapsed(status: JobStatus, now: float) -> str:
    if status.started is None:
        return "waiting"
    seconds = (status.finished or now) - status.started
    return f"{int(seconds // 60)}:{seconds % 60:04.1f}"


def last_values(points: Sequence[Point]) -> dict[int, list[tuple[str, float, int | None]]]:
    """Per rank, its last value of the metrics it logged most recently."""
    latest: dict[int, dict[str, Point]] = {}
    for point in points:
        latest.setdefault(point.rank, {})[point.name] = point
    out = {}
    for rank, by_name in latest.items():
        newest = sorted(by_name.values(), key=lambda p: p.time, reverse=True)[:SHOWN_METRICS]
        out[rank] = [(p.name, p.value, p.step) for p in sorted(newest, key=lambda p: p.name)]
    return out


def render_panel(status: JobStatus, points: Sequence[Point], now: float) -> Group:
    """The panel: a title line, then one row per node."""
    title = Text.assemble((f"job {status.job_id} ", "bold"),
                          (status.state.value, _STYLE.get(status.state, "")),
                          f" ({status.reason})" if status.reason and
                          status.state is JobState.PENDING else "",
                          f"  {_elapsed(status, now)}  "
                          f"{status.nodes} node(s) x {status.procs_per_node} rank(s)")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("node", "waiting", "running", "done", "failed", "last values"):
        table.add_column(column)
    values = last_values(points)
    started = status.state is not JobState.PENDING
    for node in range(status.nodes):
        mine = [r for r in status.ranks if r.node == node]
        # a launcher (torchrun, mpirun) reports its ranks only when they end: while the job
        # runs, a rank not heard of yet is counted as running, not as waiting
        count = {state: sum(1 for r in mine if r.state is state) for state in JobState}
        if started and status.state is JobState.RUNNING:
            count[JobState.RUNNING] += count[JobState.PENDING]
            count[JobState.PENDING] = 0
        shown = []
        for rank in mine:
            if rank.rank in values:
                steps = [step for _, _, step in values[rank.rank] if step is not None]
                step = max(steps) if steps else None
                text = " ".join(f"{name}={value:.4g}" for name, value, _ in values[rank.rank])
                shown.append(f"r{rank.rank}{f'@{step}' if step is not None else ''} {text}")
        table.add_row(str(node), str(count[JobState.PENDING]), str(count[JobState.RUNNING]),
                      str(count[JobState.SUCCEEDED]),
                      str(count[JobState.FAILED] + count[JobState.CANCELLED]),
                      "; ".join(shown) or "-")
    return Group(title, table)


_STYLE = {JobState.RUNNING: "blue", JobState.SUCCEEDED: "green", JobState.FAILED: "red",
          JobState.CANCELLED: "yellow", JobState.TIMEOUT: "red"}


class LiveView:
    """A log sink that also keeps the panel up to date, for as long as it is entered."""

    def __init__(self, job_id: str, backend: Any, procs_per_node: int,
                 console: Console | None = None) -> None:
        self.job_id, self.backend, self.procs_per_node = job_id, backend, procs_per_node
        self.console = console or Console(stderr=False)
        self.live: Live | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._refresh_loop, name="corral-live",
                                       daemon=True)

    def panel(self) -> Group:
        try:
            status = self.backend.store.status(self.job_id)
            points = self.backend.read_metrics(self.job_id)
        except Exception:  # not recorded yet (the queue is placing it)
            return Group(Text(f"job {self.job_id}: waiting for its turn"))
        return render_panel(status, points, time.time())

    def _refresh_loop(self) -> None:
        while not self.done.wait(REFRESH_SECONDS):
            if self.live is not None:
                self.live.update(self.panel(), refresh=True)

    def __enter__(self) -> LiveView:
        self.live = Live(self.panel(), console=self.console, auto_refresh=False,
                         transient=False, redirect_stdout=False, redirect_stderr=False)
        self.live.start(refresh=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(timeout=2)
        if self.live is not None:
            self.live.update(self.panel(), refresh=True)
            self.live.stop()

    def __call__(self, source: LogSource, line: str) -> None:
        """A log line, printed above the panel."""
        label = f"[{source.label(self.procs_per_node)}]"
        self.console.print(Text.assemble((label, "dim"), " ", line), soft_wrap=True)
        if self.live is not None:
            self.live.refresh()
