"""A fake engine for store tests (named a fake: it runs nothing). ``NullBackend`` accepts
every job at once with a made-up engine id, so that a test exercises corral's own submit
path (record SUBMITTING, call the engine, record PENDING) many times without starting
1,600 processes.

Run as ``python fake_engine.py COUNT`` to submit COUNT jobs and print their ids.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from corral.backends.base import Backend, Capabilities
from corral.logs import LogSource
from corral.rundir import new_job_id
from corral.spec import JobSpec
from corral.store import JobRecord, Observation

_counter = itertools.count()


@dataclass(frozen=True)
class NullPlan:
    job_id: str
    run_dir: str = ""

    def dry_run_text(self) -> str:
        return f"# nothing runs for {self.job_id}\n"


class NullBackend(Backend):
    name = "null"
    capabilities = Capabilities(gang=False, logs=False, follow=False, elastic=False,
                                queues=False, arrays=False)

    def render(self, spec: JobSpec, job_id: str | None = None) -> NullPlan:
        return NullPlan(job_id or new_job_id(spec.name))

    def _launch(self, spec: JobSpec, plan: object, record: JobRecord) -> str:
        return f"{os.getpid()}.{next(_counter)}"

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        return {}

    def _stop(self, record: JobRecord) -> None:
        return None

    def logs(self, job_id: str, rank: int | None = None,
             follow: bool = False) -> Iterator[tuple[LogSource, str]]:
        return iter(())


if __name__ == "__main__":
    backend = NullBackend()
    spec = JobSpec(name="many", entrypoint={"kind": "command", "argv": ["true"]})
    for _ in range(int(sys.argv[1])):
        print(backend.submit(spec).job_id, flush=True)
