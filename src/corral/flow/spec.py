"""What a flow is written with: ``FlowSpec``, ``@step``, ``Parameter`` and the placement
decorators. Nothing here runs anything: the runtime (:mod:`corral.flow.runtime`) reads the
class, and each task (:mod:`corral.flow.task`) calls one step method.

Decorators only attach data to the step function (``__corral_step__`` marks a step,
``__corral_placement__`` holds what ``@resources``, ``@corral``, ``@retry``, ``@timeout``
and ``@environment`` said), so their order does not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from corral.errors import SpecError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Placement:
    """Where and how one step runs (each field ``None``: the run's default)."""

    backend: str | None = None
    nodes: int | None = None
    procs_per_node: int | None = None
    launcher: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    resources: Mapping[str, Any] = field(default_factory=dict)
    retries: int = 0
    time_limit: float | str | None = None
    env: Mapping[str, str] = field(default_factory=dict)


def placement_of(fn: Callable[..., Any]) -> Placement:
    found: Placement = getattr(fn, "__corral_placement__", Placement())
    return found


def _with_placement(fn: F, **changes: Any) -> F:
    setattr(fn, "__corral_placement__", replace(placement_of(fn), **changes))  # noqa: B010
    return fn


def step(fn: F) -> F:
    """Mark a method as a step of the flow."""
    setattr(fn, "__corral_step__", True)  # noqa: B010
    return fn


def resources(*, cpus: float | None = None, memory: str | int | None = None,
              gpus: float | None = None) -> Callable[[F], F]:
    """What each node of the step needs (as ``corral run --cpus/--memory/--gpus``)."""
    given = {k: v for k, v in (("cpus", cpus), ("memory", memory), ("gpus", gpus))
             if v is not None}
    return lambda fn: _with_placement(fn, resources=given)


def corral(*, backend: str | None = None, nodes: int | None = None,
           procs_per_node: int | None = None, launcher: str | None = None,
           options: Mapping[str, Any] | None = None) -> Callable[[F], F]:
    """Where the step runs: a backend and its options (``-o`` of ``corral run``)."""
    return lambda fn: _with_placement(fn, backend=backend, nodes=nodes,
                                      procs_per_node=procs_per_node, launcher=launcher,
                                      options=dict(options or {}))


def retry(times: int = 3) -> Callable[[F], F]:
    """Run a failed task again, up to ``times`` more times."""
    if isinstance(times, bool) or not isinstance(times, int) or not 0 <= times <= 100:
        raise SpecError([("retry.times", times, "a whole number from 0 to 100")])
    return lambda fn: _with_placement(fn, retries=times)


def timeout(seconds: float | str) -> Callable[[F], F]:
    """The step's wall-clock limit (90, "30m", "1h30m"...)."""
    return lambda fn: _with_placement(fn, time_limit=seconds)


def environment(vars: Mapping[str, str]) -> Callable[[F], F]:
    """Variables set in the step's processes."""
    return lambda fn: _with_placement(fn, env=dict(vars))


_MISSING = object()


class Parameter:
    """A run's typed parameter, given as ``--name value`` or ``run(params={...})``.

    Its type is ``type`` if given, else the default's; a value from the command line is
    converted to it (``bool`` accepts true/false/1/0/yes/no)."""

    def __init__(self, name: str, default: Any = _MISSING, type: type | None = None,
                 help: str = "", required: bool = False) -> None:
        self.name = name
        self.default = None if default is _MISSING else default
        self.required = required or default is _MISSING
        self.type = type or (builtins_type(self.default) if self.default is not None else str)
        self.help = help

    def convert(self, value: Any) -> Any:
        if isinstance(value, self.type) and not (self.type is int and isinstance(value, bool)):
            return value
        text = str(value)
        try:
            if self.type is bool:
                lowered = text.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return self.type(text)
        except (TypeError, ValueError):
            raise SpecError([(f"--{self.name}", value, f"a {self.type.__name__}")]) from None

    def __repr__(self) -> str:
        return f"Parameter({self.name!r}, default={self.default!r})"


def builtins_type(value: Any) -> type:
    return type(value) if isinstance(value, bool | int | float | str) else str


def parameters_of(cls: type) -> dict[str, Parameter]:
    """The flow's parameters, by attribute name."""
    found = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, Parameter):
                found[attr] = value
    return found


@dataclass(frozen=True)
class Transition:
    """What ``self.next(...)`` asked for, checked against the graph by the runtime."""

    targets: tuple[str, ...]
    foreach: str | None = None
    num_parallel: int | None = None


class FlowSpec:
    """Subclass it; each ``@step`` method does some work, assigns artifacts to ``self``
    and ends with ``self.next(...)``; ``start`` comes first and ``end`` last."""

    def __init__(self) -> None:
        self._transition: Transition | None = None
        self._artifacts: dict[str, Any] = {}
        self._inputs: Any = None
        self.input: Any = None  # the item of a foreach task
        self.index: int | None = None  # its position

    # -- what a step calls ---------------------------------------------------------------

    def next(self, *targets: Callable[..., Any], foreach: str | None = None,
             num_parallel: int | None = None) -> None:
        names = tuple(getattr(t, "__name__", str(t)) for t in targets)
        if self._transition is not None:
            raise SpecError([("next", names, "called once per step, as its last statement")])
        if num_parallel is not None and (isinstance(num_parallel, bool) or not isinstance(
                num_parallel, int) or num_parallel < 1):
            raise SpecError([("num_parallel", num_parallel, "a whole number of nodes, >= 1")])
        self._transition = Transition(names, foreach, num_parallel)

    def merge_artifacts(self, inputs: Sequence[Any], exclude: Sequence[str] = ()) -> None:
        """In a join: take every artifact the inputs agree on (same value in all of them);
        one they disagree on must be set by the join itself or named in ``exclude``."""
        names: set[str] = set()
        for item in inputs:
            names.update(item.names())
        conflicts = []
        for name in sorted(names - set(exclude)):
            if name in self.__dict__ or name in ("input", "index"):
                continue
            present = [item for item in inputs if name in item.names()]
            refs = {item.ref(name).sha for item in present}
            if len(refs) == 1:
                setattr(self, name, present[0][name])
            else:
                conflicts.append(name)
        if conflicts:
            raise SpecError([("merge_artifacts", conflicts, "set them in the join or pass "
                              "exclude=[...]: the inputs hold different values")])

    # -- what the task runner sets and reads ----------------------------------------------

    def _inherit(self, artifacts: Any) -> None:
        """The parent task's artifacts: read lazily, by attribute, until the step assigns
        its own value (only assigned values are saved again)."""
        self.__dict__["_inherited"] = artifacts

    def __getattr__(self, name: str) -> Any:
        inherited = self.__dict__.get("_inherited")
        if inherited is not None and not name.startswith("_") and name in inherited.names():
            return inherited[name]
        raise AttributeError(f"{type(self).__name__} has no artifact or attribute {name!r}")

    def artifacts(self) -> Iterator[tuple[str, Any]]:
        """The attributes this task assigned (public names only)."""
        for name, value in vars(self).items():
            if not name.startswith("_") and name not in ("input", "index"):
                yield name, value

    @classmethod
    def step_functions(cls) -> dict[str, Callable[..., Any]]:
        return {name: member for name in dir(cls)
                if getattr(member := getattr(cls, name), "__corral_step__", False)}

