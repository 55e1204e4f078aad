"""How the local backend starts and stops ranks (typed; ``-o KEY=VALUE`` on the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class LocalOptions:
    """How the local backend starts ranks."""

    fork: bool = True  # preload once per node and fork ranks where that is safe
    grace_seconds: float = 1.0  # SIGTERM -> SIGKILL delay when stopping ranks

    def __post_init__(self) -> None:
        from corral.errors import SpecError

        if not isinstance(self.fork, bool):
            raise SpecError([("local.fork", self.fork, "accepted: true or false")])
        grace = self.grace_seconds
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not (
                0 <= grace <= MAX_GRACE_SECONDS):  # NaN fails this too
            raise SpecError([("local.grace_seconds", grace,
                              f"accepted: a number of seconds from 0 to {MAX_GRACE_SECONDS}")])
