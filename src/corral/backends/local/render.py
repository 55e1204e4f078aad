"""Render a job for this machine: per emulated node, what starts and with which variables.

Pure: everything that depends on the machine (free port, GPUs, CPU count, what to
preload) comes in as arguments, so a plan can be rendered, printed and tested without
starting anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from corral.backends.local.options import LocalOptions
from corral.errors import SubmitError
from corral.launchers import NodeContext, ProcessLaunch, get_launcher
from corral.spec import Function, JobSpec, Module, Script

LOCAL_HOST = "127.0.0.1"
# Launchers whose ranks the backend starts one by one, as with none, each through a setup step
# (corral.runtime.frameworks): each rank gets its share of the node's GPUs, as with none.
PER_RANK_SETUP = ("tensorflow", "jax")
StartMode = Literal["fork", "exec"]


@dataclass(frozen=True)
class Machine:
    """What the client found out about this machine before rendering."""

    cpu_count: int
    gpus: tuple[str, ...] = ()
    python: str = "python3"


@dataclass(frozen=True)
class NodePlan:
    node_rank: int
    mode: StartMode
    processes: tuple[ProcessLaunch, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    preload: tuple[str, ...] = ()
    target: Mapping[str, Any] | None = None
    why: str = ""  # why this start mode was chosen

    def to_agent_json(self, log_dir: str, grace: float) -> dict[str, Any]:
        return {
            "node_rank": self.node_rank,
            "mode": self.mode,
            "preload": list(self.preload),
            "target": dict(self.target) if self.target else None,
            "log_dir": log_dir,
            "grace": grace,
            "files": dict(self.files),
            "processes": [
                {"argv": list(p.argv), "env": dict(p.env), "rank": p.rank,
                 "local_rank": p.local_rank, "log": p.log_name}
                for p in self.processes
            ],
        }


@dataclass(frozen=True)
class LocalPlan:
    job_id: str
    run_dir: str
    log_dir: str
    master_port: int
    nodes: tuple[NodePlan, ...]
    workdir: str
    time_limit: float | None
    world_size: int
    procs_per_node: int

    def dry_run_text(self) -> str:
        """Exactly what would start on each node, as shell lines."""
        out = [f"# job {self.job_id}: {len(self.nodes)} node(s) on this machine, "
               f"rendezvous {LOCAL_HOST}:{self.master_port}, working directory {self.workdir}"]
        for node in self.nodes:
            out.append(f"\n## node {node.node_rank}: {node.mode} ({node.why})")
            if node.mode == "fork":
                out.append(f"# preload once: {', '.join(node.preload) or '(nothing)'}; "
                           "then fork one child per rank running:")
            for path, text in node.files.items():
                out.append(f"# file {path}:")
                out.extend("#   " + line for line in text.splitlines())
            if not node.processes:
                out.append("# (nothing starts here: the launcher on node 0 reaches this node)")
            for proc in node.processes:
                label = f"rank {proc.rank}" if proc.rank is not None else "launcher"
                out.append(f"# {label} -> logs/{proc.log_name}")
                out.append(proc.shell_line())
        return "\n".join(out) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "run_dir": self.run_dir,
            "master_port": self.master_port,
            "workdir": self.workdir,
            "time_limit": self.time_limit,
            "world_size": self.world_size,
            "procs_per_node": self.procs_per_node,
            "nodes": [n.to_agent_json(self.log_dir, 0) for n in self.nodes],
        }


def _torchrun_compatible_env(spec: JobSpec, ctx: NodeContext, rank: int) -> dict[str, str]:
    """What torchrun's agent would add for a worker, for ranks started without it."""
    return {
        "GROUP_RANK": str(ctx.node_rank),
        "ROLE_RANK": str(rank),
        "ROLE_NAME": "default",
        "ROLE_WORLD_SIZE": str(spec.world_size),
        "GROUP_WORLD_SIZE": str(spec.nodes),
        "TORCHELASTIC_RUN_ID": ctx.rdzv_id,
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
        "TORCHELASTIC_USE_AGENT_STORE": "False",
    }


def _fork_target(spec: JobSpec, ctx: NodeContext) -> dict[str, Any] | None:
    entry = spec.entrypoint
    if isinstance(entry, Script):
        return {"kind": "script", "path": entry.path, "args": list(spec.args)}
    if isinstance(entry, Module):
        return {"kind": "module", "module": entry.module, "args": list(spec.args)}
    if isinstance(entry, Function):
        return {"kind": "function", "payload": ctx.function_payload}
    return None


def _start_mode(spec: JobSpec, options: LocalOptions, preload: tuple[str, ...]) -> tuple[
    StartMode, str
]:
    if spec.launcher in PER_RANK_SETUP:
        return "exec", f"each rank starts through corral's {spec.launcher} setup"
    if spec.launcher not in ("none", "torchrun"):
        return "exec", f"{spec.launcher} starts the ranks"
    if not options.fork:
        return "exec", "forking disabled"
    if isinstance(spec.entrypoint, Function):
        return "fork", "function loaded once per node, ranks forked"
    if not isinstance(spec.entrypoint, Script | Module):
        return "exec", "not a Python program"
    if spec.launcher == "torchrun" and spec.max_restarts > 0:
        return "exec", "restarts need torchrun's elastic agent"
    if not preload:
        return "exec", "nothing heavy to preload"
    return "fork", "ranks forked after one preload per node"


def gpu_sets(spec: JobSpec, gpus: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Disjoint GPU ids per node; raises when the machine has too few."""
    per_node = math.ceil(spec.resources.gpus)  # a fraction of a GPU still sees that GPU
    if per_node == 0:
        return [() for _ in range(spec.nodes)]
    wanted = per_node * spec.nodes
    if wanted > len(gpus):
        raise SubmitError(
            f"resources.gpus: the job asks for {per_node} GPU(s) per node on {spec.nodes} "
            f"node(s) = {wanted}, but this machine has {len(gpus)} "
            f"({', '.join(gpus) or 'none visible'}); lower gpus or nodes"
        )
    return [gpus[i * per_node:(i + 1) * per_node] for i in range(spec.nodes)]


def _rank_gpus(node_gpus: tuple[str, ...], local_rank: int, procs: int) -> tuple[str, ...]:
    if not node_gpus or len(node_gpus) % procs:
        return node_gpus
    share = len(node_gpus) // procs
    return node_gpus[local_rank * share:(local_rank + 1) * share]


def render(
    spec: JobSpec,
    *,
    job_id: str,
    run_dir: str,
    master_port: int,
    machine: Machine,
    workdir: str,
    preload: tuple[str, ...] = (),
    options: LocalOptions | None = None,
) -> LocalPlan:
    options = options or LocalOptions()
    mode, why = _start_mode(spec, options, preload)
    hosts = (LOCAL_HOST,) * spec.nodes
    log_dir = f"{run_dir}/logs"
    threads = str(max(1, machine.cpu_count // spec.world_size))
    node_gpus = gpu_sets(spec, machine.gpus)
    # In fork mode the backend starts every rank itself, with torchrun's variables.
    launcher = get_launcher("none" if mode == "fork" else spec.launcher)
    nodes = []
    for node_rank in range(spec.nodes):
        ctx = NodeContext(
            node_rank=node_rank, hosts=hosts, master_port=master_port, rdzv_id=job_id,
            run_dir=run_dir, job_id=job_id, backend="local", python=machine.python,
            log_dir=None if spec.launcher == "none" or mode == "fork" else log_dir,
        )
        launch = launcher.render_node(spec, ctx)
        processes = []
        for proc in launch.processes:
            extra: dict[str, str] = {}
            if "OMP_NUM_THREADS" not in spec.env:
                extra["OMP_NUM_THREADS"] = threads
            if mode == "fork" and spec.launcher == "torchrun" and proc.rank is not None:
                extra.update(_torchrun_compatible_env(spec, ctx, proc.rank))
            gpus = node_gpus[node_rank]
            if proc.local_rank is not None and spec.launcher in ("none", *PER_RANK_SETUP):
                gpus = _rank_gpus(gpus, proc.local_rank, spec.procs_per_node)
            if spec.resources.gpus:
                extra["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            processes.append(replace(proc, env={**proc.env, **extra}))
        nodes.append(NodePlan(
            node_rank=node_rank,
            mode=mode,
            processes=tuple(processes),
            files=launch.files,
            preload=preload if mode == "fork" else (),
            target=_fork_target(spec, ctx) if mode == "fork" else None,
            why=why,
        ))
    return LocalPlan(
        job_id=job_id, run_dir=run_dir, log_dir=log_dir, master_port=master_port,
        nodes=tuple(nodes), workdir=workdir, time_limit=spec.time_limit,
        world_size=spec.world_size, procs_per_node=spec.procs_per_node,
    )
