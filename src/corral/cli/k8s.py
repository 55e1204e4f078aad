"""``corral k8s``: what a Kubernetes user sets up once, such as queues."""

from __future__ import annotations

from typing import Any

import click

from corral.config import backend_defaults
from corral.console import columns, printable


def _api(kubeconfig: str | None, context: str | None) -> Any:
    from corral.backends.kubernetes.api import KubeApi

    defaults = backend_defaults("kubernetes")
    return KubeApi(kubeconfig or defaults.get("kubeconfig"), context or defaults.get("context"))


def _namespace(namespace: str | None) -> str:
    return namespace or str(backend_defaults("kubernetes").get("namespace", "default"))


cluster_options = [
    click.option("--kubeconfig", help="Kubeconfig file (default: $KUBECONFIG, ~/.kube/config)."),
    click.option("--context", help="Kubeconfig context (default: its current one)."),
]


def with_cluster(command: Any) -> Any:
    for option in reversed(cluster_options):
        command = option(command)
    return command


@click.group("k8s")
def k8s_group() -> None:
    """Kubernetes helpers: queues."""


@k8s_group.group("queue")
def queue_group() -> None:
    """Volcano queues, or Kueue ClusterQueue + LocalQueue pairs."""


@queue_group.command("create")
@click.argument("name")
@click.option("--weight", type=int, default=1, show_default=True,
              help="Share of the cluster against other queues.")
@click.option("--kueue", is_flag=True, help="A Kueue ClusterQueue + LocalQueue (for the "
              "jobset and job flavours) instead of a Volcano Queue.")
@click.option("--cpu", help="CPU quota (Kueue) or capability (Volcano), e.g. 16.")
@click.option("--memory", help="Memory quota or capability, e.g. 64Gi.")
@click.option("--gpus", type=int, help="GPU quota or capability.")
@click.option("--namespace", help="Namespace of the Kueue LocalQueue.")
@with_cluster
def queue_create(name: str, weight: int, kueue: bool, cpu: str | None, memory: str | None,
                 gpus: int | None, namespace: str | None, kubeconfig: str | None,
                 context: str | None) -> int:
    """Create queue NAME (jobs name it with --queue NAME)."""
    from corral.backends.kubernetes.queues import QueueSpec, create_queue

    queue = QueueSpec(name=name, weight=weight, cpu=cpu, memory=memory, gpus=gpus,
                      namespace=_namespace(namespace))
    for made in create_queue(_api(kubeconfig, context), queue, kueue):
        click.echo(f"created {made}")
    return 0


@queue_group.command("ls")
@click.option("--namespace", help="Namespace of the Kueue LocalQueues.")
@with_cluster
def queue_ls(namespace: str | None, kubeconfig: str | None, context: str | None) -> int:
    """List the cluster's queues with their weight and usage."""
    from corral.backends.kubernetes.queues import list_queues

    rows = list_queues(_api(kubeconfig, context), _namespace(namespace))
    keys = ["name", "kind", "weight", "state", "running", "pending", "usage"]
    click.echo(columns([k.upper() for k in keys],
                       [[printable(row[k], 80) for k in keys] for row in rows]), nl=False)
    return 0


@queue_group.command("delete")
@click.argument("name")
@click.option("--kueue", is_flag=True, help="Delete the Kueue pair rather than a Volcano Queue.")
@click.option("--namespace", help="Namespace of the Kueue LocalQueue.")
@with_cluster
def queue_delete(name: str, kueue: bool, namespace: str | None, kubeconfig: str | None,
                 context: str | None) -> int:
    """Delete queue NAME."""
    from corral.backends.kubernetes.queues import delete_queue

    gone = delete_queue(_api(kubeconfig, context), name, _namespace(namespace), kueue)
    click.echo("\n".join(f"deleted {g}" for g in gone) or f"no queue {name!r}")
    return 0 if gone else 1
