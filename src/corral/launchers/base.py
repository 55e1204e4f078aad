"""What a launcher is: a pure function from (spec, node) to the processes to start there.

Launchers know no backend. A backend supplies a :class:`NodeContext` (which node this is,
the hosts of the job, the rendezvous port) and starts the :class:`ProcessLaunch` es it
gets back, however that backend starts processes (fork, srun, a pod command, ...).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from corral.spec import Command, Function, JobSpec, Module, Script

# The rank shim: a POSIX sh one-liner placed in front of the user's program when a
# launcher (torchrun, mpirun, deepspeed) starts the ranks, so that every rank, on every
# backend, appends its output to <log dir>/rank-<RANK>.log and sees the same variables.
# Arguments reach the program through "$@", never through the script text: safe for any
# value.
SHIM_NAME = "corral-rank"
_LOG_REDIRECT = 'exec >>"$CORRAL_LOG_DIR/rank-$RANK.log" 2>&1; '
_EXEC = 'exec "$@"'


@dataclass(frozen=True)
class NodeContext:
    """What a backend knows about one node of a job when it renders that node."""

    node_rank: int
    hosts: tuple[str, ...]
    master_port: int
    rdzv_id: str
    run_dir: str
    job_id: str
    backend: str
    python: str = "python3"
    log_dir: str | None = None  # when set, ranks append output to log_dir/rank-<RANK>.log
    # Backends that start one command on every node (srun) know some values only at run
    # time; they pass references (see corral.shell.ref) that render as "${VAR}".
    node_rank_ref: str | None = None
    master_addr_ref: str | None = None
    master_port_ref: str | None = None

    @property
    def num_nodes(self) -> int:
        return len(self.hosts)

    @property
    def master_addr(self) -> str:
        return self.master_addr_ref or self.hosts[0]

    @property
    def node_rank_text(self) -> str:
        return self.node_rank_ref or str(self.node_rank)

    @property
    def master_port_text(self) -> str:
        return self.master_port_ref or str(self.master_port)

    @property
    def hostfile(self) -> str:
        return f"{self.run_dir}/hostfile"

    @property
    def function_payload(self) -> str:
        return f"{self.run_dir}/function.pkl"


@dataclass(frozen=True)
class ProcessLaunch:
    """One process to start on a node: a rank (``rank`` set) or a launcher agent."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    rank: int | None = None
    local_rank: int | None = None
    log_name: str = ""  # file name under the log dir for this process's own output

    def shell_line(self) -> str:
        """The process as one safely quoted shell line (for dry runs and scripts)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.argv)


@dataclass(frozen=True)
class NodeLaunch:
    """Everything a node runs, plus files that must exist before it starts."""

    node_rank: int
    processes: tuple[ProcessLaunch, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    ranks: tuple[int, ...] = ()


class Launcher(Protocol):
    name: str

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch: ...


def program_argv(spec: JobSpec, ctx: NodeContext) -> tuple[str, ...]:
    """The user's program as an argv, exactly as one rank runs it."""
    entry = spec.entrypoint
    if isinstance(entry, Script):
        return (ctx.python, entry.path, *spec.args)
    if isinstance(entry, Module):
        return (ctx.python, "-m", entry.module, *spec.args)
    if isinstance(entry, Command):
        return (*entry.argv, *spec.args)
    if isinstance(entry, Function):
        return (ctx.python, "-m", "corral.runtime.call", ctx.function_payload)
    raise TypeError(f"unknown entrypoint {entry!r}")  # pragma: no cover - union is closed


def job_env(spec: JobSpec, ctx: NodeContext) -> dict[str, str]:
    """Variables every process of the job sees on this node (user env wins last)."""
    env = {
        "CORRAL_JOB_ID": ctx.job_id,
        "CORRAL_JOB_NAME": spec.name,
        "CORRAL_BACKEND": ctx.backend,
        "CORRAL_RUN_DIR": ctx.run_dir,
        "CORRAL_NUM_NODES": str(ctx.num_nodes),
        "CORRAL_HOSTS": ",".join(ctx.hosts),
        "CORRAL_HOSTFILE": ctx.hostfile,
        "NODE_RANK": ctx.node_rank_text,
        "MASTER_ADDR": ctx.master_addr,
        "MASTER_PORT": ctx.master_port_text,
        "WORLD_SIZE": str(spec.world_size),
        "LOCAL_WORLD_SIZE": str(spec.procs_per_node),
        "PYTHONUNBUFFERED": "1",
    }
    if ctx.log_dir is not None:
        env["CORRAL_LOG_DIR"] = ctx.log_dir
    env.update(spec.env)
    return env


def rank_shim(ctx: NodeContext, derive: str = "") -> tuple[str, ...]:
    """``sh -c '<derive> <log redirect> exec "$@"' corral-rank`` to put before a program."""
    redirect = _LOG_REDIRECT if ctx.log_dir is not None else ""
    if not derive and not redirect:
        return ()
    return ("sh", "-c", derive + redirect + _EXEC, SHIM_NAME)


def hostfile_text(hosts: tuple[str, ...], slots: int, style: str = "openmpi") -> str:
    """An MPI/DeepSpeed hostfile: ``host slots=N`` (Open MPI, DeepSpeed) or ``host:N`` (MPICH).

    A host listed twice (emulated nodes on one machine) becomes one line with the slots of
    both: MPI rejects repeated hosts with ``slots=``. Order is kept, so ranks still fill
    node 0 first.
    """
    merged: dict[str, int] = {}
    for host in hosts:
        merged[host] = merged.get(host, 0) + slots
    if style == "mpich":
        return "".join(f"{host}:{count}\n" for host, count in merged.items())
    return "".join(f"{host} slots={count}\n" for host, count in merged.items())


def node_ranks(spec: JobSpec, node_rank: int) -> tuple[int, ...]:
    first = node_rank * spec.procs_per_node
    return tuple(range(first, first + spec.procs_per_node))
