"""The local backend: real processes on this machine; N emulated nodes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from corral.backends.local.client import LocalBackend
from corral.backends.local.options import LocalOptions

if TYPE_CHECKING:
    from corral.backends.local.render import LocalPlan

__all__ = ["LocalBackend", "LocalOptions", "LocalPlan"]


def __getattr__(name: str) -> Any:
    if name == "LocalPlan":  # the renderer imports the job spec: only when asked for
        from corral.backends.local.render import LocalPlan

        return LocalPlan
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
