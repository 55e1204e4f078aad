"""submitit's LocalExecutor with a small adapter to the torchrun variables.

    python submitit_driver.py WORKLOAD NPROCS

Submits one job of NPROCS tasks on one node. Each task reads ``submitit.JobEnvironment()``,
sets ``RANK``/``LOCAL_RANK``/``WORLD_SIZE`` from it and ``MASTER_ADDR``/``MASTER_PORT`` from
the driver (a free port picked here), then runs WORKLOAD as ``__main__``. ``job.results()``
waits for every task and raises if one failed.
"""

from __future__ import annotations

import os
import runpy
import socket
import sys
import tempfile

import submitit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_rank(workload: str, port: int) -> int:
    env = submitit.JobEnvironment()
    os.environ.update(
        RANK=str(env.global_rank),
        LOCAL_RANK=str(env.local_rank),
        WORLD_SIZE=str(env.num_tasks),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    sys.argv = [workload]
    try:
        runpy.run_path(workload, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (None, 0):
            raise RuntimeError(f"rank {env.global_rank} exited with {stop.code}") from stop
    return env.global_rank


def main(argv: list[str]) -> int:
    workload, nprocs = os.path.abspath(argv[0]), int(argv[1])
    with tempfile.TemporaryDirectory(prefix="submitit-") as folder:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(tasks_per_node=nprocs, nodes=1, timeout_min=5)
        job = executor.submit(run_rank, workload, free_port())
        ranks = sorted(job.results())
    if ranks != list(range(nprocs)):
        print(f"submitit_driver: expected ranks 0..{nprocs - 1}, got {ranks}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
