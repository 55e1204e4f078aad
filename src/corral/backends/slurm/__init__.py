"""The Slurm backend: one sbatch script per job, srun per node or per rank."""

from corral.backends.slurm.client import SlurmBackend
from corral.backends.slurm.options import SlurmOptions
from corral.backends.slurm.render import SlurmPlan

__all__ = ["SlurmBackend", "SlurmOptions", "SlurmPlan"]
