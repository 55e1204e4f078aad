"""This machine as the queue sees it (CPUs, memory, GPUs), and what a local job asks of it.

Probed once per agent start, then passed to the pure policy as a
:class:`~corral.queue.model.Node`. GPUs come from NVML (``nvidia-ml-py``) when a driver
answers; otherwise from ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi``. ``CORRAL_QUEUE_CPUS``,
``CORRAL_QUEUE_MEMORY`` (MiB) and ``CUDA_VISIBLE_DEVICES`` narrow what the queue hands out.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.errors import SpecError
from corral.queue.model import Node, NodeShare, Request

if TYPE_CHECKING:
    from corral.spec import JobSpec

NODE_NAME = "localhost"
NO_LIMIT = 366 * 86400.0  # how backfilling plans a job that gave no time limit


@dataclass(frozen=True)
class Machine:
    """What the queue hands out here. ``gpu_ids`` are what CUDA_VISIBLE_DEVICES takes."""

    cpus: float
    memory: float
    gpu_ids: tuple[str, ...] = ()
    gpu_source: str = "none"  # nvml | CUDA_VISIBLE_DEVICES | nvidia-smi | none
    gpu_names: tuple[str, ...] = ()

    @property
    def node(self) -> Node:
        return Node(NODE_NAME, self.cpus, self.memory, len(self.gpu_ids))

    def to_json(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory_mb": self.memory, "gpus": list(self.gpu_ids),
                "gpu_source": self.gpu_source, "gpu_names": list(self.gpu_names)}


def _nvml_gpus() -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """GPU indices and names from NVML, or None where there is no driver (or no pynvml)."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver here: NVMLError_LibraryNotFound and friends
        return None
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = []
        for index in range(count):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else str(name))
        return tuple(str(i) for i in range(count)), tuple(names)
    finally:
        pynvml.nvmlShutdown()


def _number(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise SpecError([(name, text, "a number above 0")])
    return value


def probe() -> Machine:
    """This machine's capacity for the queue."""
    import psutil

    cpus = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                 else (os.cpu_count() or 1))
    memory = float(psutil.virtual_memory().total // 2**20)
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names: tuple[str, ...] = ()
    if listed is not None:
        gpus = tuple(g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1")
        source = "CUDA_VISIBLE_DEVICES"
    elif (found := _nvml_gpus()) is not None:
        gpus, names = found
        source = "nvml"
    else:
        from corral.backends.local.client import visible_gpus

        gpus = visible_gpus()
        source = "nvidia-smi" if gpus else "none"
    return Machine(_number("CORRAL_QUEUE_CPUS", cpus), _number("CORRAL_QUEUE_MEMORY", memory),
                   gpus, source, names)


def request_for(spec: JobSpec, machine: Machine) -> Request:
    """What a local job holds while it runs: its emulated nodes share this one machine.

    CPUs: ``resources.cpus`` per node, else one per rank (as Slurm's default), never more
    than the machine has (a job bigger than the machine still runs, alone). GPUs and
    memory: per node as given. A fraction of a GPU is for a one-node job.
    """
    res = spec.resources
    cpus = (res.cpus if res.cpus else float(spec.procs_per_node)) * spec.nodes
    gpus = float(res.gpus) * spec.nodes
    if 0 < res.gpus < 1 and spec.nodes > 1:
        raise SpecError([("resources.gpus", res.gpus,
                          "a fraction of a GPU for a one-node job; emulated nodes on one "
                          "machine take whole GPUs")])
    memory = float(res.memory_mb or 0) * spec.nodes
    return Request(nodes=1, cpus=min(cpus, machine.cpus), gpus=gpus, memory=memory)


def gpu_ids(placement: tuple[NodeShare, ...], machine: Machine) -> tuple[str, ...]:
    """The GPU ids a placement holds, in the order the job's nodes take them."""
    return tuple(machine.gpu_ids[index] for share in placement for index, _ in share.gpus
                 if index < len(machine.gpu_ids))
