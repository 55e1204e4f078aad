"""Backends, by name. Each is imported only when asked for."""

from __future__ import annotations

import importlib
from typing import Any

from corral.backends.base import Backend, Capabilities, JobRef

# name -> "module:class"; cluster backends plug in here.
BACKENDS: dict[str, str] = {
    "local": "corral.backends.local:LocalBackend",
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


__all__ = ["BACKENDS", "Backend", "Capabilities", "JobRef", "get_backend"]
