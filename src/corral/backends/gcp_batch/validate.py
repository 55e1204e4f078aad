"""Check a CreateJobRequest before it is sent: GCP Batch's own message types accept every
field and enum value, and the fields Batch requires, or checks only when the job is
created or scheduled, are right.

Two layers. :func:`check_request` needs nothing but the request (the dry run runs it with
or without the SDK): required fields, GCP's naming rules, numbers in range, cross-field
rules. :func:`to_request` parses the request through the SDK's ``CreateJobRequest`` (an
unknown field or enum value is an error, not dropped) and returns the message to send.
Every problem is reported at once, each with its field path in the request.
"""

from __future__ import annotations

import json
import re
from types import ModuleType
from typing import Any

from corral.errors import MissingDependency, SpecError

from .options import LABEL_KEY, LABEL_VALUE, RESERVED_LABEL_PREFIX
from .render import JOB_ID

PARENT = re.compile(r"^projects/[^/\s]+/locations/[^/\s]+$")
DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
ALLOWED_LOCATION = re.compile(r"^(regions|zones)/[a-z0-9-]+$")
WHAT = "GCP Batch request"


def batch_v1() -> ModuleType:
    """The SDK's ``google.cloud.batch_v1``, imported on first use."""
    import importlib

    try:
        module = importlib.import_module("google.cloud.batch_v1")
    except ImportError:
        raise MissingDependency("google-cloud-batch", extra="gcp",
                                purpose="by the gcp-batch backend") from None
    return module


def _labels(where: str, labels: Any, problems: list[tuple[str, Any, str]]) -> None:
    if not isinstance(labels, dict):
        problems.append((where, labels, "a mapping of label keys to values"))
        return
    if len(labels) > 64:
        problems.append((where, len(labels), "at most 64 labels"))
    for key, value in labels.items():
        if not isinstance(key, str) or not LABEL_KEY.match(key) or key.startswith(
                RESERVED_LABEL_PREFIX):
            problems.append((f"{where}.{key}", key, "a label key is a lowercase letter, then "
                             "at most 62 lowercase letters, digits, - and _ (not goog...)"))
        if not isinstance(value, str) or not LABEL_VALUE.match(value):
            problems.append((f"{where}.{key}", value, "a label value is at most 63 lowercase "
                             "letters, digits, - and _"))


def _positive(where: str, value: Any, problems: list[tuple[str, Any, str]],
              least: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        problems.append((where, value, f"a whole number, at least {least}"))


def _task_group(group: Any, problems: list[tuple[str, Any, str]]) -> None:
    at = "job.taskGroups[0]"
    if not isinstance(group, dict):
        problems.append((at, group, "a task group object"))
        return
    count = group.get("taskCount", 1)
    _positive(f"{at}.taskCount", count, problems)
    parallelism = group.get("parallelism")
    _positive(f"{at}.parallelism", parallelism, problems)
    if isinstance(count, int) and isinstance(parallelism, int) and parallelism > count:
        problems.append((f"{at}.parallelism", parallelism,
                         f"at most taskCount ({count})"))
    _positive(f"{at}.taskCountPerNode", group.get("taskCountPerNode"), problems)
    task = group.get("taskSpec")
    if not isinstance(task, dict):
        problems.append((f"{at}.taskSpec", task, "required: what every task runs"))
        return
    runnables = task.get("runnables")
    if not isinstance(runnables, list) or not runnables:
        problems.append((f"{at}.taskSpec.runnables", runnables, "required: at least one "
                         "runnable"))
        runnables = []
    for i, runnable in enumerate(runnables):
        container = runnable.get("container") if isinstance(runnable, dict) else None
        if isinstance(container, dict) and not str(container.get("imageUri") or "").strip():
            problems.append((f"{at}.taskSpec.runnables[{i}].container.imageUri",
                             container.get("imageUri"), "required: the container image"))
    resources = task.get("computeResource") or {}
    _positive(f"{at}.taskSpec.computeResource.cpuMilli", resources.get("cpuMilli"), problems)
    _positive(f"{at}.taskSpec.computeResource.memoryMib", resources.get("memoryMib"),
              problems)
    retries = task.get("maxRetryCount", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
        problems.append((f"{at}.taskSpec.maxRetryCount", retries, "0 to 10"))
    duration = task.get("maxRunDuration")
    if duration is not None and (not isinstance(duration, str) or not DURATION.match(duration)
                                 or float(duration[:-1]) <= 0):
        problems.append((f"{at}.taskSpec.maxRunDuration", duration,
                         "a positive number of seconds, written like '3600s'"))


def _allocation(policy: Any, problems: list[tuple[str, Any, str]]) -> None:
    at = "job.allocationPolicy"
    if policy is None:
        return
    if not isinstance(policy, dict):
        problems.append((at, policy, "an allocation policy object"))
        return
    for i, instance in enumerate(policy.get("instances") or []):
        inner = (instance or {}).get("policy") or {}
        for j, accelerator in enumerate(inner.get("accelerators") or []):
            where = f"{at}.instances[{i}].policy.accelerators[{j}]"
            if not str((accelerator or {}).get("type") or "").strip():
                problems.append((f"{where}.type", None, "required: an accelerator type "
                                 "such as nvidia-l4"))
            _positive(f"{where}.count", (accelerator or {}).get("count"), problems)
    for i, location in enumerate((policy.get("location") or {}).get("allowedLocations") or []):
        if not isinstance(location, str) or not ALLOWED_LOCATION.match(location):
            problems.append((f"{at}.location.allowedLocations[{i}]", location,
                             "regions/REGION or zones/ZONE"))
    _labels(f"{at}.labels", policy.get("labels", {}), problems)


def check_request(request: dict[str, Any]) -> None:
    """The checks that need no SDK; raise SpecError naming every problem."""
    problems: list[tuple[str, Any, str]] = []
    where = request.get("parent")
    if not isinstance(where, str) or not PARENT.match(where):
        problems.append(("parent", where, "projects/PROJECT/locations/REGION"))
    name = request.get("jobId")
    if not isinstance(name, str) or not JOB_ID.match(name):
        problems.append(("jobId", name, "1 to 63 lowercase letters, digits and hyphens, "
                         "starting with a letter and not ending with a hyphen"))
    job = request.get("job")
    if not isinstance(job, dict):
        raise SpecError([*problems, ("job", job, "required: the job")], what=WHAT)
    groups = job.get("taskGroups")
    if not isinstance(groups, list) or len(groups) != 1:
        problems.append(("job.taskGroups", groups, "exactly one task group (GCP Batch "
                         "runs one per job)"))
    else:
        _task_group(groups[0], problems)
    _allocation(job.get("allocationPolicy"), problems)
    _labels("job.labels", job.get("labels", {}), problems)
    priority = job.get("priority", 0)
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 99:
        problems.append(("job.priority", priority, "0 to 99"))
    if problems:
        raise SpecError(problems, what=WHAT)


def to_request(request: dict[str, Any]) -> Any:
    """The request as the SDK's ``CreateJobRequest``, after :func:`check_request`; every
    field and enum value must be one the SDK's message types know."""
    check_request(request)
    sdk = batch_v1()
    from google.protobuf.json_format import ParseError

    try:
        return sdk.CreateJobRequest.from_json(json.dumps(request))
    except ParseError as exc:
        raise SpecError([parse_problem(str(exc))], what=WHAT) from None


def _enum_names(full_name: str) -> list[str]:
    from google.protobuf import descriptor_pool

    try:
        enum = descriptor_pool.Default().FindEnumTypeByName(full_name)
    except KeyError:
        return []
    return [v.name for v in enum.values if not v.name.endswith("_UNSPECIFIED")]


def parse_problem(message: str) -> tuple[str, Any, str]:
    """(field path, value, what is accepted) from protobuf's JSON parser's complaint."""
    chain = ".".join(re.findall(r"Failed to parse (\w+) field", message)) or "request"
    unknown = re.search(r'has no field named "([^"]+)" at "([^"]+)"', message)
    if unknown:
        name, at = unknown.groups()
        known = re.search(r'Available Fields\(except extensions\): "\[(.*?)\]"', message)
        accepted = "unknown field" + (
            "; accepted: " + known.group(1).replace("'", "") if known else "")
        return f"{at.removeprefix('CreateJobRequest.')}.{name}", name, accepted
    enum = re.search(r"Invalid enum value (\S+) for enum type (\S+) at (\S+?)\.*$",
                     message.strip())
    if enum:
        value, enum_type, at = enum.groups()
        names = _enum_names(enum_type)
        return (at.removeprefix("CreateJobRequest."), value,
                "accepted: " + ", ".join(names) if names else f"a value of {enum_type}")
    inner = message.rsplit("field: ", 1)[-1].strip().rstrip(".")
    return chain, None, inner


def check_with_sdk(request: dict[str, Any]) -> bool:
    """:func:`to_request`'s check where the SDK is installed; False where it is not."""
    try:
        batch_v1()
    except MissingDependency:
        check_request(request)
        return False
    to_request(request)
    return True
