"""``tensorflow``: the program once per rank, as with ``none``, through
:mod:`corral.runtime.frameworks`, which gives each rank the ``TF_CONFIG`` that
``tf.distribute.MultiWorkerMirroredStrategy`` reads, from corral's variables at run time.
"""

from __future__ import annotations

from corral.errors import SpecError
from corral.launchers.base import NodeContext, NodeLaunch, ProcessLaunch
from corral.launchers.none import NoneLauncher
from corral.ports import PORT_BLOCK
from corral.spec import JobSpec


class TensorflowLauncher:
    name = "tensorflow"

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        # Each worker listens on a port of the job's block after MASTER_PORT, one per worker
        # of its host: emulated nodes share one host, so all of the job's workers count.
        shared_host = len(set(ctx.hosts)) <= 1
        per_host = spec.world_size if shared_host else spec.procs_per_node
        if per_host > PORT_BLOCK - 1:
            where = (f"{spec.nodes} node(s) x {spec.procs_per_node} on one host"
                     if shared_host else f"{spec.procs_per_node} per node")
            raise SpecError([("procs_per_node", spec.procs_per_node,
                              f"launcher tensorflow runs at most {PORT_BLOCK - 1} workers per "
                              f"host (each listens on a port of the job's {PORT_BLOCK}), "
                              f"not {per_host} ({where}); use fewer ranks per host, each "
                              "with more devices")])
        plain = NoneLauncher().render_node(spec, ctx)
        shim = (ctx.python, "-m", "corral.runtime.frameworks", self.name)
        processes = tuple(ProcessLaunch((*shim, *p.argv), p.env, p.rank, p.local_rank,
                                        p.log_name) for p in plain.processes)
        return NodeLaunch(plain.node_rank, processes, plain.files, plain.ranks)
