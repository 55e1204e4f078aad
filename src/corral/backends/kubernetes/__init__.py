"""The Kubernetes backend: Volcano Jobs, JobSets (with Kueue), or plain Indexed Jobs."""

from corral.backends.kubernetes.client import KubernetesBackend
from corral.backends.kubernetes.options import KubernetesOptions

__all__ = ["KubernetesBackend", "KubernetesOptions"]
