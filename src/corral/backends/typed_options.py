"""What the backends' typed options share: refusing what no backend takes (NUL in a string),
pydantic's report as corral's errors naming ``<backend>.<field>``, and ``KEY=VALUE`` mappings
written the short way a command line carries them (``-o labels=team=vision``)."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from corral.errors import SpecError
from corral.spec import _nul_problems, spec_error_from


def key_value_pairs(value: Any, what: str, *, usage: str | None = None) -> dict[str, str]:
    """A mapping from a dict (keys and values made strings), or from ``KEY=VALUE`` strings (one
    or a list). An item without ``=``, or with nothing before it, is refused with
    ``"<item>: write <what> as KEY=VALUE"``, or ``"<item>: <usage>"`` where usage is given."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    items = [value] if isinstance(value, str) else list(value or ())
    found: dict[str, str] = {}
    for item in items:
        key, sep, val = str(item).partition("=")
        if not sep or not key:
            raise ValueError(f"{item!r}: " + (usage or f"write {what} as KEY=VALUE"))
        found[key] = val
    return found


class BackendOptions(BaseModel):
    """A backend's options: frozen, unknown keys refused, every problem a :class:`SpecError`
    naming ``<backend_name>.<field>``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    backend_name: ClassVar[str]  # the prefix of the fields errors name ("kubernetes")

    def __init__(self, **data: Any) -> None:
        prefix = f"{type(self).backend_name}."
        problems = _nul_problems(data, "")
        if problems:
            raise SpecError([(f"{prefix}{field}", value, why) for field, value, why in problems])
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise spec_error_from(exc, type(self), prefix=prefix) from None
