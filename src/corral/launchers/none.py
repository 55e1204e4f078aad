"""``none``: the plain program, started once per rank by the backend itself."""

from __future__ import annotations

from corral.launchers.base import (
    NodeContext,
    NodeLaunch,
    ProcessLaunch,
    job_env,
    node_ranks,
    program_argv,
)
from corral.spec import JobSpec


class NoneLauncher:
    name = "none"

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        base = job_env(spec, ctx)
        argv = program_argv(spec, ctx)
        ranks = node_ranks(spec, ctx.node_rank)
        processes = []
        for local_rank, rank in enumerate(ranks):
            env = {**base, "RANK": str(rank), "LOCAL_RANK": str(local_rank),
                   "GROUP_RANK": str(ctx.node_rank)}
            processes.append(ProcessLaunch(argv, env, rank, local_rank, f"rank-{rank}.log"))
        return NodeLaunch(ctx.node_rank, tuple(processes), ranks=ranks)
