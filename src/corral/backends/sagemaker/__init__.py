"""The SageMaker backend: one training job, N instances, corral's node on each."""

from corral.backends.sagemaker.client import SageMakerBackend
from corral.backends.sagemaker.options import SageMakerOptions
from corral.backends.sagemaker.render import SageMakerPlan

__all__ = ["SageMakerBackend", "SageMakerOptions", "SageMakerPlan"]
