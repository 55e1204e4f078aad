"""How the local backend starts and stops ranks (typed; ``-o KEY=VALUE`` on the CLI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LocalOptions:
    """How the local backend starts ranks."""

    fork: bool = True  # preload once per node and fork ranks where that is safe
    grace_seconds: float = 1.0  # SIGTERM -> SIGKILL delay when stopping ranks

    def __post_init__(self) -> None:
        from corral.errors import SpecError

        if not isinstance(self.fork, bool):
            raise SpecError([("local.fork", self.fork, "accepted: true or false")])
        if isinstance(self.grace_seconds, bool) or not isinstance(
            self.grace_seconds, int | float
        ) or self.grace_seconds < 0:
            raise SpecError([("local.grace_seconds", self.grace_seconds,
                              "accepted: a number of seconds >= 0")])
