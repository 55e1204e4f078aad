"""Backends, by name. Each is imported only when asked for.

Built-in backends are listed here; others plug in through the entry-point group
``corral.backends`` (``toy = "corral_toy:ToyBackend"`` in a package's metadata). A backend
class may name its typed options class as ``options_type``: ``-o KEY=VALUE``, config
tables and job records are validated through it.

Importing this package is cheap: :mod:`corral.backends.base` (and with it the job spec and
pydantic) is imported when a backend is first asked for, not before, so that ``corral ps``
over finished jobs starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from corral.backends.base import Backend, Capabilities, JobRef
    from corral.store import JobRecord

ENTRY_POINT_GROUP = "corral.backends"
BUILTIN: dict[str, str] = {
    "local": "corral.backends.local:LocalBackend",
    "slurm": "corral.backends.slurm:SlurmBackend",
    "kubernetes": "corral.backends.kubernetes:KubernetesBackend",
    "aws-batch": "corral.backends.aws_batch:AwsBatchBackend",
    "sagemaker": "corral.backends.sagemaker:SageMakerBackend",
    "gcp-batch": "corral.backends.gcp_batch:GcpBatchBackend",
    "azure-batch": "corral.backends.azure_batch:AzureBatchBackend",
}


def available() -> dict[str, str]:
    """Every backend name -> "module:Class": built-in ones, then installed plug-ins."""
    from importlib.metadata import entry_points

    found = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(entry.name, entry.value)
    return found


def backend_class(name: str) -> type[Backend]:
    """The class of a backend by name; unknown names list the known ones."""
    from corral.backends.base import Backend
    from corral.errors import MissingDependency, SpecError

    target = BUILTIN.get(name) or available().get(name)
    if target is None:
        raise SpecError([("backend", name, "accepted: " + ", ".join(sorted(available())))])
    module, _, attribute = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attribute)
    except ImportError as exc:
        raise MissingDependency(exc.name or module, purpose=f"by the {name!r} backend") from None
    except AttributeError:
        raise SpecError([("backend", name, f"its entry point {target!r} names nothing")]) from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise SpecError([("backend", name, f"{target!r} is not a corral Backend class")])
    return cls


def get_backend(name: str, **options: Any) -> Backend:
    """A backend by name (``local``, ``slurm``, or a plug-in)."""
    return backend_class(name)(**options)


def backend_options(name: str, values: dict[str, Any]) -> Any:
    """A backend's typed options from plain values (validated there, errors name fields)."""
    from corral.errors import SpecError

    options_type = getattr(backend_class(name), "options_type", None)
    if options_type is None:
        if values:
            raise SpecError([(f"{name} option", sorted(values),
                              f"the {name} backend takes no options")])
        return None
    import dataclasses

    if dataclasses.is_dataclass(options_type):
        known = {f.name for f in dataclasses.fields(options_type)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SpecError([(f"{name} option", unknown[0] if len(unknown) == 1 else unknown,
                              f"unknown option; the {name} backend accepts: "
                              + ", ".join(sorted(known)))])
    return options_type(**values)


def list_options(name: str) -> frozenset[str]:
    """The names of a backend's list-valued options (``-o KEY=V`` once still gives a list)."""
    import typing

    options_type = getattr(backend_class(name), "options_type", None)
    fields = getattr(options_type, "model_fields", None) or {}
    return frozenset(key for key, info in fields.items()
                     if typing.get_origin(info.annotation) in (tuple, list))


def configured_backend(name: str, values: dict[str, Any]) -> Backend:
    """A backend with its options built from plain values (``-o``, corral.toml)."""
    options = backend_options(name, values)
    return get_backend(name) if options is None else get_backend(name, options=options)


def backend_for_job(record: JobRecord) -> Backend:
    """The backend a recorded job was submitted to, with the options it was submitted with."""
    return configured_backend(record.backend, record.options or {})


def __getattr__(name: str) -> Any:
    """``Backend``, ``Capabilities`` and ``JobRef``, imported on first use."""
    if name in ("Backend", "Capabilities", "JobRef"):
        return getattr(importlib.import_module("corral.backends.base"), name)
    raise AttributeError(f"module 'corral.backends' has no attribute {name!r}")


__all__ = ["BUILTIN", "Backend", "Capabilities", "JobRef", "available", "backend_class",
           "backend_for_job", "configured_backend", "get_backend", "list_options"]
