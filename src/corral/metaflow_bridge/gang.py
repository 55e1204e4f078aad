"""What a bridged step's code can call: ``current.corral`` and, for ``@torchrun``,
``current.torch``.

``current.corral.launch("main.py", procs_per_node=8, launcher="torchrun")`` is the same call
as in corral's own flows (:mod:`corral.flow.current`): it starts the program on this node with
corral's launcher, wired to the other nodes of the gang.

metaflow-torchrun's ``current.torch.run`` makes each node check in, and report its state,
through a cloud datastore (S3, Azure, GCS), so it fails on Metaflow's local datastore. corral
starts and watches a gang's nodes itself, so under corral ``current.torch`` is
:class:`TorchrunThroughCorral`: the same ``run(...)`` call, done by corral's torchrun launcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from corral.errors import SpecError
from corral.flow.current import Current, Parallel


def gang_current(run_id: str, step_name: str, task_id: str, retry_count: int,
                 procs_per_node: int | None, launcher: str | None) -> Current:
    """``current.corral`` for this node's task."""
    gang = Current()
    gang._set(parallel=Parallel.of_this_node(), run_id=run_id, step_name=step_name,
              task_id=task_id, retry_count=retry_count, procs_per_node=procs_per_node,
              launcher=launcher)
    return gang


def _as_args(value: Sequence[str] | Mapping[str, Any] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        out: list[str] = []
        for key, item in value.items():
            out += [f"--{key}", str(item)]
        return out
    return [str(item) for item in value]


class TorchrunThroughCorral:
    """``current.torch`` of metaflow-torchrun, run by corral's torchrun launcher."""

    def __init__(self, gang: Current, nproc_per_node: int = 1) -> None:
        self.gang = gang
        self.nproc_per_node = nproc_per_node

    def run(self, torchrun_args: Sequence[str] | Mapping[str, Any] | None = None,
            entrypoint: str | None = None,
            entrypoint_args: Sequence[str] | Mapping[str, Any] | None = None,
            nproc_per_node: int | None = None, push_results_dir_to_cloud: bool = False,
            local_output_dir: str | None = None,
            cloud_output_dir: str | None = None) -> list[str]:
        """Run ``entrypoint`` with ``nproc_per_node`` ranks on every node of the gang."""
        if entrypoint is None:
            raise SpecError([("entrypoint", None, "the script torchrun runs, e.g. 'main.py'")],
                            what="current.torch.run call")
        if push_results_dir_to_cloud:
            raise SpecError([("push_results_dir_to_cloud", True,
                              "not through corral: save results as artifacts or files")],
                            what="current.torch.run call")
        extra = dict(torchrun_args) if isinstance(torchrun_args, Mapping) else {}
        if torchrun_args and not isinstance(torchrun_args, Mapping):
            raise SpecError([("torchrun_args", torchrun_args,
                              "a dict; corral sets the nodes, ranks and rendezvous itself")],
                            what="current.torch.run call")
        procs = nproc_per_node or extra.pop("nproc_per_node", None) or self.nproc_per_node
        if extra:
            raise SpecError([("torchrun_args", extra,
                              "only nproc_per_node; corral sets the nodes, ranks and "
                              "rendezvous itself")], what="current.torch.run call")
        return self.gang.launch(entrypoint, procs_per_node=int(procs),
                                args=_as_args(entrypoint_args), launcher="torchrun")
