"""The Azure Batch backend: add the job and its multi-instance task, watch them, read the
nodes' output, terminate the job. Everything goes through the official SDK (``azure-batch``,
an optional extra imported on first use: ``pip install 'corral[azure]'``).

One look per job and poll interval: ``job.get`` and ``task.get`` (plus ``task.list_subtasks``
while it runs). Once the task has ended, every node's output is read once: the primary's
``stdout.txt`` (node 0's agent ran in the foreground) and each subtask's ``corral-node.log``
(a worker's agent ran in the background, see :mod:`.render`) through the compute node's file
API, to name the rank that failed first. What describe can see of a worker without its log:
the subtask's state, exit code and failure info, which speak of its coordination command (it
returned 0 at the start) and of Azure's own trouble (a node lost), not of corral's agent.
What those answers mean is :mod:`.observe`'s (pure); the SDK's client and its errors are
:mod:`.sdk`'s.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from corral.backends.base import (
    Capabilities,
    ConfiguredBackend,
    JobRef,
    Plan,
    check_workdir,
)
from corral.errors import BackendError, CorralError, SubmitError
from corral.logs import LogSource
from corral.nodelog import first_exit, parse_pod_log, results
from corral.rundir import new_job_id
from corral.spec import Function, JobSpec
from corral.status import Failure
from corral.store import JobRecord, Observation, Store

from . import observe
from .observe import NodeLog
from .options import AzureBatchOptions
from .render import (
    JOB_ID_METADATA,
    NODE_LOG,
    SERVICE,
    TASK_ID,
    AzurePlan,
    azure_job_id,
    render,
)
from .sdk import error_code, http_status, make_client, sdk_error
from .validate import check_plan

STOPPED_ALREADY = {"JobNotFound", "JobCompleted", "JobBeingTerminated", "JobBeingDeleted",
                   "JobTerminating"}
T = TypeVar("T")


class AzureBatchBackend(ConfiguredBackend[AzureBatchOptions]):
    name = SERVICE
    options_type = AzureBatchOptions
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=False, arrays=False)
    cancel_grace = 60.0

    def __init__(self, options: AzureBatchOptions | None = None, client: Any = None,
                 store: Store | None = None) -> None:
        super().__init__(store)
        self.options = options or AzureBatchOptions()
        self._client = client

    # -- the SDK --------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The SDK's BatchServiceClient, made on first use (shared key credentials)."""
        if self._client is None:
            self._client = make_client(self.options)
        return self._client

    def _call(self, doing: str, call: Callable[[], T], error: type[BackendError] = BackendError
              ) -> T:
        """One SDK call; its failures become corral's errors, saying what to do."""
        try:
            return call()
        except CorralError:
            raise
        except Exception as exc:
            raise sdk_error(exc, doing, self.options.resolved_url() or "?", error) from None

    def _get(self, doing: str, call: Callable[[], T], error: type[BackendError] = BackendError
             ) -> T | None:
        """A read whose 404 means: not there (None)."""
        try:
            return call()
        except CorralError:
            raise
        except Exception as exc:
            if http_status(exc) == 404:
                return None
            raise sdk_error(exc, doing, self.options.resolved_url() or "?", error) from None

    def options_data(self) -> dict[str, Any]:
        return {**self.options.public_data(), "account_url": self.options.resolved_url(),
                "account_name": self.options.resolved_name()}

    def engine_address(self) -> dict[str, Any]:
        return {"account_url": self.options.resolved_url(),
                "account_name": self.options.resolved_name()}

    # -- render / submit ------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None) -> AzurePlan:
        """The plan's requests, each checked against the SDK's schema (see .validate)."""
        job_id = job_id or new_job_id(spec.name)
        plan = render(spec, job_id=job_id, options=self.options,
                      local_workdir=os.path.abspath(spec.workdir or os.getcwd()),
                      account_url=self.options.resolved_url())
        check_plan(plan.requests())
        return plan

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        assert isinstance(plan, AzurePlan)
        return {"azure_job_id": plan.azure_job_id, "pool": plan.pool, "task": plan.task_id}

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        azure_plan = self.render(spec) if plan is None else plan
        if not isinstance(azure_plan, AzurePlan):
            raise SubmitError(f"the azure-batch backend cannot submit a "
                              f"{type(azure_plan).__name__}")
        if azure_plan.package:
            check_workdir(spec, azure_plan.workdir)
        self.client  # noqa: B018 - an account that is not set up is refused before the record
        for warning in azure_plan.warnings:
            sys.stderr.write(f"corral: warning: {warning}\n")
        return super().submit(spec, azure_plan)

    def _ship(self, spec: JobSpec, plan: AzurePlan) -> None:
        """The code package and a function's payload, into object storage."""
        from corral.codepackage import pack, upload

        if plan.package_url:
            data, skipped = pack(plan.workdir, exclude=self.options.package_exclude,
                                 max_kb=self.options.package_max_mb * 1024,
                                 where=f"package_max_mb={self.options.package_max_mb:g} allows")
            for name, why in skipped:
                sys.stderr.write(f"corral: warning: not shipped with the job: {name} ({why})\n")
            upload(data, plan.package_url)
        if plan.payload_url and isinstance(spec.entrypoint, Function):
            from corral.runtime.call import dump_payload

            entry = spec.entrypoint
            upload(dump_payload(entry.fn, entry.call_args, dict(entry.call_kwargs)),
                   plan.payload_url)

    @staticmethod
    def _unship(plan: AzurePlan) -> None:
        """What _ship uploaded for a submission that failed (best effort)."""
        urls = [u for u in (plan.package_url, plan.payload_url) if u]
        if not urls:
            return
        try:
            import fsspec
        except ImportError:
            return
        for url in urls:
            try:
                filesystem, path = fsspec.core.url_to_fs(url)
                if filesystem.exists(path):
                    filesystem.rm(path)
            except Exception:  # left for the store's own clean-up; the failure is reported
                pass

    def _check_pool(self, plan: AzurePlan, nodes: int) -> None:
        """What a multi-instance task needs of its pool, asked before anything is added."""
        pool = self._get(f"read pool {plan.pool}", lambda: self.client.pool.get(plan.pool),
                         SubmitError)
        if pool is None:
            raise SubmitError(f"pool {plan.pool!r} is not in Azure Batch account "
                              f"{self.options.resolved_name()}: give an existing pool with "
                              "-o pool=ID (az batch pool list); nothing was submitted")
        if not pool.enable_inter_node_communication:
            raise SubmitError(f"pool {plan.pool!r} has inter-node communication disabled, and "
                              "a multi-instance task needs it (enableInterNodeCommunication is "
                              "set when a pool is created); nothing was submitted")
        if (pool.task_slots_per_node or 1) > 1:
            raise SubmitError(f"pool {plan.pool!r} runs {pool.task_slots_per_node} tasks per "
                              "node; a multi-instance task needs a pool with taskSlotsPerNode "
                              "1; nothing was submitted")
        vm = pool.virtual_machine_configuration
        if "containerSettings" in plan.task and not (vm and vm.container_configuration):
            image = plan.task["containerSettings"]["imageName"]
            raise SubmitError(f"the task runs in image {image} but pool {plan.pool!r} has no "
                              "container configuration: use a container-enabled pool, or "
                              "leave the image out; nothing was submitted")
        most = max(pool.target_dedicated_nodes or 0, pool.current_dedicated_nodes or 0) + max(
            pool.target_low_priority_nodes or 0, pool.current_low_priority_nodes or 0)
        if most < nodes and not pool.enable_auto_scale:
            sys.stderr.write(f"corral: warning: pool {plan.pool} has {most} node(s) and the "
                             f"job needs {nodes}: it waits until the pool is resized\n")

    def _ours(self, azure_id: str, job_id: str) -> bool:
        job = self._get(f"read job {azure_id}", lambda: self.client.job.get(azure_id))
        return job is not None and any(bool(m.name == JOB_ID_METADATA and m.value == job_id)
                                       for m in job.metadata or [])

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        assert isinstance(plan, AzurePlan)
        models = check_plan(plan.requests())
        client = self.client
        self._check_pool(plan, spec.nodes)
        azure_id = plan.azure_job_id
        added = False
        try:
            self._ship(spec, plan)
            try:
                client.job.add(models["job"])
            except Exception as exc:  # our own add, retried by the SDK after a lost answer
                if error_code(exc) != "JobExists" or not self._ours(azure_id, plan.job_id):
                    raise
            added = True
            try:
                client.task.add(azure_id, models["task"])
            except Exception as exc:
                if error_code(exc) != "TaskExists":
                    raise
            client.job.patch(azure_id, models["job patch"])
        except BaseException as exc:
            if added:  # nothing half-submitted stays: the job goes, its task with it
                try:
                    client.job.delete(azure_id)
                except Exception:  # the first error is the one to report
                    pass
            self._unship(plan)
            if isinstance(exc, Exception) and not isinstance(exc, CorralError):
                raise sdk_error(exc, f"add job {azure_id}", self.options.resolved_url() or "?",
                                SubmitError) from None
            raise
        return azure_id

    # -- describe -------------------------------------------------------------------------

    def _azure_id(self, record: JobRecord) -> str:
        return record.engine_id or azure_job_id(record.id)

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        return {r.id: self._observe(r) for r in records if r.engine_id}

    def _observe(self, record: JobRecord) -> Observation:
        azure_id = self._azure_id(record)
        client = self.client
        job = self._get(f"read job {azure_id}", lambda: client.job.get(azure_id))
        if job is None:
            return observe.job_deleted(azure_id)
        task = self._get(f"read task {azure_id}/{TASK_ID}",
                         lambda: client.task.get(azure_id, TASK_ID))
        if task is None:
            return observe.task_deleted(azure_id, job)
        if observe.queued(task):
            return observe.waiting(record, job, task)
        subtasks = list(self._call(f"list the subtasks of {azure_id}", lambda: (
            client.task.list_subtasks(azure_id, TASK_ID).value or [])))
        found = observe.without_output(record, job, task, subtasks)
        if found is not None:
            return found
        logs = self._node_logs(azure_id, task, subtasks)
        failure = None
        if observe.task_failed(task) or observe.any_exit(logs):
            failure = self._attribute(record, azure_id, task, subtasks, logs)
        return observe.ended(record, job, task, subtasks, logs, failure)

    def _attribute(self, record: JobRecord, azure_id: str, task: Any, subtasks: list[Any],
                   logs: list[NodeLog]) -> Failure:
        """The rank that failed first, from the nodes' own news of it; else the subtask or
        the primary that Azure says failed, with the last lines it wrote (corral's agent may
        not have started: a missing corral or Python says so on stderr)."""
        failure = observe.failure_from_output(record, logs)
        if failure is None:
            failure = observe.failure_of_subtask(subtasks, logs)
        if failure is not None:
            return failure
        lines = observe.primary_lines(logs)
        if first_exit(lines, 0) is None:  # the agent did not say why: its stderr may
            lines = lines + self._file(lambda options: self.client.file.get_from_task(
                azure_id, TASK_ID, "stderr.txt", file_get_from_task_options=options), 0,
                "FileGetFromTaskOptions").decode("utf-8", "replace").splitlines()
        return observe.failure_of_primary(record, task, lines)

    # -- the nodes' output ----------------------------------------------------------------

    def _sources(self, azure_id: str, task: Any, subtasks: Sequence[Any]
                 ) -> list[tuple[str, str, int, Callable[[int], bytes]]]:
        """(key, Azure node, default corral node, read from offset) for every node's output:
        the primary's stdout.txt, then each subtask's agent log."""
        client = self.client
        sources: list[tuple[str, str, int, Callable[[int], bytes]]] = []
        if task.node_info:
            sources.append(("primary", task.node_info.node_id, 0, lambda offset: self._file(
                lambda options: client.file.get_from_task(
                    azure_id, TASK_ID, "stdout.txt", file_get_from_task_options=options),
                offset, "FileGetFromTaskOptions")))
        for sub in subtasks:
            info = sub.node_info
            if not info or not info.node_id:
                continue
            path = f"{(info.task_root_directory or '').rstrip('/')}/wd/{NODE_LOG}"

            def read(offset: int, pool: str = info.pool_id, node: str = info.node_id,
                     path: str = path) -> bytes:
                return self._file(lambda options: client.file.get_from_compute_node(
                    pool, node, path, file_get_from_compute_node_options=options), offset,
                    "FileGetFromComputeNodeOptions")

            sources.append((f"subtask-{sub.id}", info.node_id, sub.id, read))
        return sources

    def _file(self, get: Callable[[Any], Any], offset: int, options_model: str) -> bytes:
        """A file's bytes from ``offset`` on; nothing while it is not there (yet)."""
        from .validate import sdk_models

        options = getattr(sdk_models(), options_model)(ocp_range=f"bytes={offset}-") if (
            offset) else None
        try:
            return b"".join(get(options))
        except CorralError:
            raise
        except Exception as exc:
            if http_status(exc) in (404, 409, 416):
                return b""
            raise sdk_error(exc, "read a node's output", self.options.resolved_url() or "?"
                            ) from None

    def _node_logs(self, azure_id: str, task: Any, subtasks: Sequence[Any]) -> list[NodeLog]:
        logs = []
        for _, azure_node, default, read in self._sources(azure_id, task, subtasks):
            lines = read(0).decode("utf-8", "replace").splitlines()
            logs.append(NodeLog(observe.place(lines, default), azure_node, lines))
        return logs

    def _task_now(self, record: JobRecord) -> tuple[Any, list[Any]] | None:
        azure_id = self._azure_id(record)
        task = self._get(f"read task {azure_id}/{TASK_ID}",
                         lambda: self.client.task.get(azure_id, TASK_ID))
        if task is None or observe.queued(task):
            return None
        subtasks = self._call(f"list the subtasks of {azure_id}", lambda: list(
            self.client.task.list_subtasks(azure_id, TASK_ID).value or []))
        return task, subtasks

    def logs(self, job_id: str, rank: int | None = None, follow: bool = False
             ) -> Iterator[tuple[LogSource, str]]:
        """Every rank's lines (or one rank's), from every node's output, labelled."""
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        return self._lines(record, rank, follow)

    def _lines(self, record: JobRecord, rank: int | None, follow: bool
               ) -> Iterator[tuple[LogSource, str]]:
        def wanted(source: LogSource) -> bool:
            return rank is None or (source.kind == "rank" and source.number == rank)

        offsets: dict[str, int] = {}
        places: dict[str, int] = {}
        while True:
            done = not follow or self.describe(record.id).state.is_terminal()
            found = self._task_now(record)
            if found is not None:
                task, subtasks = found
                for key, _, default, read in self._sources(self._azure_id(record), task,
                                                           subtasks):
                    data = read(offsets.get(key, 0))
                    end = len(data) if done else data.rfind(b"\n") + 1  # whole lines only
                    if end <= 0:
                        continue
                    offsets[key] = offsets.get(key, 0) + end
                    lines = data[:end].decode("utf-8", "replace").splitlines()
                    places.setdefault(key, observe.place(lines, default))
                    for source, text in parse_pod_log(lines, places[key]):
                        if wanted(source):
                            yield source, text
            if done:
                return
            time.sleep(max(self.poll_interval, 0.2))

    def read_result(self, job_id: str, rank: int) -> bytes | None:
        """A distributed function's result: the ``[result N]`` line of its node's output."""
        record = self.store.get(job_id)
        found = self._task_now(record)
        if found is None:
            return None
        for log in self._node_logs(self._azure_id(record), *found):
            value = results(log.lines).get(rank)
            if value is not None:
                return value
        return None

    # -- adopt, discard, cancel -----------------------------------------------------------

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        """Jobs of these corral ids that Azure has with their task (a job without its task
        is what a submission that died half-way left: discard_lost deletes it)."""
        found = {}
        for record in records:
            azure_id = azure_job_id(record.id)
            if self._ours(azure_id, record.id) and self._has_task(azure_id):
                found[record.id] = azure_id
        return found

    def _has_task(self, azure_id: str) -> bool:
        return self._get(f"read task {azure_id}/{TASK_ID}",
                         lambda: self.client.task.get(azure_id, TASK_ID)) is not None

    def discard_lost(self, record: JobRecord) -> None:
        azure_id = azure_job_id(record.id)
        if self._ours(azure_id, record.id):
            self._call(f"delete job {azure_id}", lambda: self.client.job.delete(azure_id))

    def _stop(self, record: JobRecord) -> None:
        """Terminate the job: Azure ends its task on every node. A job that has ended, is
        ending or is gone is fine (a cancel is idempotent)."""
        azure_id = self._azure_id(record)
        try:
            self.client.job.terminate(azure_id, terminate_reason=observe.CANCEL_REASON)
        except CorralError:
            raise
        except Exception as exc:
            if error_code(exc) in STOPPED_ALREADY or http_status(exc) == 404:
                return
            raise sdk_error(exc, f"terminate job {azure_id}",
                            self.options.resolved_url() or "?") from None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "pool": self.options.pool,
                "account_url": self.options.resolved_url()}
