"""The job environment, read the same way inside every rank on every backend.

Only the standard library is imported here: ranks call ``corral.env()`` on their hot path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

# What every rank sees, whatever the launcher and backend.
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
)


@dataclass(frozen=True)
class JobEnvironment:
    """Who this process is within its job."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    hosts: tuple[str, ...]
    job_id: str | None
    job_name: str | None
    run_dir: str | None
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on global rank 0 (print, save checkpoints, return results here)."""
        return self.rank == 0

    @property
    def hostname(self) -> str:
        return self.hosts[self.node_rank] if self.node_rank < len(self.hosts) else ""


def _int(environ: Mapping[str, str], *names: str, default: int) -> int:
    for name in names:
        value = environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _hosts(environ: Mapping[str, str]) -> tuple[str, ...]:
    listed = environ.get("CORRAL_HOSTS")
    if listed:
        return tuple(h for h in listed.split(",") if h)
    hostfile = environ.get("CORRAL_HOSTFILE")
    if hostfile and os.path.exists(hostfile):
        with open(hostfile, encoding="utf-8") as handle:
            return tuple(line.split()[0] for line in handle if line.strip())
    return ()


def read_environment(environ: Mapping[str, str] | None = None) -> JobEnvironment:
    """Parse a rank's environment (``os.environ`` by default). Outside a job: rank 0 of 1."""
    environ = os.environ if environ is None else environ
    rank = _int(environ, "RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", default=0)
    world = _int(environ, "WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", default=1)
    local_world = _int(environ, "LOCAL_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE", default=1)
    local_rank = _int(environ, "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", default=0)
    node_rank = _int(environ, "NODE_RANK", "GROUP_RANK", default=rank // max(local_world, 1))
    hosts = _hosts(environ)
    nodes_guess = len(hosts) or max(world // max(local_world, 1), 1)
    num_nodes = _int(environ, "CORRAL_NUM_NODES", default=nodes_guess)
    return JobEnvironment(
        rank=rank,
        local_rank=local_rank,
        world_size=world,
        local_world_size=local_world,
        node_rank=node_rank,
        num_nodes=num_nodes,
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(environ, "MASTER_PORT", default=29500),
        hosts=hosts,
        job_id=environ.get("CORRAL_JOB_ID"),
        job_name=environ.get("CORRAL_JOB_NAME"),
        run_dir=environ.get("CORRAL_RUN_DIR"),
        backend=environ.get("CORRAL_BACKEND"),
    )


def env() -> JobEnvironment:
    """The environment of the current rank."""
    return read_environment()
