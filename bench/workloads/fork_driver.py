"""The floor: import torch once, then fork every rank from that warm interpreter.

    python fork_driver.py WORKLOAD NPROCS MASTER_PORT

Each child sets the torchrun variables and runs WORKLOAD as ``__main__`` with runpy.
Exits 0 only if every rank did. A reference point, not a launcher anyone should use.
"""

from __future__ import annotations

import os
import runpy
import sys
import traceback
from typing import NoReturn

import torch  # noqa: F401  (imported once here; every forked rank inherits it)


def run_rank(workload: str, rank: int, world_size: int, port: int) -> NoReturn:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    sys.argv = [workload]
    code = 0
    try:
        runpy.run_path(workload, run_name="__main__")
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str]) -> int:
    workload, nprocs, port = argv[0], int(argv[1]), int(argv[2])
    pids = []
    for rank in range(nprocs):
        pid = os.fork()
        if pid == 0:
            run_rank(workload, rank, nprocs, port)
        pids.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
