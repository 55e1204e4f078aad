"""A node's processes as corral's node agent takes them (:mod:`corral.runtime.node`), for
backends whose nodes are containers that run :mod:`corral.runtime.pod`'s ``run_node``:
Kubernetes pods (rendered at submit, every host known) and cloud batch nodes (rendered in
the container, once the service has said where the node stands)."""

from __future__ import annotations

from typing import Any

from corral.launchers import NodeContext, get_launcher
from corral.spec import JobSpec, Script


def node_entry(spec: JobSpec, ctx: NodeContext) -> dict[str, Any]:
    """One node: its launcher's processes and files. Ranks get ``OMP_NUM_THREADS`` from the
    node's CPUs shared among them, unless the job sets it."""
    launch = get_launcher(spec.launcher).render_node(spec, ctx)
    threads: dict[str, str] = {}
    if "OMP_NUM_THREADS" not in spec.env and spec.resources.cpus:
        threads["OMP_NUM_THREADS"] = str(max(1, int(spec.resources.cpus
                                                    // spec.procs_per_node)))
    processes = [{"argv": list(p.argv), "env": {**dict(p.env), **threads},
                  "rank": p.rank, "local_rank": p.local_rank, "log": p.log_name}
                 for p in launch.processes]
    return {"node_rank": ctx.node_rank, "mode": "exec", "preload": [], "target": None,
            "files": dict(launch.files), "processes": processes}


def entry_in_container(spec: JobSpec, local_workdir: str, container_workdir: str) -> JobSpec:
    """A script given by an absolute path inside the working directory runs from the shipped
    copy of that directory in the container."""
    entry = spec.entrypoint
    prefix = local_workdir.rstrip("/") + "/"
    if isinstance(entry, Script) and entry.path.startswith(prefix):
        return spec.replace(entrypoint=Script(
            path=container_workdir.rstrip("/") + "/" + entry.path[len(prefix):]))
    return spec
