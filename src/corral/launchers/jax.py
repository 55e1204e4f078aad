"""``jax``: the program once per rank, as with ``none``, through
:mod:`corral.runtime.frameworks`, which gives each rank what ``jax.distributed.initialize()``
reads, from corral's variables at run time.
"""

from __future__ import annotations

from corral.launchers.base import NodeContext, NodeLaunch, ProcessLaunch
from corral.launchers.none import NoneLauncher
from corral.spec import JobSpec


class JaxLauncher:
    name = "jax"

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        plain = NoneLauncher().render_node(spec, ctx)
        shim = (ctx.python, "-m", "corral.runtime.frameworks", self.name)
        processes = tuple(ProcessLaunch((*shim, *p.argv), p.env, p.rank, p.local_rank,
                                        p.log_name) for p in plain.processes)
        return NodeLaunch(plain.node_rank, processes, plain.files, plain.ranks)
