"""Every Azure Batch request body checked before it is sent (and before a dry run prints it).

The schema: the Batch service's REST specification (Azure/azure-rest-api-specs,
``specification/batch/data-plane``, api-version 2024-02-01.19.0) is not kept in this
repository: nothing fetched from the internet is committed here, and the specification cannot
be fetched where corral's tests run. The ``azure-batch`` SDK (14.2.0, MIT License; an optional
extra of corral, ``pip install 'corral[azure]'``) is generated from that specification by
AutoRest, and carries its schema in every model class: ``_attribute_map`` gives each property's
wire name and type (``str``, ``int``, ``bool``, ``duration``, a list ``[T]``, a map ``{T}``,
another model, or an enum whose values are the enum class's), ``_validation`` what is required,
read-only, or bounded (``minimum``/``maximum``). This module builds the check from them at
run time, so it is the schema of the SDK installed:

* a property the model does not have (a misspelt or unknown key) is refused: the service
  would ignore it or fail, and the SDK would silently drop it;
* a required property missing (or null), a read-only one given, a value of the wrong JSON
  type, an ``int`` outside int32 or the model's bounds, an enum value that is not one of the
  enum's, a ``duration`` that is not ISO 8601: refused, naming the field's path.

Then corral's own checks of rules that the specification writes only in prose (its
descriptions), which the SDK does not carry: ids of at most 64 letters, digits, ``-`` and
``_``; display names of at most 1024 characters; priorities in -1000..1000; at least one
instance; unique environment variable names; non-empty command lines. Last, the body is read
into the SDK's model and written back: it must come back the same, so what a dry run prints is
what the SDK sends.

What still passes and the service may refuse: anything that depends on the account (a pool
that does not exist, lacks inter-node communication, or has fewer nodes than the task asks
for; quotas; an image the pool cannot pull), a request over the service's size limit, and any
rule written only in the specification's prose that is not listed above.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from typing import Any

from corral.errors import MissingDependency, SpecError

INT32 = (-(2**31), 2**31 - 1)
_DURATION = re.compile(r"^-?P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?W)?(\d+(\.\d+)?D)?"
                       r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$")
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
Problem = tuple[str, Any, str]


def sdk_models() -> Any:
    """``azure.batch.models``, or the install command."""
    try:
        import azure.batch.models as models
    except ImportError:
        raise MissingDependency("azure-batch", extra="azure",
                                purpose="by the azure-batch backend") from None
    return models


def _type_problems(models: Any, type_name: str, value: Any, where: str) -> list[Problem]:
    if value is None:
        return []
    if type_name.startswith("[") and type_name.endswith("]"):
        if not isinstance(value, list):
            return [(where, value, "a list")]
        return [p for i, item in enumerate(value)
                for p in _type_problems(models, type_name[1:-1], item, f"{where}[{i}]")]
    if type_name.startswith("{") and type_name.endswith("}"):
        if not isinstance(value, dict):
            return [(where, value, "an object")]
        return [p for key, item in value.items()
                for p in _type_problems(models, type_name[1:-1], item, f"{where}.{key}")]
    if type_name == "str":
        return [] if isinstance(value, str) else [(where, value, "a string")]
    if type_name in ("int", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [(where, value, "a whole number")]
        low, high = INT32 if type_name == "int" else (-(2**63), 2**63 - 1)
        return [] if low <= value <= high else [(where, value, f"from {low} to {high}")]
    if type_name == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [(where, value, "a number")]
    if type_name == "bool":
        return [] if isinstance(value, bool) else [(where, value, "true or false")]
    if type_name == "duration":
        ok = isinstance(value, str) and _DURATION.match(value) is not None
        return [] if ok else [(where, value, "an ISO 8601 duration such as PT1H30M")]
    if type_name in ("iso-8601", "rfc-1123", "date", "bytearray", "base64", "unix-time"):
        return [] if isinstance(value, str | int) else [(where, value, f"a {type_name} value")]
    if type_name == "object":
        return []
    cls = getattr(models, type_name, None)
    if isinstance(cls, type) and issubclass(cls, enum.Enum):
        accepted = [str(member.value) for member in cls]
        if value in accepted:
            return []
        return [(where, value, "accepted: " + ", ".join(accepted))]
    if isinstance(cls, type) and hasattr(cls, "_attribute_map"):
        return body_problems(cls, value, where)
    return [(where, value, f"the installed SDK has no type {type_name!r}")]


def body_problems(cls: type, body: Any, where: str) -> list[Problem]:
    """A JSON value checked against one SDK model class (recursively)."""
    models = sdk_models()
    if not isinstance(body, dict):
        return [(where, body, f"an object ({cls.__name__})")]
    attributes: dict[str, dict[str, Any]] = getattr(cls, "_attribute_map", {})
    rules: dict[str, dict[str, Any]] = getattr(cls, "_validation", {}) or {}
    by_key = {info["key"]: (name, info["type"]) for name, info in attributes.items()}
    problems: list[Problem] = []
    for key in body:
        if key not in by_key:
            problems.append((f"{where}.{key}", body[key], f"{cls.__name__} has no such "
                             "property; accepted: " + ", ".join(sorted(by_key))))
    for key, (name, type_name) in by_key.items():
        rule = rules.get(name, {})
        path = f"{where}.{key}"
        value = body.get(key)
        if rule.get("required") and value is None:
            problems.append((path, value, f"required by {cls.__name__}"))
            continue
        if rule.get("readonly") and key in body:
            problems.append((path, value, "read-only: set by the service, not sent"))
            continue
        found = _type_problems(models, type_name, value, path)
        problems += found
        if value is None or found:
            continue
        if "minimum" in rule and value < rule["minimum"]:
            problems.append((path, value, f"at least {rule['minimum']}"))
        if "maximum" in rule and value > rule["maximum"]:
            problems.append((path, value, f"at most {rule['maximum']}"))
    return problems


def _corral_rules(what: str, body: dict[str, Any]) -> list[Problem]:
    """Rules the specification states in prose only (see the module's docstring)."""
    problems: list[Problem] = []
    if "id" in body and isinstance(body["id"], str) and not _ID.match(body["id"]):
        problems.append((f"{what}.id", body["id"], "at most 64 letters, digits, - and _"))
    name = body.get("displayName")
    if isinstance(name, str) and len(name) > 1024:
        problems.append((f"{what}.displayName", name[:40] + "...", "at most 1024 characters"))
    priority = body.get("priority")
    if isinstance(priority, int) and not -1000 <= priority <= 1000:
        problems.append((f"{what}.priority", priority, "from -1000 to 1000"))
    command = body.get("commandLine")
    if isinstance(command, str) and not command.strip():
        problems.append((f"{what}.commandLine", command, "a command to run"))
    multi = body.get("multiInstanceSettings")
    if isinstance(multi, dict):
        count = multi.get("numberOfInstances")
        if isinstance(count, int) and count < 1:
            problems.append((f"{what}.multiInstanceSettings.numberOfInstances", count,
                             "at least 1"))
        coordination = multi.get("coordinationCommandLine")
        if isinstance(coordination, str) and not coordination.strip():
            problems.append((f"{what}.multiInstanceSettings.coordinationCommandLine",
                             coordination, "a command to run"))
    names = [str(e.get("name")) for e in body.get("environmentSettings") or []
             if isinstance(e, dict)]
    for name in names:
        if isinstance(name, str) and not _ENV_NAME.match(name):
            problems.append((f"{what}.environmentSettings", name, "variable names are "
                             "letters, digits and _, not starting with a digit"))
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        problems.append((f"{what}.environmentSettings", twice, "each variable once"))
    return problems


def check_request(model: str, body: dict[str, Any], what: str) -> Any:
    """The SDK's model of a valid body; SpecError naming every bad field otherwise."""
    models = sdk_models()
    cls = getattr(models, model)
    problems = body_problems(cls, body, what) + _corral_rules(what, body)
    if problems:
        raise SpecError(problems, what="Azure Batch request")
    instance = cls.deserialize(body)
    sent = instance.serialize()
    if sent != body:  # the SDK would send something else than what was checked and shown
        raise SpecError([(what, sorted(_differences(body, sent)), "the azure-batch SDK "
                          "writes these fields differently from corral's request; the SDK "
                          "installed may not be the one corral was tested with (14.2)")],
                        what="Azure Batch request")
    return instance


def _differences(ours: Any, sent: Any, where: str = "") -> Iterable[str]:
    if isinstance(ours, dict) and isinstance(sent, dict):
        for key in set(ours) | set(sent):
            yield from _differences(ours.get(key), sent.get(key), f"{where}.{key}")
    elif isinstance(ours, list) and isinstance(sent, list) and len(ours) == len(sent):
        for i, (a, b) in enumerate(zip(ours, sent, strict=True)):
            yield from _differences(a, b, f"{where}[{i}]")
    elif ours != sent:
        yield where or "."


def check_plan(requests: Iterable[Any]) -> dict[str, Any]:
    """Every request of a plan (corral.backends.azure_batch.render.Request), as SDK models
    by what they are (job, task, job patch)."""
    return {r.what: check_request(r.model, r.body, r.what) for r in requests}
