"""Run a flow: each task a corral job, in graph order, at most ``max_workers`` at once.

The runner lives in the ``corral flow run`` process. It submits the ``start`` task, and
whenever a task's job succeeds it reads where the step went (``self.next``) and queues
what follows:

- a linear step: one task; a branch: one per target; a ``foreach``: one per item;
- a gang (``num_parallel=N``): ONE job of N nodes, each node a task of its own, so any
  failing rank fails the whole step (all or nothing, with corral's failure summary);
- a join: once every task of its split has arrived.

Task ids are paths through the splits (``0``, ``0.3`` for item 3 of a foreach, ``0.a`` for
branch ``a``, ``0.1`` for node 1 of a gang), the same in every run of the flow, so a
resumed run finds the tasks it can reuse: every step not downstream of the step it
resumes from is cloned from the original run (its artifacts reused, nothing rerun).
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from corral.errors import CorralError, SpecError
from corral.flow.datastore import ArtifactStore, TaskKey, default_url
from corral.flow.graph import FlowGraph
from corral.flow.records import (
    CLONED,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    FlowRecords,
    RunRecord,
)
from corral.flow.spec import FlowSpec, placement_of
from corral.jobstate import JobState
from corral.store import Store

POLL_SECONDS = 0.1


def new_run_id(flow: str) -> str:
    return f"{flow.lower()}-{time.strftime('%y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


@dataclass(frozen=True)
class Frame:
    """An open split: the task that split, how many tasks its join waits for."""

    step: str
    task_id: str
    count: int


@dataclass(frozen=True)
class Task:
    """A task to run (or, for a gang, the job of all its node tasks)."""

    step: str
    task_id: str
    inputs: tuple[tuple[str, str], ...] = ()
    foreach: tuple[str, str, str, int] | None = None  # parent step, task, attribute, index
    gang: int | None = None  # nodes of a gang step
    stack: tuple[Frame, ...] = ()
    attempt: int = 1

    def node_tasks(self) -> list[str]:
        """The task ids this job saves: one, or one per node of a gang."""
        if self.gang is None:
            return [self.task_id]
        return [f"{self.task_id}.{node}" for node in range(self.gang)]


@dataclass
class FlowRun:
    """One run of a flow (or a resume of an earlier one)."""

    file: str
    cls: type[FlowSpec]
    graph: FlowGraph
    params: Mapping[str, Any]
    store: Store
    backend: str = "local"
    options: Mapping[str, Any] = field(default_factory=dict)
    max_workers: int = 16
    datastore: str = field(default_factory=default_url)
    origin: RunRecord | None = None
    rerun: frozenset[str] = frozenset()  # with an origin: the steps run again
    say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)

    def __post_init__(self) -> None:
        self.records = FlowRecords(self.store)
        self.artifacts = ArtifactStore(self.datastore)
        self.run_id = new_run_id(self.cls.__name__)
        self.queue: list[Task] = []
        self.running: dict[str, tuple[Task, Any]] = {}
        self.arrivals: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.failure: str | None = None
        self._backends: dict[str, Any] = {}

    # -- the loop --------------------------------------------------------------------------

    def check_placements(self) -> None:
        """``@corral(nodes=N)`` sizes nothing by itself: a gang's nodes come from
        ``num_parallel``; on a gang step it must agree, elsewhere it must be 1."""
        for name in self.graph.nodes:
            nodes = placement_of(getattr(self.cls, name)).nodes
            if nodes not in (None, 1) and not self.graph.is_gang(name):
                raise SpecError([(f"{name}: @corral(nodes=...)", nodes,
                                  "1 here; a multi-node step is a gang: reach it with "
                                  "self.next(self.<step>, num_parallel=N)")])

    def run(self) -> RunRecord:
        self.check_placements()
        flow = self.cls.__name__
        self.records.create_run(self.run_id, flow, self.file, self.params, self.datastore,
                                origin=self.origin.id if self.origin else None)
        self.say(f"corral: flow {flow} run {self.run_id}"
                 + (f" (resuming {self.origin.id})" if self.origin else ""))
        self.queue.append(Task("start", "0"))
        try:
            while True:
                while self.queue and len(self.running) < self.max_workers and not self.failure:
                    self._submit(self.queue.pop(0))
                if not self.running and (self.failure or not self.queue):
                    break
                self._poll()
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            for job_id, (_, backend) in list(self.running.items()):
                backend.cancel(job_id)
            self.records.finish_run(self.run_id, FAILED, "interrupted")
            raise
        if self.failure:
            self.records.finish_run(self.run_id, FAILED, self.failure)
        else:
            self.records.finish_run(self.run_id, SUCCEEDED)
        return self.records.run(self.run_id)

    # -- submitting ------------------------------------------------------------------------

    def _backend(self, name: str, options: Mapping[str, Any]) -> Any:
        from corral.backends import configured_backend
        from corral.config import backend_defaults

        key = json.dumps([name, dict(options)], sort_keys=True, default=str)
        if key not in self._backends:
            self._backends[key] = configured_backend(
                name, {**backend_defaults(name), **dict(options)})
        return self._backends[key]

    def _submit(self, task: Task) -> None:
        if self._clone(task):
            self._succeeded(task)
            return
        from corral.spec import JobSpec

        placement = placement_of(getattr(self.cls, task.step))
        node = self.graph.nodes[task.step]
        args = ["--file", self.file, "--flow", self.cls.__name__, "--run", self.run_id,
                "--step", task.step, "--task", task.task_id, "--datastore", self.datastore,
                "--inputs", json.dumps([list(i) for i in task.inputs]),
                "--params", json.dumps(dict(self.params), default=str),
                "--retry", str(task.attempt - 1)]
        if task.foreach is not None:
            args += ["--foreach", json.dumps(list(task.foreach))]
        if node.is_join:
            args.append("--join")
        if task.gang is not None:
            args.append("--gang")
        try:
            spec = JobSpec(
                name=f"{self.cls.__name__}-{task.step}".lower(),
                entrypoint={"kind": "module", "module": "corral.flow.task"}, args=args,
                nodes=task.gang or 1, workdir=str(Path(self.file).parent),
                resources=dict(placement.resources), env=dict(placement.env),
                time_limit=placement.time_limit)
            backend = self._backend(placement.backend or self.backend,
                                    {**self.options, **placement.options})
            job_id = backend.submit(spec).job_id
        except CorralError as exc:
            self._failed(task, f"step {task.step} could not be submitted: {exc}")
            return
        self.running[job_id] = (task, backend)
        for task_id in task.node_tasks():
            self.records.set_task(self.run_id, task.step, task_id, PENDING, job_id=job_id,
                                  attempt=task.attempt)
        self.say(f"corral: {task.step}/{task.task_id}"
                 + (f" ({task.gang} nodes)" if task.gang else "")
                 + f" -> job {job_id}" + (f" (attempt {task.attempt})" if task.attempt > 1
                                          else ""))

    def _clone(self, task: Task) -> bool:
        """In a resumed run: reuse the original run's task if its step is not rerun."""
        if self.origin is None or task.step in self.rerun:
            return False
        flow = self.cls.__name__
        for task_id in task.node_tasks():
            source = TaskKey(flow, self.origin.id, task.step, task_id)
            if not self.artifacts.has_task(source):
                return False
        for task_id in task.node_tasks():
            self.artifacts.copy_task(TaskKey(flow, self.origin.id, task.step, task_id),
                                     TaskKey(flow, self.run_id, task.step, task_id))
            self.records.set_task(self.run_id, task.step, task_id, CLONED,
                                  cloned_from=self.origin.id)
        self.say(f"corral: {task.step}/{task.task_id} reused from run {self.origin.id}")
        return True

    # -- watching --------------------------------------------------------------------------

    def _poll(self) -> None:
        for job_id, (task, backend) in list(self.running.items()):
            status = backend.describe(job_id)
            if status.state is JobState.RUNNING:
                for task_id in task.node_tasks():
                    self.records.set_task(self.run_id, task.step, task_id, RUNNING)
            if not status.state.is_terminal():
                continue
            del self.running[job_id]
            if status.state is JobState.SUCCEEDED:
                for task_id in task.node_tasks():
                    self.records.set_task(self.run_id, task.step, task_id, SUCCEEDED)
                self._succeeded(task)
                continue
            placement = placement_of(getattr(self.cls, task.step))
            summary = status.summary().splitlines()[0]
            if task.attempt <= placement.retries:
                self.say(f"corral: {task.step}/{task.task_id} failed ({summary}); retrying")
                self.queue.insert(0, replace(task, attempt=task.attempt + 1))
                continue
            self._failed(task, f"step {task.step} (task {task.task_id}, job {job_id}) "
                               f"failed: {status.summary()}")

    def _failed(self, task: Task, reason: str) -> None:
        for task_id in task.node_tasks():
            self.records.set_task(self.run_id, task.step, task_id, FAILED, reason=reason)
        self.failure = self.failure or reason
        self.say(f"corral: {reason}")

    # -- what follows a task ---------------------------------------------------------------

    def _succeeded(self, task: Task) -> None:
        flow = self.cls.__name__
        for task_id in task.node_tasks():
            meta = self.artifacts.read_meta(TaskKey(flow, self.run_id, task.step, task_id),
                                            "transition")
            self._follow(task, task_id, meta)

    def _follow(self, task: Task, task_id: str, meta: Mapping[str, Any]) -> None:
        targets: list[str] = list(meta.get("targets") or [])
        if not targets:
            return  # the end
        here = (task.step, task_id)
        if task.gang is not None:  # each node of a gang goes to the join on its own
            self._arrive(targets[0], here, task.stack)
            return
        if meta.get("foreach_count") is not None:
            count = int(meta["foreach_count"])
            if count == 0:
                self._failed(task, f"step {task.step}: foreach over an empty "
                                   f"{meta.get('foreach')!r}; nothing to fan out to")
                return
            frame = Frame(task.step, task_id, count)
            for index in range(count):
                self.queue.append(Task(targets[0], f"{task_id}.{index}", (here,),
                                       (task.step, task_id, str(meta["foreach"]), index),
                                       stack=(*task.stack, frame)))
            return
        if meta.get("num_parallel") is not None:
            nodes = int(meta["num_parallel"])
            wanted = placement_of(getattr(self.cls, targets[0])).nodes
            if wanted is not None and wanted != nodes:
                self._failed(task, f"step {targets[0]}: @corral(nodes={wanted}) but "
                                   f"num_parallel={nodes} in step {task.step}")
                return
            frame = Frame(task.step, task_id, nodes)
            self.queue.append(Task(targets[0], task_id, (here,), gang=nodes,
                                   stack=(*task.stack, frame)))
            return
        if len(targets) > 1:
            frame = Frame(task.step, task_id, len(targets))
            for target in targets:
                self.queue.append(Task(target, f"{task_id}.{target}", (here,),
                                       stack=(*task.stack, frame)))
            return
        target = targets[0]
        if self.graph.nodes[target].is_join:
            self._arrive(target, here, task.stack)
        else:
            self.queue.append(Task(target, task_id, (here,), stack=task.stack))

    def _arrive(self, join: str, source: tuple[str, str], stack: tuple[Frame, ...]) -> None:
        """A task reached a join; once its whole split has, the join runs."""
        if not stack:
            self.failure = self.failure or f"step {join} joins nothing that was split"
            return
        frame = stack[-1]
        key = (join, frame.task_id)
        arrived = self.arrivals.setdefault(key, [])
        arrived.append(source)
        if len(arrived) == frame.count:
            ordered = tuple(sorted(arrived, key=lambda s: _order(s[1])))
            self.queue.append(Task(join, frame.task_id, ordered, stack=stack[:-1]))


def _order(task_id: str) -> tuple[Any, ...]:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in task_id.split("."))


def rerun_from(graph: FlowGraph, step: str) -> frozenset[str]:
    """``step`` and every step downstream of it."""
    if step not in graph.nodes:
        raise SpecError([("from", step, "a step of the flow: " + ", ".join(graph.nodes))])
    seen, todo = set(), [step]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.nodes[name].next)
    return frozenset(seen)


def first_failed_step(records: FlowRecords, run: RunRecord, graph: FlowGraph) -> str:
    """Where a resume starts by default: the first step (in graph order) with a task that
    did not finish: it failed, or the run was lost while it ran."""
    unfinished = {t.step for t in records.tasks(run.id) if t.state not in (SUCCEEDED, CLONED)}
    for name in graph.nodes:
        if name in unfinished:
            return name
    raise SpecError([("from", None, f"a step to resume from: every task of run {run.id} "
                      "finished (give --from STEP)")])
