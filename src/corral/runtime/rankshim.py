"""DeepSpeed's rank shim: ``python -m corral.runtime.rankshim [--local_rank=N] --at K PROGRAM...``.

DeepSpeed's per-node launcher puts ``--local_rank=N`` right after the script it starts,
which a ``sh -c`` shim cannot take. This module takes it, puts it back after the user's
script (position K of PROGRAM, where DeepSpeed would have put it), sends the rank's output
to ``$CORRAL_LOG_DIR/rank-$RANK.log`` when that is set, and execs the program. Standard
library only.
"""

from __future__ import annotations

import os
import sys


def split(argv: list[str]) -> list[str]:
    """The program to exec, with DeepSpeed's --local_rank flag moved into place."""
    local_rank = [argv.pop(0)] if argv and argv[0].startswith("--local_rank") else []
    if len(argv) < 3 or argv[0] != "--at":
        raise SystemExit("usage: python -m corral.runtime.rankshim [--local_rank=N] --at K ARGV...")
    at, program = int(argv[1]), argv[2:]
    return program[:at] + local_rank + program[at:]


def main() -> None:
    program = split(sys.argv[1:])
    log_dir = os.environ.get("CORRAL_LOG_DIR")
    if log_dir:
        path = os.path.join(log_dir, f"rank-{os.environ.get('RANK', 'unknown')}.log")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    os.execvp(program[0], program)


if __name__ == "__main__":
    main()
