"""``ray``: a Ray cluster on the job's nodes, and the user's program as its driver.

Every node runs :mod:`corral.runtime.ray_node` (one process per node, which is rank N of the
job): node 0 starts the Ray head, waits for every node to join, runs the program with
``RAY_ADDRESS`` set and takes its exit code as its own; the other nodes start Ray workers
that stay until the head ends. Ray starts its own worker processes, so a node has one rank:
give each node's CPUs with ``--cpus`` (and GPUs, memory for the object store, with
``--gpus``, ``--memory``).
"""

from __future__ import annotations

from corral.launchers.base import NodeContext, NodeLaunch, ProcessLaunch, job_env, program_argv
from corral.spec import JobSpec

OBJECT_STORE_SHARE = 0.3  # of the node's --memory, as Ray's own default takes of the machine's


def ray_resources_env(spec: JobSpec) -> dict[str, str]:
    """What each node offers Ray, from the job's resources (unset: Ray detects it)."""
    res = spec.resources
    env = {}
    if res.cpus is not None:
        env["CORRAL_RAY_NUM_CPUS"] = str(max(1, int(res.cpus)))
    if res.gpus:
        env["CORRAL_RAY_NUM_GPUS"] = str(int(res.gpus))
    if res.memory_mb is not None:
        env["CORRAL_RAY_OBJECT_STORE_BYTES"] = str(
            int(res.memory_mb * OBJECT_STORE_SHARE) * 1024 * 1024)
    return env


class RayLauncher:
    name = "ray"

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        env = {**job_env(spec, ctx), **ray_resources_env(spec),
               "RANK": ctx.node_rank_text, "LOCAL_RANK": "0", "GROUP_RANK": ctx.node_rank_text}
        argv = (ctx.python, "-m", "corral.runtime.ray_node", *program_argv(spec, ctx))
        process = ProcessLaunch(argv, env, ctx.node_rank, 0, f"rank-{ctx.node_rank}.log")
        return NodeLaunch(ctx.node_rank, (process,), ranks=(ctx.node_rank,))
