"""The SageMaker backend: upload the job's files, create the training job, watch it, read its
CloudWatch logs, stop it.

One ``DescribeTrainingJob`` per unfinished job per poll interval answers its state
(:mod:`.observe`). A failed job's log streams (one per instance, ``NAME/algo-N-<epoch>``)
are read once, to name the rank that failed first from corral's ``[corral] rank N exited
with code C`` lines (:func:`corral.nodelog.first_failed_rank`); without them, the host that
SageMaker's FailureReason names. boto3 is imported only when AWS is first asked something.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from corral.backends.aws.cloudwatch import StreamFollower, stream_lines, streams_with_prefix, tail
from corral.backends.aws.session import call, client, error_code
from corral.backends.base import (
    Capabilities,
    ConfiguredBackend,
    JobRef,
    Plan,
    check_workdir,
)
from corral.codepackage import pack
from corral.errors import BackendError, SubmitError
from corral.jobstate import JobState
from corral.logs import LogSource
from corral.nodelog import first_failed_rank, nodes_to_read, parse_pod_log, results
from corral.rundir import new_job_id
from corral.runtime.procs import describe_returncode
from corral.spec import Function, JobSpec
from corral.status import Failure
from corral.store import JobRecord, Observation, Store

from . import observe
from .observe import LOG_GROUP
from .options import SageMakerOptions
from .render import (
    JOB_FILE,
    JOB_ID_TAG,
    PACKAGE_FILE,
    PAYLOAD_FILE,
    SageMakerPlan,
    render,
    training_job_name,
)

LOG_STEP = 2.0  # the most time between two reads of the log streams while following
FAILURE_TAIL = 400  # lines of each node's log read to name the failing rank


def _not_found(exc: BaseException) -> bool:
    """SageMaker's answer for a training job it does not have: ResourceNotFound, or (as it
    answers DescribeTrainingJob) a ValidationException 'Requested resource not found'."""
    code = error_code(exc)
    message = str((getattr(exc, "response", {}).get("Error") or {}).get("Message") or "")
    return code == "ResourceNotFound" or (code == "ValidationException" and any(
        words in message.lower() for words in ("not found", "could not find")))


def _s3_parts(url: str) -> tuple[str, str]:
    bucket, _, key = url.removeprefix("s3://").partition("/")
    return bucket, key


class SageMakerBackend(ConfiguredBackend[SageMakerOptions]):
    name = "sagemaker"
    options_type = SageMakerOptions
    capabilities = Capabilities(
        gang=True, logs=True, follow=True, elastic=True, queues=False, arrays=False)
    cancel_grace = 180.0  # SageMaker gives a container 120 s after SIGTERM

    def __init__(self, options: SageMakerOptions | None = None, *,
                 sagemaker_client: Any = None, logs_client: Any = None, s3_client: Any = None,
                 store: Store | None = None) -> None:
        super().__init__(store)
        self.options = options or SageMakerOptions()
        self._clients: dict[str, Any] = {k: v for k, v in (
            ("sagemaker", sagemaker_client), ("logs", logs_client), ("s3", s3_client)) if v}

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = client(service, self.options.connection)
        return self._clients[service]

    @property
    def sagemaker(self) -> Any:
        return self._client("sagemaker")

    @property
    def cloudwatch(self) -> Any:
        return self._client("logs")

    @property
    def s3(self) -> Any:
        return self._client("s3")

    def engine_address(self) -> dict[str, Any]:
        return {"region": self.options.region, "profile": self.options.profile,
                "endpoint_url": self.options.endpoint_url}

    def _region(self) -> str | None:
        if self.options.region:
            return self.options.region
        meta = getattr(self._clients.get("sagemaker"), "meta", None)
        return getattr(meta, "region_name", None)

    # -- render / submit ------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None) -> SageMakerPlan:
        job_id = job_id or new_job_id(spec.name)
        workdir = os.path.abspath(spec.workdir or os.getcwd())
        return render(spec, job_id=job_id, options=self.options, local_workdir=workdir)

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        assert isinstance(plan, SageMakerPlan)
        return {"name": plan.name, "s3": plan.s3_base,
                "output": plan.request["OutputDataConfig"]["S3OutputPath"]}

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        sm_plan = self.render(spec) if plan is None else plan
        if not isinstance(sm_plan, SageMakerPlan):
            raise SubmitError(f"the sagemaker backend cannot submit a {type(sm_plan).__name__}")
        if sm_plan.package:
            check_workdir(spec, sm_plan.workdir)
        for warning in sm_plan.warnings:
            sys.stderr.write(f"corral: warning: {warning}\n")
        return super().submit(spec, sm_plan)

    def _bodies(self, spec: JobSpec, plan: SageMakerPlan) -> dict[str, bytes]:
        """Every S3 object of the job, by URL: the description, the code, a function."""
        bodies = {plan.s3_base + JOB_FILE: plan.node_job.to_json().encode()}
        if plan.package:
            limit = self.options.package_max_mb
            data, skipped = pack(plan.workdir, exclude=self.options.package_exclude,
                                 max_kb=limit * 1024, where=f"package_max_mb={limit:g} allows")
            for name, why in skipped:
                sys.stderr.write(f"corral: warning: not shipped with the job: {name} ({why})\n")
            bodies[plan.s3_base + PACKAGE_FILE] = data
        if isinstance(spec.entrypoint, Function):
            from corral.runtime.call import dump_payload

            entry = spec.entrypoint
            bodies[plan.s3_base + PAYLOAD_FILE] = dump_payload(
                entry.fn, entry.call_args, dict(entry.call_kwargs))
        return bodies

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        assert isinstance(plan, SageMakerPlan)
        from botocore.exceptions import ClientError

        uploaded: list[str] = []
        creating = rejected = False

        def create() -> None:
            nonlocal rejected
            try:
                self.sagemaker.create_training_job(**plan.request)
            except ClientError:
                rejected = True  # SageMaker answered no: nothing was created
                raise

        try:
            for url, body in self._bodies(spec, plan).items():
                bucket, key = _s3_parts(url)
                call(f"upload {url}", self.s3.put_object, error=SubmitError,
                     Bucket=bucket, Key=key, Body=body)
                uploaded.append(url)
            creating = True
            call(f"create SageMaker training job {plan.name}", create, error=SubmitError)
        except BaseException:
            if creating and not rejected:  # no answer (a time-out, an interrupt): it may
                self._quietly(lambda: self._stop_named(plan.name))  # exist all the same
            self._quietly(lambda: self._delete(uploaded))
            raise
        return plan.name

    @staticmethod
    def _quietly(action: Callable[[], object]) -> None:
        try:
            action()
        except Exception:  # best effort, while another error is on its way up
            pass

    def _delete(self, urls: Sequence[str]) -> None:
        for url in urls:
            bucket, key = _s3_parts(url)
            call(f"delete {url}", self.s3.delete_object, Bucket=bucket, Key=key)

    # -- describe -------------------------------------------------------------------------

    def _name(self, record: JobRecord) -> str:
        return (record.engine_id or (record.details or {}).get("name")
                or training_job_name(record.id))

    def _describe(self, name: str) -> dict[str, Any] | None:
        """DescribeTrainingJob's answer; None when SageMaker does not have the job."""
        from botocore.exceptions import ClientError

        def ask() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = self.sagemaker.describe_training_job(
                    TrainingJobName=name)
                return found
            except ClientError as exc:
                if _not_found(exc):
                    return None
                raise

        return call(f"describe SageMaker training job {name}", ask)

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        found: dict[str, Observation] = {}
        for record in records:
            if not record.engine_id:
                continue
            desc = self._describe(record.engine_id)
            if desc is not None:  # else: just created, not yet listed; next time
                found[record.id] = self._observe(record, desc)
        return found

    def _observe(self, record: JobRecord, desc: dict[str, Any]) -> Observation:
        state, reason = observe.job_state(desc)
        started, finished = observe.times(desc, state)
        if state is JobState.RUNNING and started is None:
            started = record.started or time.time()
        if state.is_terminal() and finished is None:
            finished = time.time()
        failure = None
        if state is JobState.FAILED:
            failure = self._attribute_failure(record, desc)
            reason = failure.describe()
        return Observation(
            state, reason, engine_attempt=observe.engine_attempt(desc), started=started,
            finished=finished, failure=failure, notes=observe.notes(desc, self._region()),
            ranks=observe.rank_statuses(record.nodes, record.procs_per_node,
                                       record.launcher or "", state, failure))

    def _streams(self, name: str) -> list[str]:
        """The job's log streams (none while its instances have written nothing)."""
        try:
            return list(streams_with_prefix(self.cloudwatch, LOG_GROUP, f"{name}/"))
        except BackendError as exc:
            if "ResourceNotFoundException" in str(exc):  # no training job wrote logs yet
                return []
            raise

    def _node_logs(self, name: str, lines: int) -> dict[int, list[str]]:
        """The end of each node's newest log stream (its latest start)."""
        found: dict[int, list[str]] = {}
        for node, streams in observe.node_streams(name, self._streams(name)).items():
            found[node] = call(f"read CloudWatch log stream {streams[-1]}", tail,
                               logs=self.cloudwatch, group=LOG_GROUP, stream=streams[-1],
                               lines=lines)
        return found

    def _attribute_failure(self, record: JobRecord, desc: dict[str, Any]) -> Failure:
        """The rank that failed first, from the nodes' logs; else the host SageMaker names."""
        name = self._name(record)
        said = str(desc.get("FailureReason") or "Failed")
        said = said if len(said) <= 300 else said[:297] + "..."
        log = f"corral logs {record.id}"
        try:
            logs = self._node_logs(name, FAILURE_TAIL)
            unread = ""
        except BackendError as exc:
            logs, unread = {}, f"; its logs could not be read: {exc}"
        found = first_failed_rank(logs, record.launcher)
        if found is not None:
            node, rank, code, last = found
            cause = describe_returncode(code) if code is not None else "failed"
            return Failure(node=node, rank=rank, returncode=code,
                           reason=f"{cause} on host algo-{node + 1} (SageMaker: {said})",
                           last_lines=last, time=time.time(),
                           log=log + (f" --rank {rank}" if rank is not None else ""))
        named = observe.failed_host(said)
        node = named if named is not None else 0
        where = f" on host algo-{node + 1}" if named is not None else ""
        last = [t for _, t in parse_pod_log(logs.get(node, []), node)][-20:]
        return Failure(node=node, rank=None, returncode=None,
                       reason=f"SageMaker: {said}{where}{unread}", last_lines=last,
                       time=time.time(), log=log)

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        """By name (derived from the corral id), confirmed by the job's corral-job-id tag."""
        found: dict[str, str] = {}
        for record in records:
            name = self._name(record)
            desc = self._describe(name)
            if desc is None:
                continue
            tags = call(f"list the tags of SageMaker training job {name}",
                        self.sagemaker.list_tags, ResourceArn=desc["TrainingJobArn"],
                        MaxResults=100).get("Tags", [])
            if any(t.get("Key") == JOB_ID_TAG and t.get("Value") == record.id for t in tags):
                found[record.id] = name
        return found

    def discard_lost(self, record: JobRecord) -> None:
        """The S3 files of a submission that died before its training job was created."""
        base = (record.details or {}).get("s3")
        if base:
            self._delete([base + n for n in (JOB_FILE, PACKAGE_FILE, PAYLOAD_FILE)])

    # -- logs, results, stop --------------------------------------------------------------

    def logs(self, job_id: str, rank: int | None = None, follow: bool = False
             ) -> Iterator[tuple[LogSource, str]]:
        """Every rank's lines (or one rank's), from the instances' CloudWatch streams."""
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        nodes = set(nodes_to_read(record.nodes, record.procs_per_node, record.launcher, rank))
        return self._stream_logs(record, nodes, rank, follow)

    def _stream_logs(self, record: JobRecord, nodes: set[int], rank: int | None,
                     follow: bool) -> Iterator[tuple[LogSource, str]]:
        name = self._name(record)
        followers: dict[tuple[int, int], StreamFollower] = {}
        while True:
            done = not follow or self.describe(record.id).state.is_terminal()
            for stream in self._streams(name):
                place = observe.stream_place(name, stream)
                if place is not None and place[0] in nodes and place not in followers:
                    followers[place] = StreamFollower(self.cloudwatch, LOG_GROUP, stream)
            for (node, _), follower in sorted(followers.items()):
                for source, text in parse_pod_log(follower.poll(), node):
                    if rank is None or (source.kind == "rank" and source.number == rank):
                        yield source, text
            if done:
                return
            time.sleep(min(self.poll_interval, LOG_STEP))

    def read_result(self, job_id: str, rank: int) -> bytes | None:
        """A distributed function's result: the ``[result N]`` line of its node's log."""
        record = self.store.get(job_id)
        name = self._name(record)
        streams = observe.node_streams(name, self._streams(name)).get(
            rank // record.procs_per_node)
        if not streams:
            return None
        lines = call(f"read CloudWatch log stream {streams[-1]}", stream_lines,
                     logs=self.cloudwatch, group=LOG_GROUP, stream=streams[-1])
        return results(lines).get(rank)

    def _stop_named(self, name: str) -> None:
        from botocore.exceptions import ClientError

        def stop() -> None:
            try:
                self.sagemaker.stop_training_job(TrainingJobName=name)
            except ClientError as exc:
                # ValidationException: it has already ended (stopping a Completed, Failed or
                # Stopped job is refused); ResourceNotFound: nothing to stop
                if error_code(exc) not in ("ValidationException", "ResourceNotFound"):
                    raise

        call(f"stop SageMaker training job {name}", stop)

    def _stop(self, record: JobRecord) -> None:
        name = record.engine_id or self.find_submitted([record]).get(record.id)
        if name is not None:
            self._stop_named(name)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "region": self._region(),
                "instance_type": self.options.instance_type}
