"""Launchers: (spec, node) -> the processes to start on that node. They know no backend."""

from __future__ import annotations

from corral.launchers.base import Launcher, NodeContext, NodeLaunch, ProcessLaunch
from corral.launchers.deepspeed import DeepspeedLauncher
from corral.launchers.jax import JaxLauncher
from corral.launchers.mpirun import MpirunLauncher
from corral.launchers.none import NoneLauncher
from corral.launchers.ray import RayLauncher
from corral.launchers.tensorflow import TensorflowLauncher
from corral.launchers.torchrun import TorchrunLauncher

LAUNCHERS: dict[str, Launcher] = {
    "torchrun": TorchrunLauncher(),
    "mpirun": MpirunLauncher(),
    "deepspeed": DeepspeedLauncher(),
    "tensorflow": TensorflowLauncher(),
    "jax": JaxLauncher(),
    "ray": RayLauncher(),
    "none": NoneLauncher(),
}


def get_launcher(name: str) -> Launcher:
    return LAUNCHERS[name]


__all__ = ["LAUNCHERS", "Launcher", "NodeContext", "NodeLaunch", "ProcessLaunch", "get_launcher"]
