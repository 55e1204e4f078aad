"""The GCP Batch backend: one task per node, each running corral's node agent in a
container; the SDK (``pip install 'corral[gcp]'``) is imported only when it is needed."""

from corral.backends.gcp_batch.client import GcpBatchBackend
from corral.backends.gcp_batch.options import GcpBatchOptions

__all__ = ["GcpBatchBackend", "GcpBatchOptions"]
