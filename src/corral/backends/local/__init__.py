"""The local backend: real processes on this machine; N emulated nodes."""

from corral.backends.local.client import LocalBackend
from corral.backends.local.render import LocalOptions, LocalPlan

__all__ = ["LocalBackend", "LocalOptions", "LocalPlan"]
