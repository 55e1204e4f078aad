"""corral: run the same training code as a batch job or a multi-node gang, anywhere.

The public surface is re-exported lazily, so that ``corral.env()`` inside a rank imports
nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "env": "corral.environment",
    "log": "corral.metrics",
    "JobEnvironment": "corral.environment",
    "JobSpec": "corral.spec",
    "Resources": "corral.spec",
    "Script": "corral.spec",
    "Module": "corral.spec",
    "Command": "corral.spec",
    "Function": "corral.spec",
    "JobState": "corral.jobstate",
    "JobStatus": "corral.status",
    "run": "corral.api",
    "submit": "corral.api",
    "submit_array": "corral.api",
    "attach": "corral.api",
    "distributed": "corral.api",
    "JobHandle": "corral.api",
    "get_backend": "corral.backends",
    "load_job_file": "corral.jobfile",
    "CorralError": "corral.errors",
    "SpecError": "corral.errors",
    "JobFailed": "corral.errors",
    "RankError": "corral.errors",
}

__all__ = [
    "Command",
    "CorralError",
    "Function",
    "JobEnvironment",
    "JobFailed",
    "JobHandle",
    "JobSpec",
    "JobState",
    "JobStatus",
    "Module",
    "RankError",
    "Resources",
    "Script",
    "SpecError",
    "attach",
    "distributed",
    "env",
    "get_backend",
    "load_job_file",
    "log",
    "run",
    "submit",
    "submit_array",
]

if TYPE_CHECKING:
    from corral.api import JobHandle, attach, distributed, run, submit, submit_array
    from corral.backends import get_backend
    from corral.environment import JobEnvironment, env
    from corral.errors import CorralError, JobFailed, RankError, SpecError
    from corral.jobfile import load_job_file
    from corral.jobstate import JobState
    from corral.metrics import log
    from corral.spec import Command, Function, JobSpec, Module, Resources, Script
    from corral.status import JobStatus


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'corral' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
