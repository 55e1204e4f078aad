"""The live terminal view: the panel rendered from a status and metric points (a snapshot),
and ``corral run`` in a pseudo-terminal showing it, or plain lines with ``--plain``."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from rich.console import Console

from conftest import PROGRAMS
from corral.jobstate import JobState
from corral.live import render_panel
from corral.metrics import Point
from corral.status import JobStatus, RankStatus

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

SNAPSHOT = """\
job train-1 RUNNING  1:05.0  2 node(s) x 2 rank(s)
node  waiting  running  done  failed  last values
0     0        1        1     0       r0@7 loss=0.5; r1@7 acc=0.9 loss=0.4
1     0        1        0     1       -
"""


def test_panel_snapshot() -> None:
    ranks = [RankStatus(0, 0, state=JobState.RUNNING), RankStatus(1, 0, state=JobState.SUCCEEDED),
             RankStatus(2, 1, state=JobState.RUNNING), RankStatus(3, 1, state=JobState.FAILED)]
    status = JobStatus(job_id="train-1", name="train", backend="local",
                       state=JobState.RUNNING, nodes=2, procs_per_node=2, started=1000.0,
                       ranks=ranks)
    points = [Point(0, 1001, 6, "loss", 0.7), Point(0, 1002, 7, "loss", 0.5),
              Point(1, 1001, 7, "loss", 0.4), Point(1, 1002, 7, "acc", 0.9)]
    console = Console(record=True, width=100, color_system=None)
    console.print(render_panel(status, points, now=1065.0))
    shown = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert shown == SNAPSHOT


def in_pty(argv: list[str], timeout: float = 120) -> tuple[int, str]:
    """Run ``argv`` on a pseudo-terminal of 140 x 40; its exit code and all it wrote."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 140, 0, 0))
    env = {**os.environ, "COLUMNS": "140", "LINES": "40"}  # rich reads these before the tty
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=env)
    os.close(slave)
    out, end = b"", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other end closed
                break
            if not data:
                break
            out += data
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(master)
    return proc.returncode, out.decode(errors="replace")


def run_in_pty(*args: str, timeout: float = 120) -> tuple[int, str]:
    return in_pty([sys.executable, "-m", "corral.cli", *args], timeout)


def test_run_on_a_terminal_shows_the_live_panel_and_the_logs() -> None:
    code, text = run_in_pty("run", "--nodes", "2", "--procs-per-node", "2", "--launcher",
                            "torchrun", str(PROGRAMS / "log_metrics.py"))
    assert code == 0, text
    # rich redraws the panel by moving up and erasing lines: each erase starts a new line here
    plain = ANSI.sub("", text.replace("\x1b[2K", "\n")).replace("\r", "")
    assert "[n1 r3] rank 3 logged" in plain
    title = re.compile(r"job log-metrics-\S+ SUCCEEDED\s+0:\d\d\.\d\s+2 node\(s\) x 2 rank")
    lines = plain.splitlines()
    last = max(i for i, line in enumerate(lines) if title.search(line))  # the last drawing
    final = "\n".join(lines[last:last + 4])
    rows = [line.split() for line in final.splitlines() if re.match(r"^[01]\s+\d", line)]
    done = [["0", "0", "0", "2", "0"], ["1", "0", "0", "2", "0"]]  # 2 done per node
    assert [row[:5] for row in rows] == done, final
    assert "r3@4 final=3 loss=3.4 lr=0.1" in final


def test_plain_lines_when_asked() -> None:
    code, text = run_in_pty("run", "--plain", "--nodes", "2", str(PROGRAMS / "log_metrics.py"))
    assert code == 0, text
    plain = ANSI.sub("", text)
    assert "last values" not in plain and "[n1 r1] rank 1 logged" in plain


def test_wait_on_a_terminal_shows_the_panel_until_the_job_ends() -> None:
    submitted = subprocess.run(
        [sys.executable, "-m", "corral.cli", "submit", "--nodes", "2",
         str(PROGRAMS / "log_metrics.py")], capture_output=True, text=True, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.split()[-1]
    code, text = run_in_pty("wait", job_id)
    plain = ANSI.sub("", text.replace("\x1b[2K", "\n")).replace("\r", "")
    assert code == 0, plain
    assert re.search(rf"job {re.escape(job_id)} SUCCEEDED\s+0:0\d\.\d\s+2 node\(s\)", plain)
    assert f"{job_id}: SUCCEEDED" in plain


def test_a_long_step_shows_a_spinner_on_a_terminal_only() -> None:
    snippet = ("import time; from corral.console import working\n"
               "with working('corral: copying 3 files (0.1 MiB) of /w with the job'):\n"
               "    time.sleep(0.5)\n")
    code, shown = in_pty([sys.executable, "-c", snippet], timeout=30)
    assert code == 0 and "copying 3 files" in shown
    piped = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                           timeout=30)
    assert piped.stdout == piped.stderr == ""  # not a terminal: nothing at all
