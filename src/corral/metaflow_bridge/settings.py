"""What a ``@corral`` step asks for, and the corral job that gives it (pure; no Metaflow)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from corral.errors import SpecError
from corral.spec import JobSpec, Module, Resources, parse_duration, spec_error_from

NODE_MODULE = "corral.metaflow_bridge.node"
# @resources names -> corral's resource fields (used when @corral does not say)
RESOURCE_NAMES = {"cpu": "cpus", "memory": "memory", "gpu": "gpus"}


@dataclass(frozen=True)
class StepSettings:
    backend: str = "local"
    options: Mapping[str, Any] = field(default_factory=dict)
    resources: Resources = field(default_factory=Resources)
    time_limit: float | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def step_settings(attributes: Mapping[str, Any], decorators: Sequence[Any]) -> StepSettings:
    """Validate ``@corral``'s attributes, taking resources from ``@resources`` where unset."""
    from corral.backends import backend_class, backend_options

    given = {}
    for deco in decorators:
        if getattr(deco, "name", None) == "resources":
            given = {RESOURCE_NAMES[k]: deco.attributes.get(k) for k in RESOURCE_NAMES}
    for name, corral_name in RESOURCE_NAMES.items():
        if attributes.get(name) is not None:
            given[corral_name] = attributes[name]
    backend = str(attributes.get("backend") or "local")
    backend_class(backend)  # an unknown backend names the known ones
    options = dict(attributes.get("options") or {})
    backend_options(backend, options)
    env = attributes.get("env") or {}
    if not isinstance(env, Mapping):
        raise SpecError([("env", env, "a dict of variable names to values")],
                        what="@corral decorator")
    try:
        resources = Resources.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        raise spec_error_from(exc, Resources) from None
    time_limit = attributes.get("time_limit")
    try:
        limit = None if time_limit is None else parse_duration(time_limit)
    except ValueError as exc:
        raise SpecError([("time_limit", time_limit, str(exc))], what="@corral decorator") \
            from None
    return StepSettings(backend=backend, options=options, resources=resources, time_limit=limit,
                        env={str(k): str(v) for k, v in env.items()})


def gang_spec(settings: StepSettings, *, flow: str, step: str, step_argv: Sequence[str],
              nodes: int, workdir: str) -> JobSpec:
    """One corral job whose node N runs the gang's task N (see :mod:`..node`)."""
    return JobSpec(
        name=f"mf-{flow}-{step}".lower()[:200],
        entrypoint=Module(module=NODE_MODULE),
        args=(json.dumps(list(step_argv)),),
        nodes=nodes, procs_per_node=1, launcher="none", workdir=workdir,
        resources=settings.resources, time_limit=settings.time_limit, env=dict(settings.env),
    )
