"""The AWS Batch backend: multi-node parallel jobs, watched node by node.

One look per poll interval: ``DescribeJobs`` for every unfinished job (100 ids a call), and
for each started one its nodes (``jobId#0`` ... ``jobId#N-1``) in the same calls. A node that
failed fails the job even while the main node runs (AWS Batch would wait for the main node
alone): corral terminates the job and names the node. A failed node's CloudWatch stream is
read once, to name the rank that failed first and show its last lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from corral.backends.aws.cloudwatch import StreamFollower, tail
from corral.backends.aws.session import call, client
from corral.backends.base import (
    Capabilities,
    ConfiguredBackend,
    JobRef,
    Plan,
    check_workdir,
)
from corral.codepackage import remove
from corral.errors import BackendError, SubmitError
from corral.logs import LogSource
from corral.nodelog import first_failed_rank, nodes_to_read, parse_pod_log, results
from corral.rundir import new_job_id
from corral.runtime.procs import describe_returncode
from corral.spec import Function, JobSpec, JobState
from corral.status import Failure, RankStatus
from corral.store import JobRecord, Observation, Store

from . import observe
from .options import AwsBatchOptions
from .render import DEFAULT_LOG_GROUP, BatchPlan, render

BATCH_IDS = 100  # DescribeJobs takes at most 100 ids


class AwsBatchBackend(ConfiguredBackend[AwsBatchOptions]):
    name = "aws-batch"
    options_type = AwsBatchOptions
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=False, queues=True, arrays=False)
    cancel_grace = 120.0

    def __init__(self, options: AwsBatchOptions | None = None,
                 clients: dict[str, Any] | None = None, store: Store | None = None) -> None:
        """``clients`` (``batch``, ``logs``) replace boto3's, for tests (a Stubber)."""
        super().__init__(store)
        self.options = options or AwsBatchOptions()
        self._clients = dict(clients or {})

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = client(service, self.options.connection)
        return self._clients[service]

    def engine_address(self) -> dict[str, Any]:
        return self.options.connection.model_dump(mode="json")

    # -- render / submit ------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None) -> BatchPlan:
        import os

        workdir = os.path.abspath(spec.workdir or os.getcwd())
        return render(spec, job_id=job_id or new_job_id(spec.name), options=self.options,
                      local_workdir=workdir)

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        assert isinstance(plan, BatchPlan)
        return {"definition": plan.definition_name,
                "job_queue": plan.submit_job["jobQueue"],
                "log_group": self.options.log_group or DEFAULT_LOG_GROUP}

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        batch_plan = self.render(spec) if plan is None else plan
        if not isinstance(batch_plan, BatchPlan):
            raise SubmitError(f"the aws-batch backend cannot submit a "
                              f"{type(batch_plan).__name__}")
        if self.options.code == "s3":
            check_workdir(spec, batch_plan.workdir)
        for warning in batch_plan.warnings:
            sys.stderr.write(f"corral: warning: {warning}\n")
        return super().submit(spec, batch_plan)

    def _upload(self, spec: JobSpec, plan: BatchPlan) -> list[str]:
        """The package, a function's pickle and a large description, into S3."""
        from corral.codepackage import pack, upload
        from corral.runtime.call import dump_payload

        done: list[str] = []
        for url, _ in plan.uploads:
            if url.endswith("/code.tar.gz"):
                data, skipped = pack(plan.workdir, exclude=self.options.package_exclude,
                                     max_kb=self.options.package_max_mb * 1024,
                                     where=f"package_max_mb={self.options.package_max_mb:g} "
                                     "allows")
                for name, why in skipped:
                    sys.stderr.write(f"corral: warning: not shipped: {name} ({why})\n")
            elif url.endswith("/function.pkl"):
                entry = spec.entrypoint
                assert isinstance(entry, Function)
                data = dump_payload(entry.fn, entry.call_args, dict(entry.call_kwargs))
            else:
                data = plan.node_job.to_json().encode()
            upload(data, url)
            done.append(url)
        return done

    def _definition(self, plan: BatchPlan) -> str:
        """The job definition's ARN: the active one of the same contents, or a new one."""
        batch = self._client("batch")
        name = plan.definition_name
        found = call(f"look up job definition {name}", batch.describe_job_definitions,
                     error=SubmitError, jobDefinitionName=name, status="ACTIVE")
        active = found.get("jobDefinitions") or []
        if active:
            return str(max(active, key=lambda d: d.get("revision", 0))["jobDefinitionArn"])
        made = call(f"register job definition {name}", batch.register_job_definition,
                    error=SubmitError, **plan.job_definition)
        return str(made["jobDefinitionArn"])

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        assert isinstance(plan, BatchPlan)
        uploaded = self._upload(spec, plan)
        try:
            arn = self._definition(plan)
            made = call(f"submit job {plan.job_id} to queue {plan.submit_job['jobQueue']}",
                        self._client("batch").submit_job, error=SubmitError,
                        **{**plan.submit_job, "jobDefinition": arn})
        except BaseException:
            remove(uploaded)  # nothing half-submitted stays
            raise
        return str(made["jobId"])

    # -- describe -------------------------------------------------------------------------

    def _describe(self, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        batch = self._client("batch")
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), BATCH_IDS):
            answer = call("describe AWS Batch jobs", batch.describe_jobs,
                          jobs=list(ids[start:start + BATCH_IDS]))
            for job in answer.get("jobs", []):
                found[str(job["jobId"])] = job
        return found

    def _nodes(self, record: JobRecord, described: dict[str, dict[str, Any]]
               ) -> dict[int, dict[str, Any]]:
        engine = record.engine_id or ""
        return {i: described[observe.node_id(engine, i)] for i in range(record.nodes)
                if observe.node_id(engine, i) in described}

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        named = {r.engine_id: r for r in records if r.engine_id}
        if not named:
            return {}
        mains = self._describe(list(named))
        started = [r for n, r in named.items()
                   if n in mains and mains[n].get("status") not in observe.WAITING]
        nodes = self._describe([observe.node_id(r.engine_id or "", i)
                                for r in started for i in range(r.nodes)]) if started else {}
        found: dict[str, Observation] = {}
        for engine_id, record in named.items():
            job = mains.get(engine_id)
            if job is None:
                found[record.id] = Observation(JobState.UNKNOWN, (
                    f"AWS Batch does not know job {engine_id} (it keeps finished jobs for "
                    "about 7 days)"))
                continue
            found[record.id] = self._observe(record, job, self._nodes(record, nodes))
        return found

    def _observe(self, record: JobRecord, job: dict[str, Any],
                 nodes: dict[int, dict[str, Any]]) -> Observation:
        state, reason = observe.main_state(job)
        failed = observe.failed_nodes(nodes)
        stop_note: tuple[str, ...] = ()
        if failed and state in (JobState.RUNNING, JobState.SUCCEEDED):
            if state is JobState.RUNNING:  # the service would wait for the main node alone
                try:
                    self._terminate(record.engine_id or "", f"corral: node {failed[0]} failed")
                except BackendError as exc:  # the failure stands; say what is still running
                    stop_note = (f"the other nodes could not be stopped ({exc}): stop them "
                                 f"with aws batch terminate-job --job-id {record.engine_id} "
                                 "--reason 'a node failed'",)
            state = JobState.FAILED
        started = _seconds(job.get("startedAt"))
        finished = _seconds(job.get("stoppedAt")) if state.is_terminal() else None
        failure = None
        if state is JobState.FAILED:
            failure = self._attribute_failure(record, job, nodes, failed, reason)
            reason = failure.describe()
            finished = finished or time.time()
        notes = (f"AWS Batch job {job.get('jobId')} ({job.get('jobName')}): "
                 f"{job.get('status')}",
                 *(f"node {i}: {observe.node_id(record.engine_id or '', i)} "
                   f"{n.get('status')}" + (f" ({observe.node_cause(n)})"
                                           if observe.failed(n) else "")
                   for i, n in sorted(nodes.items())), *stop_note)
        return Observation(state, reason, started=started, finished=finished,
                           failure=failure, notes=notes,
                           ranks=self._ranks(record, state, nodes, failure))

    def _stream(self, node: dict[str, Any]) -> str | None:
        name = observe.container_of(node).get("logStreamName")
        return str(name) if name else None

    def _log_group(self, record: JobRecord) -> str:
        return str((record.details or {}).get("log_group") or DEFAULT_LOG_GROUP)

    def _attribute_failure(self, record: JobRecord, job: dict[str, Any],
                           nodes: dict[int, dict[str, Any]], failed: list[int],
                           reason: str) -> Failure:
        """The rank that failed first, from the failed nodes' CloudWatch streams."""
        logs: dict[int, list[str]] = {}
        for index in failed:
            stream = self._stream(nodes[index])
            if stream:
                try:
                    logs[index] = tail(self._client("logs"), self._log_group(record),
                                       stream, 400)
                except Exception:  # no logs to read: the describe alone names the node
                    logs[index] = []
        found = first_failed_rank(logs, record.launcher)
        if found is None and not failed:
            return Failure(node=0, rank=None, returncode=None, reason=reason or "failed",
                           time=time.time())
        lines: list[str] = []
        if found is None:
            node, rank, code = failed[0], None, observe.exit_code(nodes[failed[0]])
        else:
            node, rank, code, lines = found
        where = observe.node_id(record.engine_id or "", node)
        cause = (describe_returncode(code) if code is not None
                 else observe.node_cause(nodes[node]) if node in nodes else "failed")
        said = observe.node_cause(nodes[node]) if node in nodes else ""
        detail = f"{cause} (AWS Batch node {where}" + (f": {said}" if said else "") + ")"
        return Failure(node=node, rank=rank, returncode=code, reason=detail,
                       last_lines=lines, time=time.time(),
                       log=f"corral logs {record.id}" + (
                           f" --rank {rank}" if rank is not None else ""))

    def _ranks(self, record: JobRecord, state: JobState, nodes: dict[int, dict[str, Any]],
               failure: Failure | None) -> tuple[RankStatus, ...]:
        ranks = []
        for rank in range(record.nodes * record.procs_per_node):
            node = rank // record.procs_per_node  # torchrun may place it elsewhere: then
            if failure is not None and rank == failure.rank:  # the failing one is known
                node = failure.node
            rank_state = observe.node_state(nodes.get(node))
            if state.is_terminal() and rank_state in (JobState.PENDING, JobState.RUNNING):
                rank_state = JobState.CANCELLED if state is not JobState.SUCCEEDED else state
            code = 0 if rank_state is JobState.SUCCEEDED else None
            if failure is not None and failure.rank is not None:
                if rank == failure.rank:
                    rank_state, code = JobState.FAILED, failure.returncode
                elif rank_state is JobState.FAILED:
                    rank_state = JobState.CANCELLED  # stopped because another rank failed
            host = observe.container_of(nodes[node]).get("containerInstanceArn") if (
                node in nodes) else None
            ranks.append(RankStatus(rank=rank, node=node, state=rank_state, returncode=code,
                                    host=str(host).rpartition("/")[2] if host else None))
        return tuple(ranks)

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        """Jobs whose name is one of these corral ids, in their queues."""
        found: dict[str, str] = {}
        batch = self._client("batch")
        for record in records:
            queue = (record.details or {}).get("job_queue")
            if not queue:
                continue
            answer = call(f"list jobs named {record.id}", batch.list_jobs, jobQueue=queue,
                          filters=[{"name": "JOB_NAME", "values": [record.id]}])
            for job in answer.get("jobSummaryList", []):
                found[record.id] = str(job["jobId"])
        return found

    # -- logs, results, cancel ------------------------------------------------------------

    def logs(self, job_id: str, rank: int | None = None, follow: bool = False
             ) -> Iterator[tuple[LogSource, str]]:
        """Every rank's lines (or one rank's), from the nodes' CloudWatch streams."""
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        nodes = nodes_to_read(record.nodes, record.procs_per_node, record.launcher, rank)
        return self._stream_logs(record, nodes, rank, follow)

    def _stream_logs(self, record: JobRecord, wanted_nodes: list[int], rank: int | None,
                     follow: bool) -> Iterator[tuple[LogSource, str]]:
        followers: dict[int, StreamFollower] = {}
        group = self._log_group(record)
        while True:
            done = not follow or self.describe(record.id).state.is_terminal()
            if len(followers) < len(wanted_nodes) and record.engine_id:
                described = self._describe([observe.node_id(record.engine_id, i)
                                            for i in wanted_nodes if i not in followers])
                for index, node in self._nodes(record, described).items():
                    stream = self._stream(node)
                    if stream:
                        followers[index] = StreamFollower(self._client("logs"), group, stream)
            for index in sorted(followers):
                for source, text in parse_pod_log(followers[index].poll(), index):
                    if rank is None or (source.kind == "rank" and source.number == rank):
                        yield source, text
            if done:
                return
            time.sleep(max(1.0, min(self.poll_interval, 5.0)))

    def read_result(self, job_id: str, rank: int) -> bytes | None:
        """A distributed function's result: the ``[result N]`` line of its node's stream."""
        from corral.backends.aws.cloudwatch import stream_lines

        record = self.store.get(job_id)
        node = rank // record.procs_per_node
        described = self._describe([observe.node_id(record.engine_id or "", node)])
        stream = next((self._stream(n) for n in described.values()), None)
        if not stream:
            return None
        return results(stream_lines(self._client("logs"), self._log_group(record),
                                    stream)).get(rank)

    def _terminate(self, engine_id: str, reason: str) -> None:
        call(f"terminate AWS Batch job {engine_id}", self._client("batch").terminate_job,
             jobId=engine_id, reason=reason)

    def _stop(self, record: JobRecord) -> None:
        """TerminateJob: AWS Batch accepts it for a job in any state (idempotent)."""
        engine_id = record.engine_id or self.find_submitted([record]).get(record.id)
        if engine_id is not None:
            self._terminate(engine_id, observe.CANCEL_REASON)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "region": self.options.region,
                "job_queue": self.options.job_queue}


def _seconds(millis: Any) -> float | None:
    return float(millis) / 1000 if isinstance(millis, int | float) and millis else None
