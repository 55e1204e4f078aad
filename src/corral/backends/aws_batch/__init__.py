"""The AWS Batch backend: multi-node parallel jobs (see :mod:`.render` and :mod:`.client`)."""

from corral.backends.aws_batch.client import AwsBatchBackend
from corral.backends.aws_batch.options import AwsBatchOptions

__all__ = ["AwsBatchBackend", "AwsBatchOptions"]
