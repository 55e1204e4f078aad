"""``torchrun``: one elastic agent per node, c10d rendezvous on the first host.

Each job gets its own rendezvous id and port (from the backend), so two jobs on the same
hosts never meet in one rendezvous.
"""

from __future__ import annotations

from corral.launchers.base import (
    NodeContext,
    NodeLaunch,
    ProcessLaunch,
    job_env,
    node_ranks,
    program_argv,
    rank_shim,
)
from corral.spec import JobSpec

# c10d assigns node ranks in join order (--node-rank is ignored); GROUP_RANK counts.
_DERIVE = 'export NODE_RANK="${GROUP_RANK:-$NODE_RANK}"; '


class TorchrunLauncher:
    name = "torchrun"

    def agent_argv(self, spec: JobSpec, ctx: NodeContext) -> tuple[str, ...]:
        return (
            ctx.python, "-m", "torch.distributed.run",
            "--nnodes", str(spec.nodes),
            "--nproc-per-node", str(spec.procs_per_node),
            "--node-rank", ctx.node_rank_text,
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", f"{ctx.master_addr}:{ctx.master_port_text}",
            "--rdzv-id", ctx.rdzv_id,
            "--max-restarts", str(spec.max_restarts),
            *spec.launcher_args,
        )

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        program = program_argv(spec, ctx)
        # Always through the shim: NODE_RANK must follow the rendezvous (GROUP_RANK).
        tail = ("--no-python", *rank_shim(ctx, _DERIVE), *program)
        argv = (*self.agent_argv(spec, ctx), *tail)
        env = job_env(spec, ctx)
        env.pop("WORLD_SIZE")  # set per worker by the agent
        agent = ProcessLaunch(argv, env, log_name=f"node-{ctx.node_rank}.log")
        return NodeLaunch(ctx.node_rank, (agent,), ranks=node_ranks(spec, ctx.node_rank))
