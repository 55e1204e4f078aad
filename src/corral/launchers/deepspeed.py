"""``deepspeed``: DeepSpeed's per-node launcher, started on every node; no ssh needed.

``deepspeed.launcher.launch`` is what the ``deepspeed`` command runs on each host over
ssh (pdsh). Starting it directly with the node rank and the master address lets any
backend start it the way it starts any other per-node process.
"""

from __future__ import annotations

import base64
import json

from corral.launchers.base import (
    NodeContext,
    NodeLaunch,
    ProcessLaunch,
    hostfile_text,
    job_env,
    node_ranks,
    program_argv,
)
from corral.spec import JobSpec


def world_info(hosts: tuple[str, ...], procs_per_node: int) -> str:
    """DeepSpeed's base64 JSON map host -> local slot ids; hosts must be distinct keys."""
    keys = hosts if len(set(hosts)) == len(hosts) else tuple(f"node{i}" for i in range(len(hosts)))
    info = {key: list(range(procs_per_node)) for key in keys}
    return base64.urlsafe_b64encode(json.dumps(info).encode()).decode()


class DeepspeedLauncher:
    name = "deepspeed"

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        files = {ctx.hostfile: hostfile_text(ctx.hosts, spec.procs_per_node)}
        program = program_argv(spec, ctx)
        if ctx.log_dir is None and program[0] == ctx.python:
            # DeepSpeed runs `python -u SCRIPT --local_rank=N ARGS` itself.
            is_module = program[1] == "-m"
            tail = ("--module", *program[2:]) if is_module else program[1:]
        else:
            # Through the rank shim, which takes --local_rank and puts it back after the
            # script: DeepSpeed puts it right after the module it starts.
            script_end = 3 if program[:2] == (ctx.python, "-m") else (
                2 if program[0] == ctx.python else 1)
            tail = ("--module", "corral.runtime.rankshim", "--at", str(script_end), *program)
        argv = (
            ctx.python, "-m", "deepspeed.launcher.launch",
            f"--world_info={world_info(ctx.hosts, spec.procs_per_node)}",
            f"--node_rank={ctx.node_rank_text}",
            f"--master_addr={ctx.master_addr}",
            f"--master_port={ctx.master_port_text}",
            *spec.launcher_args,
            *tail,
        )
        env = job_env(spec, ctx)
        launch = ProcessLaunch(argv, env, log_name=f"node-{ctx.node_rank}.log")
        return NodeLaunch(
            ctx.node_rank, (launch,), files=files, ranks=node_ranks(spec, ctx.node_rank)
        )
