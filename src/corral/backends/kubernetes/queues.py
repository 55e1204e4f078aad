"""Queues on a cluster: a Volcano Queue, or a Kueue ClusterQueue + LocalQueue (+ flavour).

``corral k8s queue create team-a --weight 2`` replaces the hand-written ``queue.yaml`` of
the Volcano demo; with ``--kueue`` it makes what a JobSet (or Job) flavour job waits in: a
ClusterQueue holding the quota (and fair-sharing weight) and a LocalQueue of the same name
in the job namespace. Rendering is pure; :func:`create_queue` and :func:`list_queues` ask
the cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from corral.errors import SpecError

from .api import KINDS, ApiError, KubeApi
from .options import DNS_LABEL

VOLCANO_QUEUE = KINDS[("scheduling.volcano.sh/v1beta1", "Queue")]
CLUSTER_QUEUE = KINDS[("kueue.x-k8s.io/v1beta2", "ClusterQueue")]
LOCAL_QUEUE = KINDS[("kueue.x-k8s.io/v1beta2", "LocalQueue")]
FLAVOR = KINDS[("kueue.x-k8s.io/v1beta2", "ResourceFlavor")]
DEFAULT_FLAVOR = "corral-default"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|m)?$")
LABELS = {"app.kubernetes.io/managed-by": "corral"}


@dataclass(frozen=True)
class QueueSpec:
    name: str
    weight: int = 1
    cpu: str | None = None  # quota (Kueue) or capability (Volcano)
    memory: str | None = None
    gpus: int | None = None
    namespace: str = "default"  # of the Kueue LocalQueue

    def __post_init__(self) -> None:
        problems: list[tuple[str, Any, str]] = []
        if not re.match(DNS_LABEL, self.name) or len(self.name) > 63:
            problems.append(("name", self.name, "a queue name is lower-case letters, digits "
                             "and '-' (e.g. team-a)"))
        if not 1 <= self.weight <= 65535:
            problems.append(("weight", self.weight, "a whole number from 1 to 65535"))
        for field, value in (("cpu", self.cpu), ("memory", self.memory)):
            if value is not None and not _QUANTITY.match(value):
                problems.append((field, value, "a Kubernetes quantity such as 8, 500m, 32Gi"))
        if self.gpus is not None and self.gpus < 0:
            problems.append(("gpus", self.gpus, "zero or more"))
        if problems:
            raise SpecError(problems, what="queue")

    def amounts(self) -> dict[str, str]:
        found = {"cpu": self.cpu, "memory": self.memory,
                 "nvidia.com/gpu": None if self.gpus is None else str(self.gpus)}
        return {k: v for k, v in found.items() if v is not None}


def volcano_queue(queue: QueueSpec) -> dict[str, Any]:
    spec: dict[str, Any] = {"weight": queue.weight, "reclaimable": True}
    if queue.amounts():
        spec["capability"] = queue.amounts()
    return {"apiVersion": VOLCANO_QUEUE.api_version, "kind": "Queue",
            "metadata": {"name": queue.name, "labels": dict(LABELS)}, "spec": spec}


def kueue_queue(queue: QueueSpec) -> list[dict[str, Any]]:
    """ResourceFlavor, ClusterQueue (quota, weight), LocalQueue; in creation order."""
    amounts = queue.amounts() or {"cpu": "1000", "memory": "4Ti"}  # no quota: effectively none
    flavor = {"apiVersion": FLAVOR.api_version, "kind": "ResourceFlavor",
              "metadata": {"name": DEFAULT_FLAVOR, "labels": dict(LABELS)}}
    cluster_queue = {
        "apiVersion": CLUSTER_QUEUE.api_version, "kind": "ClusterQueue",
        "metadata": {"name": queue.name, "labels": dict(LABELS)},
        "spec": {
            "namespaceSelector": {},
            "fairSharing": {"weight": str(queue.weight)},
            "resourceGroups": [{
                "coveredResources": sorted(amounts),
                "flavors": [{"name": DEFAULT_FLAVOR, "resources": [
                    {"name": name, "nominalQuota": amounts[name]} for name in sorted(amounts)]}],
            }],
        }}
    local_queue = {
        "apiVersion": LOCAL_QUEUE.api_version, "kind": "LocalQueue",
        "metadata": {"name": queue.name, "namespace": queue.namespace, "labels": dict(LABELS)},
        "spec": {"clusterQueue": queue.name}}
    return [flavor, cluster_queue, local_queue]


def create_queue(api: KubeApi, queue: QueueSpec, kueue: bool) -> list[str]:
    """Create the queue's objects; what was created (an existing flavour is reused)."""
    made = []
    for manifest in kueue_queue(queue) if kueue else [volcano_queue(queue)]:
        try:
            api.create(manifest)
        except ApiError as exc:
            if exc.status == 409 and manifest["kind"] == "ResourceFlavor":
                continue  # shared by every corral queue
            raise
        made.append(f"{manifest['kind']} {manifest['metadata']['name']}")
    return made


def delete_queue(api: KubeApi, name: str, namespace: str, kueue: bool) -> list[str]:
    found = []
    targets = ([(LOCAL_QUEUE, namespace), (CLUSTER_QUEUE, None)] if kueue
               else [(VOLCANO_QUEUE, None)])
    for kind, ns in targets:
        if api.delete(kind, ns, name, propagation="Background"):
            found.append(f"{kind.plural} {name}")
    return found


def list_queues(api: KubeApi, namespace: str) -> list[dict[str, str]]:
    """Every Volcano Queue and Kueue LocalQueue that the cluster has, with its usage."""
    rows: list[dict[str, str]] = []
    for kind in (VOLCANO_QUEUE, LOCAL_QUEUE):
        try:
            items = api.list(kind, namespace if kind.namespaced else None)
        except ApiError as exc:
            if exc.status == 404:  # not installed
                continue
            raise
        for item in items:
            rows.append(queue_row(item))
    return rows


def queue_row(item: dict[str, Any]) -> dict[str, str]:
    status = item.get("status") or {}
    spec = item.get("spec") or {}
    if item["kind"] == "Queue":
        return {"name": item["metadata"]["name"], "kind": "volcano",
                "weight": str(spec.get("weight", 1)), "state": str(status.get("state", "")),
                "running": str(status.get("running", 0)),
                "pending": str(status.get("pending", 0) + status.get("inqueue", 0)),
                "usage": ", ".join(f"{k}={v}" for k, v in sorted(
                    (status.get("allocated") or {}).items()))}
    usage = ", ".join(f"{r['name']}={r.get('total', '0')}"
                      for f in status.get("flavorsUsage") or [] for r in f.get("resources", []))
    return {"name": item["metadata"]["name"], "kind": "kueue",
            "weight": str((spec.get("fairSharing") or {}).get("weight", "")),
            "state": "", "running": str(status.get("admittedWorkloads", 0)),
            "pending": str(status.get("pendingWorkloads", 0)), "usage": usage}


__all__ = ["QueueSpec", "create_queue", "delete_queue", "kueue_queue",
           "list_queues", "volcano_queue"]
