"""Read flow runs back: ``Flow("TrainFlow").latest_run["train"].task.data.loss``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from corral.flow.datastore import ArtifactStore, ArtifactView, TaskArtifacts, TaskKey
from corral.flow.records import SUCCEEDED, FlowRecords, FlowRunNotFound, RunRecord, TaskRecord
from corral.store import Store, open_store


@dataclass(frozen=True)
class Task:
    run: Run
    record: TaskRecord

    @property
    def id(self) -> str:
        return self.record.task_id

    @property
    def state(self) -> str:
        return self.record.state

    @property
    def artifacts(self) -> TaskArtifacts:
        return self.run.datastore.load_task(TaskKey(self.run.record.flow, self.run.id,
                                                    self.record.step, self.record.task_id))

    @property
    def data(self) -> ArtifactView:
        """The artifacts as attributes, each loaded on first access."""
        return self.artifacts.data


@dataclass(frozen=True)
class Step:
    run: Run
    name: str

    @property
    def tasks(self) -> list[Task]:
        return [Task(self.run, r) for r in self.run.records.tasks(self.run.id, self.name)]

    @property
    def task(self) -> Task:
        """The step's task (the first one, for a foreach or a gang)."""
        tasks = self.tasks
        if not tasks:
            raise FlowRunNotFound(f"step {self.name} of run {self.run.id} has no task")
        return tasks[0]

    def __iter__(self) -> Iterator[Task]:
        return iter(self.tasks)


class Run:
    def __init__(self, records: FlowRecords, record: RunRecord) -> None:
        self.records = records
        self.record = record
        self.datastore = ArtifactStore(record.datastore)

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def successful(self) -> bool:
        return self.record.state == SUCCEEDED

    def __getitem__(self, step: str) -> Step:
        return Step(self, step)

    @property
    def steps(self) -> list[str]:
        return list(dict.fromkeys(t.step for t in self.records.tasks(self.id)))

    def __repr__(self) -> str:
        return f"Run({self.record.flow}/{self.id}, {self.record.state})"


class Flow:
    """The recorded runs of one flow, newest first."""

    def __init__(self, name: str, store: Store | None = None) -> None:
        self.name = name
        self.records = FlowRecords(store or open_store())

    @property
    def runs(self) -> list[Run]:
        return [Run(self.records, r) for r in self.records.runs(self.name)]

    @property
    def latest_run(self) -> Run:
        runs = self.runs
        if not runs:
            raise FlowRunNotFound(f"flow {self.name!r} has no recorded run")
        return runs[0]

    @property
    def latest_successful_run(self) -> Run:
        for run in self.runs:
            if run.successful:
                return run
        raise FlowRunNotFound(f"flow {self.name!r} has no successful run")

    def __getitem__(self, run_id: str) -> Run:
        return Run(self.records, self.records.run(run_id))
