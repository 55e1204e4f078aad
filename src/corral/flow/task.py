"""One task of a flow, inside its corral job: ``python -m corral.flow.task ...``.

It imports the user's flow file, gives the step its inputs (the parent task's artifacts,
loaded lazily; a join's list of inputs; a foreach item), runs the step method, then saves
what the step assigned and where it goes next. In a gang step every node of the job runs
this with its own node index and saves its own task.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from corral.errors import CorralError
from corral.flow.current import Parallel, current
from corral.flow.datastore import ArtifactStore, ArtifactView, TaskArtifacts, TaskKey
from corral.flow.spec import FlowSpec, parameters_of, placement_of

MODULE_NAME = "__corral_flow__"  # the user's flow file, imported under one name everywhere


class FlowLoadError(CorralError):
    """The flow file or its FlowSpec class cannot be loaded."""


def load_flow_class(file: str, name: str | None = None) -> type[FlowSpec]:
    """The FlowSpec subclass defined in ``file`` (the one named ``name``, or the only one)."""
    path = Path(file).resolve()
    module = sys.modules.get(MODULE_NAME)
    if module is None or getattr(module, "__file__", None) != str(path):
        spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
        if spec is None or spec.loader is None:
            raise FlowLoadError(f"{file}: not a Python file that can be imported")
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except FileNotFoundError:
            raise FlowLoadError(f"{file}: no such file") from None
        import cloudpickle

        # Classes and functions of the flow file are saved by value in artifacts, so that
        # a notebook (or any process that never imported the file) can load them.
        cloudpickle.register_pickle_by_value(module)
    flows = [v for v in vars(module).values() if isinstance(v, type)
             and issubclass(v, FlowSpec) and v is not FlowSpec
             and v.__module__ == MODULE_NAME]
    if name is not None:
        flows = [f for f in flows if f.__name__ == name]
    if len(flows) != 1:
        found = ", ".join(f.__name__ for f in flows) or "none"
        raise FlowLoadError(f"{file}: expected exactly one FlowSpec subclass"
                            f"{f' named {name}' if name else ''}, found {found}")
    return flows[0]


class Input(ArtifactView):
    """One input of a join: its artifacts as attributes (``inp.loss``), by name
    (``inp["loss"]``), and which task it came from (``inp.step``, ``inp.task_id``)."""

    __slots__ = ()

    @property
    def step(self) -> str:
        return self._artifacts.key.step

    @property
    def task_id(self) -> str:
        return self._artifacts.key.task_id

    def __getitem__(self, name: str) -> Any:
        return self._artifacts[name]

    def names(self) -> list[str]:
        return sorted(self._artifacts.names())

    def ref(self, name: str) -> Any:
        return self._artifacts.ref(name)


class Inputs(Sequence[Input]):
    """A join's inputs, in order; ``inputs.a`` is the input from step ``a`` (a branch)."""

    def __init__(self, items: list[Input]) -> None:
        self._items = items

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[Input]:
        return iter(self._items)

    def __getattr__(self, step: str) -> Input:
        for item in self._items:
            if item.step == step:
                return item
        raise AttributeError(f"no input from step {step!r}")


def run_task(args: argparse.Namespace) -> int:
    cls = load_flow_class(args.file, args.flow)
    store = ArtifactStore(args.datastore)
    task_id = args.task
    if args.gang:
        parallel = Parallel.of_this_node()
        task_id = f"{args.task}.{parallel.node_index}"
        current._set(parallel=parallel)
    key = TaskKey(cls.__name__, args.run, args.step, task_id)
    params = json.loads(args.params or "{}")
    placement = placement_of(getattr(cls, args.step))
    current._set(flow_name=cls.__name__, run_id=args.run, step_name=args.step,
                 task_id=task_id, retry_count=args.retry, parameters=params,
                 procs_per_node=placement.procs_per_node, launcher=placement.launcher)
    flow = cls()
    for name, parameter in parameters_of(cls).items():
        setattr(flow, name, params.get(parameter.name, parameter.default))
    inputs = [(step, task, store.load_task(TaskKey(cls.__name__, args.run, step, task)))
              for step, task in json.loads(args.inputs or "[]")]
    method = getattr(flow, args.step)
    inherited: TaskArtifacts | None = None
    if args.join:
        method(Inputs([Input(a) for _, _, a in inputs]))
    else:
        if inputs:
            inherited = inputs[0][2]
            flow._inherit(inherited)
        if args.foreach:
            parent_step, parent_task, var, index = json.loads(args.foreach)
            items = store.load_task(TaskKey(cls.__name__, args.run, parent_step,
                                            parent_task))[var]
            flow.input, flow.index = list(items)[index], index
        method()
    transition = flow._transition
    if transition is None and args.step != "end":
        raise CorralError(f"step {args.step} ended without calling self.next(...)")
    artifacts = dict(flow.artifacts())
    for name in parameters_of(cls):
        artifacts.setdefault(name, getattr(flow, name))
    keep = {} if inherited is None else {
        name: inherited.ref(name) for name in inherited.names() if name not in artifacts}
    meta: dict[str, Any] = {"targets": [], "foreach_count": None, "num_parallel": None}
    if transition is not None:
        meta["targets"] = list(transition.targets)
        meta["num_parallel"] = transition.num_parallel
        if transition.foreach is not None:
            meta["foreach"] = transition.foreach
            meta["foreach_count"] = len(list(getattr(flow, transition.foreach)))
    store.write_meta(key, "transition", meta)  # first: a saved task always has one
    store.save_task(key, artifacts, inherited=keep)
    return 0


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m corral.flow.task")
    parser.add_argument("--file", required=True)
    parser.add_argument("--flow", required=True)
    parser.add_argument("--run", required=True)
    parser.add_argument("--step", required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--datastore", required=True)
    parser.add_argument("--inputs", default="[]")
    parser.add_argument("--foreach", default=None)
    parser.add_argument("--params", default="{}")
    parser.add_argument("--join", action="store_true")
    parser.add_argument("--gang", action="store_true")
    parser.add_argument("--retry", type=int, default=0)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_task(args)


if __name__ == "__main__":
    sys.exit(main())
