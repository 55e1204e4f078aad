"""SWF traces and their replay through the queue policy (``corral simulate``).

Hand-computed schedules on a small trace for each policy, the metrics, the trace filter,
bad input, and the published KTH SP2 figures for EASY and EASY-SJBF within 0.5%.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from corral.cli import main
from corral.errors import CorralError, SpecError
from corral.queue.policy import POLICIES
from corral.queue.simulate import JobResult, Summary, simulate
from corral.queue.swf import parse_lines, read_swf, trace_jobs

SHARED = Path(os.environ.get("CORRAL_SHARED")
              or Path(__file__).resolve().parents[1].parent / "shared")
KTH = SHARED / "data" / "traces" / "KTH-SP2-1996-2.2.swf.gz"


def swf_line(job: int, submit: int, run: int, procs: int, estimate: int, user: int = 1) -> str:
    fields = [job, submit, -1, run, procs, -1, -1, procs, estimate, -1, 1, user, 1, -1, 1, -1,
              -1, -1]
    return " ".join(str(f) for f in fields)


# A pool of 4 processors. j1 and j0 fill it at 0; j2 (all 4) waits for j1 at 10; j3 and
# j4 (1 each) come while it is full, and get their chance when j0 ends at 5.
SMALL = "\n".join([
    "; Version: 2.2",
    "; MaxProcs: 4",
    swf_line(1, 0, 10, 3, 10, user=1),
    swf_line(0, 0, 5, 1, 5, user=2),
    swf_line(2, 1, 5, 4, 5, user=3),
    swf_line(3, 2, 5, 1, 5, user=4),
    swf_line(4, 3, 4, 1, 4, user=5),
]) + "\n"


def starts(policy: str) -> dict[str, float]:
    trace = parse_lines(iter(SMALL.splitlines()))
    result = simulate(trace_jobs(trace, 4), 4, POLICIES[policy])
    return {job.id: job.start for job in result.jobs}


def test_fcfs_by_hand() -> None:
    # j2 waits for j1 (10); j3 and j4 wait behind j2 and start when j2 ends (15)
    assert starts("fcfs") == {"1": 0, "0": 0, "2": 10, "3": 15, "4": 15}


def test_easy_by_hand() -> None:
    # at 5 the top job j2 is reserved for 10; j3 (5 s) ends by then and backfills; j4 (4 s)
    # finds no processor; at 10 j2 starts, at 15 j4
    assert starts("easy") == {"1": 0, "0": 0, "2": 10, "3": 5, "4": 15}


def test_easy_sjbf_by_hand() -> None:
    # at 5 the shortest candidate j4 (4 s) backfills first, leaving j3 to wait until 15
    assert starts("easy-sjbf") == {"1": 0, "0": 0, "2": 10, "3": 15, "4": 5}


def test_fairshare_by_hand() -> None:
    # at 5, all users equal but u2 (j0 just used 5 processor-seconds): the size factor
    # puts j4, then j3, before the wide j2; j4 starts, j3 becomes the top job (until 9),
    # j3 runs 9-14 and j2, reserved behind it, starts at 14
    assert starts("fairshare") == {"1": 0, "0": 0, "2": 14, "3": 9, "4": 5}


def test_metrics_by_hand() -> None:
    short = JobResult("a", "u", submit=0, start=20, run=5, procs=2)  # bounded by 10 s
    long = JobResult("b", "u", submit=10, start=10, run=40, procs=4)
    assert (short.wait, short.flow, short.bounded_slowdown) == (20, 25, 2.5)
    assert long.bounded_slowdown == 1.0
    summary = Summary.of([short, long], procs=4)
    assert summary.mean_wait == 10 and summary.max_wait == 20
    assert summary.mean_bounded_slowdown == 1.75 and summary.max_bounded_slowdown == 2.5
    assert summary.mean_flow == 32.5
    assert summary.utilization == pytest.approx((2 * 5 + 4 * 40) / (4 * 50))


def test_per_user_figures() -> None:
    trace = parse_lines(iter(SMALL.splitlines()))
    result = simulate(trace_jobs(trace, 4), 4, POLICIES["easy"])
    assert set(result.per_user) == {"1", "2", "3", "4", "5"}
    assert result.per_user["3"].mean_wait == 9
    assert result.per_user["5"].max_wait == 12


def test_the_strong_filter() -> None:
    lines = [
        "; MaxProcs: 8",
        swf_line(1, 0, 100, 4, 50),  # run capped at the requested 50
        swf_line(2, 0, 100, 9, 200),  # wider than the machine
        swf_line(3, 0, 0, 2, 200),  # no run time
        swf_line(4, 0, 100, 2, -1),  # no requested time
        swf_line(5, -5, 100, 2, 200),  # submitted before the log began
        "6 0 -1 100 -1 -1 -1 3 200 -1 1 1 1 -1 1 -1 -1 -1",  # only requested procs: used
        "7 0 -1 100 2 -1 -1 6 200 -1 1 1 1 -1 1 -1 -1 -1",  # occupies the requested 6
        "8 0 -1 100 -1 -1 -1 -1 200 -1 1 1 1 -1 1 -1 -1 -1",  # no processors at all
    ]
    trace = parse_lines(iter(lines))
    assert trace.max_procs == 8
    jobs = {j.id: j for j in trace_jobs(trace, 8)}
    assert sorted(jobs) == ["1", "6", "7"]
    assert (jobs["1"].run, jobs["1"].estimate) == (50, 50)
    assert jobs["6"].procs == 3 and jobs["7"].procs == 6


def test_a_gzipped_trace_reads_like_a_plain_one(tmp_path: Path) -> None:
    plain = tmp_path / "small.swf"
    plain.write_text(SMALL)
    packed = tmp_path / "small.swf.gz"
    packed.write_bytes(gzip.compress(SMALL.encode()))
    assert read_swf(plain) == read_swf(packed)
    assert read_swf(packed).max_procs == 4


def test_a_malformed_line_is_named_with_what_a_line_must_be() -> None:
    with pytest.raises(SpecError, match=r"trace line 3: got '1 2 three'.*18 whitespace"):
        parse_lines(iter(["; MaxProcs: 4", "", "1 2 three"]))


def test_the_command_prints_the_figures_and_json(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "small.swf"
    trace.write_text(SMALL)
    assert main(["simulate", str(trace), "--policy", "easy"]) == 0
    out = capsys.readouterr().out
    assert "5 of 5 jobs on 4 processors" in out and "MEAN BSLD" in out
    assert main(["simulate", str(trace), "--policy", "easy-sjbf", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["summary"]["max_wait"] == 13 and figures["procs"] == 4
    assert main(["simulate", str(trace), "--policy", "lottery"]) == 125
    assert "lottery" in capsys.readouterr().err


def test_a_trace_without_maxprocs_needs_procs(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "headless.swf"
    trace.write_text(swf_line(1, 0, 10, 2, 10) + "\n")
    assert main(["simulate", str(trace)]) == 125
    assert "--procs" in capsys.readouterr().err
    assert main(["simulate", str(trace), "--procs", "2", "--json"]) == 0


# Gaussier et al., SC'15, for this exact file (shared/data/traces/README.md)
PUBLISHED = {"easy": (92.5765, 15_696.80), "easy-sjbf": (69.4054, 14_764.00)}


@pytest.mark.parametrize("policy", sorted(PUBLISHED))
def test_kth_sp2_matches_the_published_figures(policy: str) -> None:
    if not KTH.exists():  # ../shared/ holds third-party data; absent, the test cannot run
        pytest.skip(f"the KTH SP2 trace is not at {KTH}: it comes from ../shared/ (or set "
                    "CORRAL_SHARED)")
    trace = read_swf(KTH)
    jobs = trace_jobs(trace, trace.max_procs or 0)
    assert len(jobs) == 28_481
    summary = simulate(jobs, 100, POLICIES[policy]).summary
    slowdown, flow = PUBLISHED[policy]
    assert summary.mean_bounded_slowdown == pytest.approx(slowdown, rel=0.005)
    assert summary.mean_flow == pytest.approx(flow, rel=0.005)


def test_kth_sp2_fairshare_beats_easy_sjbf_and_waits_no_longer_than_easy() -> None:
    if not KTH.exists():  # ../shared/ holds third-party data; absent, the test cannot run
        pytest.skip(f"the KTH SP2 trace is not at {KTH}: it comes from ../shared/ (or set "
                    "CORRAL_SHARED)")
    jobs = trace_jobs(read_swf(KTH), 100)
    easy = simulate(jobs, 100, POLICIES["easy"]).summary
    fairshare = simulate(jobs, 100, POLICIES["fairshare"]).summary
    assert fairshare.mean_bounded_slowdown < PUBLISHED["easy-sjbf"][0]
    assert fairshare.max_wait <= easy.max_wait


def test_a_broken_gzip_trace_is_a_corral_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.swf.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(CorralError, match="cannot read the trace"):
        read_swf(broken)


def test_every_user_on_request(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "small.swf"
    trace.write_text(SMALL)
    assert main(["simulate", str(trace), "--users", "2"]) == 0
    assert "(3 more users; --users 0 shows all)" in capsys.readouterr().out
    assert main(["simulate", str(trace), "--users", "0"]) == 0
    assert "more users" not in capsys.readouterr().out
