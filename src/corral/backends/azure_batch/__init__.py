"""The Azure Batch backend: one job with one multi-instance task per corral job."""

from corral.backends.azure_batch.client import AzureBatchBackend
from corral.backends.azure_batch.options import AzureBatchOptions

__all__ = ["AzureBatchBackend", "AzureBatchOptions"]
