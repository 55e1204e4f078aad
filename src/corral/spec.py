"""The job spec: one frozen, validated description of what to run, on any backend."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from corral.errors import SpecError
from corral.jobstate import JobState as JobState  # re-exported, as before

LauncherName = Literal["torchrun", "mpirun", "deepspeed", "tensorflow", "jax", "ray", "none"]
LAUNCHERS: tuple[str, ...] = (
    "torchrun", "mpirun", "deepspeed", "tensorflow", "jax", "ray", "none")

_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DURATION = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*d)?\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*"
                       r"(?:(\d+(?:\.\d+)?)\s*m(?:in)?)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_MEMORY_UNITS_MB = {"B": 1 / 2**20, "K": 1 / 1024, "M": 1.0, "G": 1024.0, "T": 1024.0**2}


MAX_DURATION = 366 * 86400.0
# What corral sets in every rank, on every backend: a user's value would be half honoured.
RESERVED_ENV = frozenset({"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK",
                          "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"})


def parse_duration(value: object) -> float:
    """Seconds from 90, "90", "90s", "1h30m", "2d", "01:30:00" or "30:00" (Slurm's M:S)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text):
            seconds = float(text)
        elif re.fullmatch(r"(\d+-)?\d+(:\d{1,2}){1,2}", text):
            days = 0
            if "-" in text:
                day_text, text = text.split("-", 1)
                days = int(day_text)
            parts = [int(p) for p in text.split(":")]
            if len(parts) == 2:
                parts = [0, *parts]
            if parts[2] > 59 or (":" in text.partition(":")[2] and parts[1] > 59):
                raise ValueError("minutes and seconds of HH:MM:SS or MM:SS go up to 59")
            seconds = days * 86400 + parts[0] * 3600 + parts[1] * 60 + parts[2]
        elif text and (m := _DURATION.match(text)) and any(m.groups()):
            d, h, mi, s = (float(g) if g else 0.0 for g in m.groups())
            seconds = d * 86400 + h * 3600 + mi * 60 + s
        else:
            raise ValueError("accepted: seconds (90), '90s', '1h30m', '2d', 'HH:MM:SS'")
    else:
        raise ValueError("accepted: seconds (90), '90s', '1h30m', '2d', 'HH:MM:SS'")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError("must be a finite number of seconds, more than 0")
    if seconds > MAX_DURATION:
        raise ValueError(f"must be at most {MAX_DURATION // 86400:.0f} days")
    return seconds


def parse_memory_mb(value: object) -> int:
    """MiB from 4096, "4096", "4G", "512MiB", "1.5T" (binary units)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not an amount of memory")
    if isinstance(value, int | float):
        mb = float(value)
    elif isinstance(value, str) and (m := _MEMORY.match(value)):
        unit = (m.group(2) or "M").upper()
        mb = float(m.group(1)) * _MEMORY_UNITS_MB["B" if unit == "B" else unit[0]]
    else:
        raise ValueError("accepted: MiB as a number (4096) or a string like '4G', '512M'")
    if mb < 1:
        raise ValueError("must be at least 1 MiB")
    return int(mb)


class _Frozen(BaseModel):
    # defer_build: a model's validator is built when it first validates, not at import, so
    # that importing this module (every backend does) costs no schema building.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)


class Script(_Frozen):
    """Run a Python file: ``python PATH ARGS``."""

    kind: Literal["script"] = "script"
    path: str = Field(min_length=1)


class Module(_Frozen):
    """Run a Python module: ``python -m MODULE ARGS``."""

    kind: Literal["module"] = "module"
    module: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class Command(_Frozen):
    """Run an executable with arguments, no shell: ``ARGV[0] ARGV[1:] ARGS``."""

    kind: Literal["command"] = "command"
    argv: tuple[str, ...] = Field(min_length=1)


class Function(_Frozen):
    """Call a Python function on every rank; its return values come back to the caller."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)
    kind: Literal["function"] = "function"
    fn: Callable[..., Any]
    call_args: tuple[Any, ...] = ()
    call_kwargs: Mapping[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return getattr(self.fn, "__qualname__", None) or repr(self.fn)


Entrypoint = Annotated[Script | Module | Command | Function, Field(discriminator="kind")]


class Resources(_Frozen):
    """What one node needs. ``None`` means: the backend's default."""

    cpus: float | None = Field(default=None, gt=0, le=100_000, allow_inf_nan=False)
    memory_mb: int | None = Field(default=None, validation_alias="memory")
    gpus: float = Field(default=0, ge=0, le=64, allow_inf_nan=False)
    """Whole GPUs per node, or a fraction of one GPU (``0.5``: two such jobs share one GPU
    in the local queue; cluster backends take whole GPUs only)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: float) -> float:
        if value > 1 and value != int(value):
            raise ValueError("a fraction of one GPU (0 < gpus < 1) or a whole number of GPUs")
        return int(value) if value == int(value) else value

    def whole_gpus(self, backend: str) -> int:
        """The GPUs per node as a whole number, for a backend that cannot share a GPU."""
        if self.gpus != int(self.gpus):
            raise SpecError([("resources.gpus", self.gpus,
                              f"whole GPUs on the {backend} backend; fractions of a GPU are "
                              "shared by the local queue only")])
        return int(self.gpus)

    @field_validator("memory_mb", mode="before")
    @classmethod
    def _memory(cls, value: object) -> int | None:
        return None if value is None else parse_memory_mb(value)


class JobSpec(_Frozen):
    """Everything needed to run a job; the same object serves every backend.

    Build it in Python, from the CLI, or from a YAML/TOML job file. Invalid input raises
    :class:`corral.errors.SpecError`, which names each bad field, the value given and what
    is accepted.
    """

    name: str = Field(default="job", min_length=1, max_length=200)
    entrypoint: Entrypoint
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    nodes: int = Field(default=1, ge=1, le=4096)
    procs_per_node: int = Field(default=1, ge=1, le=1024)
    launcher: LauncherName = "none"
    launcher_args: tuple[str, ...] = ()
    mpi: Literal["openmpi", "mpich"] = "openmpi"
    resources: Resources = Field(default_factory=Resources)
    time_limit: float | None = None
    max_restarts: int = Field(default=0, ge=0, le=1000)
    preload: tuple[str, ...] | None = None
    # Backend-neutral fields that cluster backends use.
    image: str | None = None
    queue: str | None = None
    priority: int = Field(default=0, ge=-1000, le=1000)

    def __init__(self, **data: Any) -> None:
        problems = _nul_problems(data)
        if problems:
            raise SpecError(problems)
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise spec_error_from(exc, JobSpec) from None

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @field_validator("args", "launcher_args", mode="before")
    @classmethod
    def _args(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError("give a list of strings, e.g. ['--lr', '0.1'], not one string")
        return value

    @field_validator("env")
    @classmethod
    def _env(cls, value: Mapping[str, str]) -> dict[str, str]:
        for key in value:
            if not _ENV_KEY.match(key):
                raise ValueError(
                    f"key {key!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)"
                )
            if key in RESERVED_ENV or key.startswith("CORRAL_"):
                raise ValueError(
                    f"{key} is set by corral for every rank (rank, world and rendezvous "
                    "variables, CORRAL_*); set nodes/procs_per_node instead, or read "
                    "corral.env() in the program")
        return dict(value)

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time_limit(cls, value: object) -> float | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.max_restarts and self.launcher != "torchrun":
            raise ValueError(f"max_restarts needs launcher 'torchrun' (its elastic agent "
                             f"restarts ranks); launcher {self.launcher!r} cannot restart")
        if self.mpi != "openmpi" and self.launcher != "mpirun":
            raise ValueError(f"mpi={self.mpi!r} needs launcher 'mpirun', not {self.launcher!r}")
        if isinstance(self.entrypoint, Function) and \
                self.launcher not in ("none", "torchrun", "ray"):
            raise ValueError(f"a Python function runs with launcher 'none', 'torchrun' or "
                             f"'ray', not {self.launcher!r}")
        if self.launcher == "ray" and self.procs_per_node != 1:
            raise ValueError(
                f"procs_per_node={self.procs_per_node} with launcher 'ray': Ray starts its own "
                "worker processes, so each node has one (its Ray node); give a node's CPUs "
                "with resources.cpus (--cpus)")
        return self

    def replace(self, **changes: Any) -> JobSpec:
        """A copy with some fields changed, validated again."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        data.update(changes)
        return JobSpec(**data)


NUL_REFUSED = ("must not contain NUL bytes: no program can receive one, and corral marks its "
               "own run-time references with them in rendered scripts")


def _nul_problems(value: object, path: str = "") -> list[tuple[str, Any, str]]:
    """Every string in the spec's input (a function's own arguments aside) that holds NUL."""
    if isinstance(value, str):
        return [(path or "spec", value[:80], NUL_REFUSED)] if "\x00" in value else []
    if isinstance(value, Function):
        return []  # pickled as they are, never rendered
    if isinstance(value, BaseModel):
        value = {name: getattr(value, name) for name in type(value).model_fields}
    if isinstance(value, Mapping):
        if value.get("kind") == "function":
            return []
        found = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            found += _nul_problems(str(key), where) + _nul_problems(item, where)
        return found
    if isinstance(value, list | tuple):
        return [p for i, item in enumerate(value) for p in _nul_problems(item, f"{path}[{i}]")]
    return []


def _model_at(model: type[BaseModel], path: list[str]) -> type[BaseModel]:
    """The (nested) model that holds the field at ``path``."""
    for part in path:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return model


def spec_error_from(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> SpecError:
    """Turn pydantic's report into field / value / accepted triples."""
    problems: list[tuple[str, Any, str]] = []
    for error in exc.errors(include_url=False):
        loc = [str(p) for p in error["loc"] if p not in ("script", "module", "command", "function")]
        field = prefix + (".".join(loc) or "spec")
        accepted = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "literal_error" and field == "launcher":
            accepted = "accepted: " + ", ".join(LAUNCHERS)
        if error["type"] == "extra_forbidden":
            known = _model_at(model, loc[:-1]).model_fields
            accepted = "unknown field; accepted: " + ", ".join(sorted(known))
        problems.append((field, error.get("input"), accepted))
    return SpecError(problems)
