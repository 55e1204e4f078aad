"""Render a job as a GCP Batch ``CreateJobRequest``. Pure: nothing is asked of Google.

One task group, one task per node and one VM per task (``taskCountPerNode: 1``), every
task started at once (``parallelism = taskCount``). Every task runs the same container
command, :mod:`corral.runtime.cloud_node` ``gcp-batch``, with the job in ``$CORRAL_JOB``
(:class:`corral.runtime.cloud_job.NodeJob`). ``requireHostsFile`` makes Batch write every
task's address to ``$BATCH_HOSTS_FILE``, in task order: task N is corral's node N, and the
first line is the rendezvous address (:func:`corral.runtime.cloud_env.gcp_batch`).

The request is rendered as the JSON that the REST API takes (camelCase, enums by name), so
that the dry run shows it exactly; :mod:`.validate` checks it, and the client parses it
into the SDK's message types before sending.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from corral.errors import SpecError
from corral.launchers.nodeplan import entry_in_container
from corral.runtime.cloud_job import ALL_HOSTS_LAUNCHERS, NodeJob, launcher_problem
from corral.spec import Function, JobSpec

from .options import GcpBatchOptions

SERVICE = "gcp-batch"
NODE_MODULE = "corral.runtime.cloud_node"
DEFAULT_ENDPOINT = "https://batch.googleapis.com"
RUN_DIR = "/opt/corral/run"
WORK_DIR = "/opt/corral/work"  # where a code package unpacks
TASK_GROUP = "group0"  # the name Batch gives a job's only task group
JOB_LABEL = "corral-job"
MANAGED_BY = "managed-by"
JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")  # GCP Batch job ids


def job_name(job_id: str) -> str:
    """GCP Batch's id for a corral job: a lowercase letter first, at most 63 letters, digits
    and hyphens, no hyphen last. corral's ids are ``<slug>-<yymmdd-hhmmss>-<6 hex>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", job_id.lower()).strip("-") or "job"
    if not slug[0].isalpha():
        slug = f"j-{slug}"
    if len(slug) > 63:  # keep the unique end
        slug = slug[:63 - 21].rstrip("-") + "-" + slug[-20:]
    return slug


def label_value(text: str) -> str:
    """A GCP label value: at most 63 lowercase letters, digits, - and _."""
    value = re.sub(r"[^a-z0-9_-]+", "-", text.lower())
    return value if len(value) <= 63 else value[:42] + value[-21:]


def package_url(store: str, job_id: str) -> str:
    """Where a job's code package goes in Cloud Storage."""
    return f"{store.rstrip('/')}/{job_id}/code.tar.gz"


def parent(options: GcpBatchOptions) -> str:
    return f"projects/{options.project}/locations/{options.location}"


@dataclass(frozen=True)
class GcpBatchPlan:
    job_id: str  # corral's
    name: str  # GCP Batch's job id (the last part of the job's resource name)
    parent: str  # projects/P/locations/L
    endpoint: str
    run_dir: str  # in each container
    workdir: str  # on the submitting machine (packed with code=package)
    package_url: str | None  # where code=package uploads it
    request: dict[str, Any]  # the CreateJobRequest, as the REST API's JSON
    node_job: NodeJob
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def job(self) -> dict[str, Any]:
        job: dict[str, Any] = self.request["job"]
        return job

    @property
    def resource_name(self) -> str:
        return f"{self.parent}/jobs/{self.name}"

    def node_command(self) -> list[str]:
        """What every task's container runs: the entrypoint, then the commands."""
        container = self.job["taskGroups"][0]["taskSpec"]["runnables"][0]["container"]
        return [container["entrypoint"], *container["commands"]]

    def node_env(self) -> dict[str, str]:
        """The variables corral gives every task's container (Batch adds BATCH_*)."""
        env: dict[str, str] = self.job["taskGroups"][0]["taskSpec"]["environment"]["variables"]
        return dict(env)

    def dry_run_text(self) -> str:
        tasks = self.job["taskGroups"][0]["taskCount"]
        head = [f"# corral job {self.job_id}: GCP Batch job {self.name} in {self.parent} "
                f"({tasks} task(s), one VM each)",
                f"# POST {self.endpoint}/v1/{self.parent}/jobs?jobId={self.name}"]
        head += [f"# warning: {w}" for w in self.warnings]
        head += [f"# note: {n}" for n in self.notes]
        body = json.dumps(self.request, indent=2)
        shown = "\n".join("# " + line for line in self.node_job.to_json().splitlines())
        return "\n".join(head) + "\n" + body + "\n# $CORRAL_JOB decoded:\n" + shown + "\n"


def check(spec: JobSpec, options: GcpBatchOptions) -> tuple[str, list[str]]:
    """The image to run, and warnings; what GCP Batch cannot do is refused here."""
    problems: list[tuple[str, Any, str]] = []
    if not options.project:
        problems.append(("gcp-batch.project", None, "the GCP project to create the job in: "
                         "-o project=PROJECT_ID"))
    if not options.location:
        problems.append(("gcp-batch.location", None, "the region to create the job in: "
                         "-o location=us-central1"))
    image = options.image or spec.image
    if not image:
        problems.append(("image", None, "the gcp-batch backend needs a container image with "
                         "Python and corral installed: --image IMAGE (or -o image=IMAGE)"))
    refused = launcher_problem(spec.launcher, "gcp-batch", ALL_HOSTS_LAUNCHERS)
    if refused:
        problems.append(refused)
    if isinstance(spec.entrypoint, Function):
        problems.append(("entrypoint", spec.entrypoint.label, "a distributed function's "
                         "results come back through the job's log, which the gcp-batch "
                         "backend does not read (Cloud Logging); run a script, module or "
                         "command"))
    if options.code == "package" and not options.package_store:
        problems.append(("gcp-batch.package_store", None, "code=package uploads the working "
                         "directory to Cloud Storage: -o package_store=gs://BUCKET/PREFIX "
                         "(or -o code=image)"))
    gpus = spec.resources.whole_gpus(SERVICE)
    if gpus and not options.accelerator_type:
        problems.append(("gcp-batch.accelerator_type", None, f"{gpus} GPU(s) per node need "
                         "an accelerator type: -o accelerator_type=nvidia-l4 (or "
                         "nvidia-tesla-t4, nvidia-h100-80gb...)"))
    if options.accelerator_type and not gpus:
        problems.append(("resources.gpus", 0, f"accelerator_type={options.accelerator_type} "
                         "needs GPUs per node: --gpus N"))
    priority = options.priority if options.priority is not None else spec.priority
    if not 0 <= priority <= 99:
        problems.append(("priority", priority, "GCP Batch job priorities are 0 to 99 "
                         "(higher runs first); or set -o priority=N"))
    if problems:
        raise SpecError(problems)
    warnings = []
    if spec.queue:
        warnings.append(f"queue {spec.queue!r} has no meaning on GCP Batch (it has no "
                        "queues); ignored")
    if options.provisioning_model == "SPOT" and options.max_retry_count == 0:
        warnings.append("SPOT VMs can be preempted (exit code 50001) and max_retry_count is "
                        "0: a preempted node fails the job")
    assert image is not None
    return image, warnings


def node_job(spec: JobSpec, options: GcpBatchOptions, job_id: str, local_workdir: str
             ) -> NodeJob:
    """The job as every task's container gets it."""
    package = options.code == "package"
    workdir = WORK_DIR if package else options.image_workdir
    if package:
        spec = entry_in_container(spec, local_workdir, workdir)
    spec = spec.replace(workdir=workdir)
    url = package_url(options.package_store, job_id) if package and options.package_store \
        else None
    return NodeJob(job_id=job_id, spec=spec.model_dump(mode="json"), run_dir=RUN_DIR,
                   workdir=workdir, master_port=options.master_port, python=options.python,
                   package_url=url)


def _allocation_policy(spec: JobSpec, options: GcpBatchOptions) -> dict[str, Any]:
    policy: dict[str, Any] = {"provisioningModel": options.provisioning_model}
    if options.machine_type:
        policy["machineType"] = options.machine_type
    gpus = spec.resources.whole_gpus(SERVICE)
    instance: dict[str, Any] = {"policy": policy}
    if gpus:
        policy["accelerators"] = [{"type": options.accelerator_type, "count": gpus}]
        instance["installGpuDrivers"] = options.install_gpu_drivers
    allocation: dict[str, Any] = {"instances": [instance]}
    if options.allowed_locations:
        allocation["location"] = {"allowedLocations": list(options.allowed_locations)}
    if options.service_account:
        allocation["serviceAccount"] = {"email": options.service_account}
    if options.network or options.subnetwork or options.no_external_ip:
        interface: dict[str, Any] = {}
        if options.network:
            interface["network"] = options.network
        if options.subnetwork:
            interface["subnetwork"] = options.subnetwork
        if options.no_external_ip:
            interface["noExternalIpAddress"] = True
        allocation["network"] = {"networkInterfaces": [interface]}
    return allocation


def _task_spec(spec: JobSpec, options: GcpBatchOptions, image: str, job: NodeJob
               ) -> dict[str, Any]:
    container: dict[str, Any] = {"imageUri": image, "entrypoint": options.python,
                                 "commands": ["-m", NODE_MODULE, SERVICE]}
    if options.container_options:
        container["options"] = options.container_options
    task: dict[str, Any] = {
        "runnables": [{"displayName": "corral-node", "container": container}],
        "environment": {"variables": {"CORRAL_JOB": job.encode(), "PYTHONUNBUFFERED": "1"}},
        "maxRetryCount": options.max_retry_count,
    }
    resources: dict[str, Any] = {}
    if spec.resources.cpus:
        resources["cpuMilli"] = round(spec.resources.cpus * 1000)
    if spec.resources.memory_mb:
        resources["memoryMib"] = spec.resources.memory_mb
    if resources:
        task["computeResource"] = resources
    if spec.time_limit:
        task["maxRunDuration"] = f"{math.ceil(spec.time_limit)}s"
    return task


def render(spec: JobSpec, *, job_id: str, options: GcpBatchOptions, local_workdir: str
           ) -> GcpBatchPlan:
    """The job's CreateJobRequest, and what the dry run shows with it."""
    image, warnings = check(spec, options)
    name = job_name(job_id)
    job = node_job(spec, options, job_id, local_workdir)
    labels = {**options.labels, MANAGED_BY: "corral", JOB_LABEL: label_value(job_id)}
    body: dict[str, Any] = {
        "taskGroups": [{
            "taskSpec": _task_spec(spec, options, image, job),
            "taskCount": spec.nodes,
            "parallelism": spec.nodes,
            "taskCountPerNode": 1,
            "requireHostsFile": True,
        }],
        "allocationPolicy": _allocation_policy(spec, options),
        "labels": labels,
    }
    priority = options.priority if options.priority is not None else spec.priority
    if priority:
        body["priority"] = priority
    if options.logs == "CLOUD_LOGGING":
        body["logsPolicy"] = {"destination": "CLOUD_LOGGING"}
    where = parent(options)
    notes = []
    if job.package_url:
        notes.append(f"the working directory {local_workdir} is packed at submit and "
                     f"uploaded to {job.package_url}")
    return GcpBatchPlan(
        job_id=job_id, name=name, parent=where,
        endpoint=(options.api_endpoint or DEFAULT_ENDPOINT).rstrip("/"), run_dir=RUN_DIR,
        workdir=local_workdir, package_url=job.package_url,
        request={"parent": where, "jobId": name, "job": body}, node_job=job,
        warnings=tuple(warnings), notes=tuple(notes))
