"""Backends, by name. Each is imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from corral.backends.base import Backend, Capabilities, JobRef

# name -> "module:class"; cluster backends plug in here.
BACKENDS: dict[str, str] = {
    "local": "corral.backends.local:LocalBackend",
    "slurm": "corral.backends.slurm:SlurmBackend",
}
# name -> "module:class" of its typed options (built from `-o KEY=VALUE` and job records)
OPTIONS: dict[str, str] = {
    "local": "corral.backends.local.render:LocalOptions",
    "slurm": "corral.backends.slurm.options:SlurmOptions",
}


def get_backend(name: str, **options: Any) -> Backend:
    """A backend by name (``local``, ...); unknown names list the known ones."""
    from corral.errors import SpecError

    target = BACKENDS.get(name)
    if target is None:
        raise SpecError([("backend", name, "accepted: " + ", ".join(sorted(BACKENDS)))])
    module, _, cls = target.partition(":")
    backend: Backend = getattr(importlib.import_module(module), cls)(**options)
    return backend


def backend_options(name: str, values: dict[str, Any]) -> Any:
    """A backend's typed options from plain values (validated there, errors name fields)."""
    from corral.errors import SpecError

    module, _, cls = OPTIONS[name].partition(":")
    options_type = getattr(importlib.import_module(module), cls)
    try:
        return options_type(**values)
    except TypeError as exc:  # a dataclass given an unknown key
        raise SpecError([(f"{name} option", sorted(values), str(exc))]) from None


def backend_for_job(record: dict[str, Any]) -> Backend:
    """The backend a recorded job was submitted to, with the options it was submitted with."""
    name = record.get("backend", "local")
    saved = record.get("options")
    if name != "local" and saved:
        return get_backend(name, options=backend_options(name, saved))
    return get_backend(name)


__all__ = ["BACKENDS", "Backend", "Capabilities", "JobRef", "get_backend"]
