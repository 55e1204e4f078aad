"""The GCP Batch backend: create, watch and cancel jobs through Google's SDK.

``google-cloud-batch`` (``pip install 'corral[gcp]'``) is imported when the backend first
talks to Batch or checks a request, not before. Its ``BatchServiceClient`` runs over REST
with the machine's Application Default Credentials (or none, for a plain ``http://``
``api_endpoint``: an emulator or a test's fake). Every error of the SDK, of the credentials
or of the connection becomes a :class:`~corral.errors.BackendError` (a
:class:`~corral.errors.SubmitError` while submitting) that says what to do.

One look at Batch per poll interval: ``get_job`` per unfinished job, and ``list_tasks`` for
a job that runs or has ended (task N is node N: its state and exit code). Job output goes to
Cloud Logging, which this backend does not read: :meth:`GcpBatchBackend.logs` says where.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from corral.backends.base import (
    Capabilities,
    ConfiguredBackend,
    JobRef,
    Plan,
    check_workdir,
)
from corral.codepackage import pack, remove, upload
from corral.errors import BackendError, CorralError, SubmitError
from corral.logs import LogSource
from corral.rundir import new_job_id
from corral.spec import JobSpec, JobState
from corral.store import JobRecord, Observation, Store

from .observe import observe
from .options import GcpBatchOptions
from .render import JOB_LABEL, TASK_GROUP, GcpBatchPlan, job_name, label_value, parent, render
from .validate import batch_v1, check_with_sdk, to_request

T = TypeVar("T")
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED", "CANCELLATION_IN_PROGRESS",
         "DELETION_IN_PROGRESS")
TASKS_LISTED = ("RUNNING", "SUCCEEDED", "FAILED", "CANCELLATION_IN_PROGRESS", "CANCELLED")


def make_client(options: GcpBatchOptions) -> Any:
    """The SDK's client for these options (REST; anonymous for a plain http endpoint)."""
    sdk = batch_v1()
    kwargs: dict[str, Any] = {"transport": "rest"}
    endpoint = options.api_endpoint
    if endpoint:
        kwargs["client_options"] = {"api_endpoint": endpoint.rstrip("/")}
        if endpoint.startswith("http://"):  # never send real credentials in the clear
            from google.auth.credentials import AnonymousCredentials

            anonymous: Any = AnonymousCredentials  # untyped in some google-auth versions
            kwargs["credentials"] = anonymous()
    return sdk.BatchServiceClient(**kwargs)


def _api_errors() -> Any:
    """``google.api_core.exceptions``, after the SDK (MissingDependency if it is not there)."""
    batch_v1()
    from google.api_core import exceptions

    return exceptions


def _hint(exc: Any, options: GcpBatchOptions) -> str:
    """What to do about an error the SDK raised (google.api_core.exceptions)."""
    code = getattr(exc, "code", None)
    project = options.project or "PROJECT"
    if code == 401:
        return "the credentials were refused: run gcloud auth application-default login"
    if code == 403:
        return (f"the credentials may not do this in project {project}: they need "
                "roles/batch.jobsEditor (and roles/iam.serviceAccountUser on the job's "
                "service account), and the Batch API must be enabled there (gcloud services "
                "enable batch.googleapis.com)")
    if code == 404:
        return f"check -o project={project} and -o location={options.location}"
    if code == 429:
        return "a quota of the project ran out: wait, or ask for more quota"
    return ""


class GcpBatchBackend(ConfiguredBackend[GcpBatchOptions]):
    name = "gcp-batch"
    options_type = GcpBatchOptions
    capabilities = Capabilities(
        gang=False, logs=False, follow=False, elastic=True, queues=False, arrays=False)
    cancel_grace = 120.0

    def __init__(self, options: GcpBatchOptions | None = None, client: Any = None,
                 store: Store | None = None) -> None:
        super().__init__(store)
        self.options = options or GcpBatchOptions()
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._call("connect to GCP Batch", lambda: make_client(
                self.options))
        return self._client

    def engine_address(self) -> dict[str, Any]:
        return {"project": self.options.project, "location": self.options.location,
                "api_endpoint": self.options.api_endpoint}

    def _call(self, doing: str, action: Callable[[], T], submit: bool = False) -> T:
        """One call to the SDK, its errors as corral's."""
        error = SubmitError if submit else BackendError
        try:
            from google.api_core import exceptions as api_errors
            from google.auth import exceptions as auth_errors
        except ImportError:
            return action()  # batch_v1() raises MissingDependency with the install hint
        try:
            return action()
        except CorralError:
            raise
        except api_errors.GoogleAPICallError as exc:
            hint = _hint(exc, self.options)
            raise error(f"cannot {doing}: GCP Batch answered {exc.code} {exc.message}"
                        + (f"; {hint}" if hint else "")) from None
        except api_errors.GoogleAPIError as exc:  # retries ran out, a bad operation...
            raise error(f"cannot {doing}: {exc}") from None
        except auth_errors.GoogleAuthError as exc:
            raise error(f"cannot {doing}: no usable Google credentials ({exc}); run gcloud "
                        "auth application-default login, or set "
                        "GOOGLE_APPLICATION_CREDENTIALS to a service account's key "
                        "file") from None
        except (OSError, ValueError) as exc:  # the connection (requests'), a bad name
            where = self.options.api_endpoint or "https://batch.googleapis.com"
            raise error(f"cannot {doing}: {type(exc).__name__}: {exc} (endpoint "
                        f"{where})") from None

    def _get_job(self, name: str) -> Any:
        """The job, or None when Batch has no such job (deleted, or never created)."""
        not_found = _api_errors().NotFound

        def get() -> Any:
            try:
                return self.client.get_job(name=name)
            except not_found:
                return None

        return self._call(f"read the GCP Batch job {name}", get)

    # -- render / submit ------------------------------------------------------------------

    def render(self, spec: JobSpec, job_id: str | None = None) -> GcpBatchPlan:
        job_id = job_id or new_job_id(spec.name)
        workdir = os.path.abspath(spec.workdir or os.getcwd())
        plan = render(spec, job_id=job_id, options=self.options, local_workdir=workdir)
        if not check_with_sdk(plan.request):
            plan = dataclasses.replace(plan, notes=(*plan.notes, (
                "checked without GCP Batch's message types (pip install 'corral[gcp]' to "
                "check every field as the SDK will)")))
        return plan

    def record_details(self, spec: JobSpec, plan: Plan) -> dict[str, Any]:
        assert isinstance(plan, GcpBatchPlan)
        return {"name": plan.name, "parent": plan.parent, "package_url": plan.package_url}

    def submit(self, spec: JobSpec, plan: Plan | None = None) -> JobRef:
        gcp_plan = self.render(spec) if plan is None else plan
        if not isinstance(gcp_plan, GcpBatchPlan):
            raise SubmitError(f"the gcp-batch backend cannot submit a {type(gcp_plan).__name__}")
        to_request(gcp_plan.request)  # every field through the SDK's types, before a record
        if gcp_plan.package_url:
            check_workdir(spec, gcp_plan.workdir)
        for warning in gcp_plan.warnings:
            sys.stderr.write(f"corral: warning: {warning}\n")
        return super().submit(spec, gcp_plan)

    def _upload_package(self, plan: GcpBatchPlan) -> None:
        assert plan.package_url is not None
        data, skipped = pack(plan.workdir, exclude=self.options.package_exclude,
                             max_kb=self.options.package_max_mb * 1024,
                             where=f"package_max_mb={self.options.package_max_mb:g} allows")
        for name, why in skipped:
            sys.stderr.write(f"corral: warning: not shipped with the job: {name} ({why})\n")
        upload(data, plan.package_url)

    def _launch(self, spec: JobSpec, plan: Plan, record: JobRecord) -> str | None:
        assert isinstance(plan, GcpBatchPlan)
        request = to_request(plan.request)
        if plan.package_url:
            self._upload_package(plan)
        try:
            job = self._call(f"create the GCP Batch job {plan.name} in {plan.parent}",
                             lambda: self.client.create_job(request=request), submit=True)
        except BaseException:
            if plan.package_url:
                remove([plan.package_url])  # nothing half-submitted stays
            raise
        return str(job.name)

    # -- describe -------------------------------------------------------------------------

    def _where(self, record: JobRecord) -> str:
        details = record.details or {}
        return str(details.get("parent") or parent(self.options))

    def _resource_name(self, record: JobRecord) -> str:
        name = (record.details or {}).get("name") or job_name(record.id)
        return record.engine_id or f"{self._where(record)}/jobs/{name}"

    def _tasks(self, job: Any) -> list[Any]:
        groups = list(getattr(job, "task_groups", None) or [])
        group = (groups[0].name if groups and groups[0].name
                 else f"{job.name}/taskGroups/{TASK_GROUP}")
        return self._call(f"list the tasks of {job.name}",
                          lambda: list(self.client.list_tasks(parent=group)))

    def describe_many(self, records: Sequence[JobRecord]) -> dict[str, Observation]:
        found: dict[str, Observation] = {}
        for record in records:
            if not record.engine_id:
                continue
            job = self._get_job(record.engine_id)
            if job is None:  # by corral's delete, or by someone else
                import time

                found[record.id] = Observation(
                    JobState.CANCELLED, f"cancelled: its GCP Batch job {record.engine_id} "
                    "was deleted", finished=time.time())
                continue
            tasks = self._tasks(job) if job.status.state.name in TASKS_LISTED else []
            found[record.id] = observe(record, job, tasks)
        return found

    def find_submitted(self, records: Sequence[JobRecord]) -> dict[str, str]:
        found: dict[str, str] = {}
        for record in records:
            job = self._get_job(self._resource_name(record))
            if job is not None and dict(job.labels).get(JOB_LABEL) == label_value(record.id):
                found[record.id] = str(job.name)
        return found

    # -- cancel, logs ---------------------------------------------------------------------

    def _stop(self, record: JobRecord) -> None:
        """Cancel the job (Batch stops its tasks, then marks it CANCELLED); a job that is
        gone, ended or already being stopped has nothing to stop."""
        errors = _api_errors()
        name = record.engine_id or self.find_submitted([record]).get(record.id)
        if name is None:
            return

        def cancel() -> bool:
            try:
                self.client.cancel_job(name=name)
            except errors.NotFound:
                pass
            except errors.GoogleAPICallError:  # FAILED_PRECONDITION: ended, or being stopped?
                return False
            return True

        if self._call(f"cancel the GCP Batch job {name}", cancel):
            return
        job = self._get_job(name)
        if job is not None and job.status.state.name not in ENDED:
            self._call(f"cancel the GCP Batch job {name}",  # the error, as Batch says it
                       lambda: self.client.cancel_job(name=name))

    def logs(self, job_id: str, rank: int | None = None, follow: bool = False
             ) -> Iterator[tuple[LogSource, str]]:
        record = self.store.get(job_id)
        self.check_rank(record, rank)
        raise BackendError(self._where_logs_are(record))

    def _where_logs_are(self, record: JobRecord) -> str:
        options = record.options or {}
        if options.get("logs") == "NONE":
            return (f"job {record.id} was created with -o logs=NONE: GCP Batch kept none of "
                    "its output")
        name = self._resource_name(record)
        project = name.split("/")[1]
        try:
            job = self._get_job(name)
        except BackendError:
            job = None
        uid = str(job.uid) if job is not None and job.uid else "UID"
        look_up = "" if job is not None and job.uid else (
            f" (UID: gcloud batch jobs describe {name.rsplit('/', 1)[-1]} --location "
            f"{name.split('/')[3]} --format='value(uid)')")
        return (f"the gcp-batch backend does not read logs: GCP Batch sends every node's "
                f"output to Cloud Logging, each line labelled [rank N] or [corral]. Read "
                f"them with: gcloud logging read 'logName=\"projects/{project}/logs/"
                f"batch_task_logs\" AND labels.job_uid=\"{uid}\"' --project {project}"
                + look_up)

    def _run_lines(self, job_id: str) -> Iterator[tuple[LogSource, str]]:
        """A foreground run says where the output goes, then waits for the job."""
        yield LogSource("node", 0), "corral: " + self._where_logs_are(self.store.get(job_id))

    def info(self) -> dict[str, Any]:
        return {**super().info(), "project": self.options.project,
                "location": self.options.location}
