"""AWS requests checked before they are sent, against botocore's own service model.

botocore's ``ParamValidator`` checks names, types, required members and minimums; the model
also says each value's enum, pattern and maximum, which it leaves to the service. Both are
checked here, so that a request the service would reject for those reasons is refused
before anything is created, naming the field (``nodeProperties.nodeRangeProperties[0]
.container.image``), the value and what is accepted. What the model cannot say (one field's
bounds that depend on another) is checked by each backend's own cross-field checks.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from corral.errors import SpecError


@cache
def _operation(service: str, operation: str) -> Any:
    from botocore.session import get_session

    return get_session().get_service_model(service).operation_model(operation)


# Java-style classes in some models' patterns, which Python's re does not read: letters and
# digits become \w, separators \s (a little more permissive than the service).
_JAVA_CLASSES = {r"\p{L}": r"\w", r"\p{N}": r"\w", r"\p{Alnum}": r"\w", r"\p{Z}": r"\s",
                 r"\p{Punct}": r"!-/:-@\[-`{-~"}


@cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    """The model's pattern for Python's re (None when it cannot be read: not checked)."""
    for java, python in _JAVA_CLASSES.items():
        pattern = pattern.replace(java, python)
    try:
        return re.compile(pattern, flags=re.DOTALL)
    except re.error:
        return None


def _shown(value: Any) -> Any:
    text = repr(value)
    return value if len(text) <= 80 else text[:77] + "..."


def _constraints(shape: Any, value: Any, path: str, found: list[tuple[str, Any, str]]) -> None:
    meta = shape.metadata
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        for name, member in shape.members.items():
            if name in value:
                _constraints(member, value[name], f"{path}.{name}" if path else name, found)
    elif kind == "list" and isinstance(value, list):
        if "max" in meta and len(value) > meta["max"]:
            found.append((path, f"{len(value)} items", f"at most {meta['max']} items"))
        for i, item in enumerate(value):
            _constraints(shape.member, item, f"{path}[{i}]", found)
    elif kind == "map" and isinstance(value, dict):
        if "max" in meta and len(value) > meta["max"]:
            found.append((path, f"{len(value)} entries", f"at most {meta['max']} entries"))
        for key, item in value.items():
            _constraints(shape.key, key, f"{path} key", found)
            _constraints(shape.value, item, f"{path}[{key!r}]", found)
    elif kind == "string" and isinstance(value, str):
        if shape.enum and value not in shape.enum:
            found.append((path, value, "one of " + ", ".join(shape.enum)))
        if "max" in meta and len(value) > meta["max"]:
            found.append((path, _shown(value), f"at most {meta['max']} characters "
                          f"(it has {len(value)})"))
        pattern = meta.get("pattern")
        compiled = _compiled(pattern) if pattern else None
        if compiled is not None and not compiled.fullmatch(value):
            found.append((path, _shown(value), f"a value matching {pattern}"))
    elif (kind in ("integer", "long", "float", "double") and isinstance(value, (int, float))
          and "max" in meta and value > meta["max"]):
        found.append((path, value, f"at most {meta['max']}"))


def problems(service: str, operation: str, params: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """Every way ``params`` breaks ``service``'s model for ``operation``: (field, value, what
    is accepted)."""
    from botocore.validate import ParamValidator

    model = _operation(service, operation)
    found: list[tuple[str, Any, str]] = []
    report = ParamValidator().validate(params, model.input_shape)
    if report.has_errors():
        for line in report.generate_report().splitlines():
            found.append((f"{operation} request", "-", line.strip()))
    _constraints(model.input_shape, params, "", found)
    return found


def check_request(service: str, operation: str, params: dict[str, Any],
                  more: list[tuple[str, Any, str]] | None = None) -> None:
    """Raise a SpecError listing every problem of the request (and ``more`` of the caller's
    own cross-field checks); nothing is sent when there is one."""
    found = problems(service, operation, params) + list(more or [])
    if found:
        raise SpecError([(f"{service} {operation}: {field}", value, accepted)
                         for field, value, accepted in found])
