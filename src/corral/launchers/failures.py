"""Find the first failing rank in what a launcher printed when it gave up.

torchrun and mpirun start the ranks themselves, so a backend sees only the launcher's
exit. Both print which rank failed first; these parsers read that report.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class RankFailure:
    rank: int
    returncode: int  # negative: killed by that signal


_TORCHRUN_ROOT = re.compile(r"Root Cause \(first observed failure\):(?P<body>.*?)(?:\n=+|\Z)", re.S)
_TORCHRUN_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.M)
_TORCHRUN_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.M)

_SHIM_REPORT = re.compile(r"corral: rank (\d+) exited with code (\d+)")
_MPI_FIRST = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*\n\s*Exit code:\s*(\d+)")
_MPI_SIGNAL = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)")


def parse_torchrun(text: str) -> RankFailure | None:
    """The 'Root Cause (first observed failure)' block of torchrun's ChildFailedError."""
    match = _TORCHRUN_ROOT.search(text)
    if not match:
        return None
    body = match.group("body")
    rank, code = _TORCHRUN_RANK.search(body), _TORCHRUN_EXIT.search(body)
    if not rank or not code:
        return None
    return RankFailure(int(rank.group(1)), int(code.group(1)))


def parse_mpirun(text: str) -> RankFailure | None:
    """Open MPI's 'The first process to do so was: Process name [[j,1],R] Exit code N', or
    the report of corral's MPICH rank shim."""
    match = _SHIM_REPORT.search(text) or _MPI_FIRST.search(text)
    if match:
        return RankFailure(int(match.group(1)), int(match.group(2)))
    match = _MPI_SIGNAL.search(text)
    if match:
        return RankFailure(int(match.group(1)), -int(match.group(2)))
    return None


PARSERS = {"torchrun": parse_torchrun, "mpirun": parse_mpirun}


def first_failure(launcher: str, text: str) -> RankFailure | None:
    parser = PARSERS.get(launcher)
    return parser(text) if parser else None
