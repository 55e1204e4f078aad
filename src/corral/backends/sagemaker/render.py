"""Render a job as a SageMaker ``CreateTrainingJob`` request. Pure: nothing is asked of AWS.

Every instance of the training job runs the same command, corral's cloud node
(:mod:`corral.runtime.cloud_node`), which reads where it stands from SageMaker's
``/opt/ml/input/config/resourceconfig.json`` (``current_host`` among ``hosts`` algo-1 ...
algo-N: algo-1 is node 0 and the rendezvous host) and renders its own processes with the
job's launcher. SageMaker's environment values and container arguments are short (512 and
256 characters), so the job's description travels as a file, with the code package:

=================================  =========================================================
S3 (uploaded at submit)            in every container (input channel ``corral``: S3Prefix,
                                   FullyReplicated, File mode)
=================================  =========================================================
<s3_prefix>/<job id>/job.json      /opt/ml/input/data/corral/job.json (``--job``)
<s3_prefix>/<job id>/code.tar.gz   /opt/ml/input/data/corral/code.tar.gz, unpacked into
                                   /opt/ml/corral/work (the ranks' working directory)
<s3_prefix>/<job id>/function.pkl  /opt/ml/input/data/corral/function.pkl (a function job)
=================================  =========================================================

The node's run directory is /opt/ml/corral/run (its logs, the launcher's files). What the
program writes to /opt/ml/model is uploaded by SageMaker to ``output_path``/NAME/output/
when the job ends; /opt/ml/checkpoints is synchronised with ``checkpoint_s3_uri``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from corral.backends.base import spec_summary
from corral.errors import SpecError
from corral.launchers.nodeplan import entry_in_container
from corral.runtime.cloud_job import ALL_HOSTS_LAUNCHERS, NodeJob, launcher_problem
from corral.spec import Function, JobSpec

from .options import SageMakerOptions


@dataclass(frozen=True)
class ContainerPaths:
    """Where things are inside the container (tests move them to run nodes on one machine)."""

    channel: str = "/opt/ml/input/data/corral"
    run_dir: str = "/opt/ml/corral/run"
    work_dir: str = "/opt/ml/corral/work"
    model_dir: str = "/opt/ml/model"
    checkpoints: str = "/opt/ml/checkpoints"


PATHS = ContainerPaths()
CHANNEL = "corral"
JOB_FILE = "job.json"
PACKAGE_FILE = "code.tar.gz"
PAYLOAD_FILE = "function.pkl"
JOB_ID_TAG = "corral-job-id"
NAME_LENGTH = 63
DEFAULT_RUNTIME = 86400  # one day, when the job sets no time limit
MAX_RUNTIME = 28 * 86400  # SageMaker's longest training job
ENV_VALUE_MAX = 512  # botocore's model: Environment values
ENV_ENTRIES_MAX = 100
NODE_GRACE = 100.0  # SageMaker kills a container 120 s after its SIGTERM
_TAG_PUNCTUATION = set("_.:/=+-@")


def training_job_name(job_id: str) -> str:
    """A TrainingJobName (``[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``) from the corral id: its
    readable start and, when too long, its unique end (yymmdd-hhmmss-<6 hex>)."""
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", job_id).strip("-") or "job"
    if len(slug) > NAME_LENGTH:
        slug = slug[:NAME_LENGTH - 21].rstrip("-") + "-" + slug[-20:].lstrip("-")
    return slug


def job_prefix(s3_prefix: str, job_id: str) -> str:
    """The S3 "folder" of a job's files (with its trailing slash: job-1 is not job-10)."""
    return f"{s3_prefix.rstrip('/')}/{job_id}/"


@dataclass(frozen=True)
class Upload:
    url: str
    what: str
    text: str | None = None  # the exact content, when known before submit


@dataclass(frozen=True)
class SageMakerPlan:
    job_id: str
    name: str  # the TrainingJobName
    run_dir: str  # in each container
    workdir: str  # on the submitting machine (packed with code=package)
    package: bool
    request: dict[str, Any]  # CreateTrainingJob's parameters, validated
    node_job: NodeJob
    s3_base: str  # <s3_prefix>/<job id>/
    uploads: tuple[Upload, ...]
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    def dry_run_text(self) -> str:
        resources = self.request["ResourceConfig"]
        lines = [f"# corral job {self.job_id}: SageMaker training job {self.name}, "
                 f"{resources['InstanceCount']} x {resources['InstanceType']}"]
        lines += [f"# warning: {w}" for w in self.warnings]
        lines += [f"# note: {n}" for n in self.notes]
        lines.append("# 1. uploaded to S3, before the training job is created:")
        lines += [f"#   {u.url}  ({u.what})" for u in self.uploads]
        lines.append("# 2. sagemaker CreateTrainingJob:")
        lines.append(json.dumps(self.request, indent=2))
        for upload in self.uploads:
            if upload.text is not None:
                lines.append(f"# {upload.url}:")
                lines.append(upload.text)
        return "\n".join(lines) + "\n"


def _tag_problems(tags: list[dict[str, str]]) -> list[tuple[str, Any, str]]:
    """Tags as SageMaker's model says (keys 1-128, values 0-256 characters: letters, spaces,
    digits and _.:/=+-@); checked here because its pattern uses \\p{...} classes, which
    Python's re cannot read."""
    found: list[tuple[str, Any, str]] = []
    if len(tags) > 50:
        found.append(("Tags", f"{len(tags)} items", "at most 50 items"))

    def allowed(text: str) -> bool:
        return all(c in _TAG_PUNCTUATION or unicodedata.category(c)[0] in "LZN" for c in text)

    for i, tag in enumerate(tags):
        key, value = tag["Key"], tag["Value"]
        if not 1 <= len(key) <= 128 or not allowed(key):
            found.append((f"Tags[{i}].Key", key, "1 to 128 letters, spaces, digits and "
                          "_.:/=+-@"))
        if len(value) > 256 or not allowed(value):
            found.append((f"Tags[{i}].Value", value, "at most 256 letters, spaces, digits "
                          "and _.:/=+-@"))
    return found


def cross_field_problems(request: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """What SageMaker's model cannot say: bounds of one field that depend on another."""
    found: list[tuple[str, Any, str]] = []
    stopping = request.get("StoppingCondition") or {}
    runtime = stopping.get("MaxRuntimeInSeconds")
    wait = stopping.get("MaxWaitTimeInSeconds")
    spot = bool(request.get("EnableManagedSpotTraining"))
    if isinstance(runtime, int) and runtime > MAX_RUNTIME:
        found.append(("StoppingCondition.MaxRuntimeInSeconds", runtime,
                      f"at most {MAX_RUNTIME} (28 days, SageMaker's longest training job): "
                      "a shorter time_limit"))
    if wait is not None and not spot:
        found.append(("StoppingCondition.MaxWaitTimeInSeconds", wait,
                      "only with managed spot training (-o use_spot=true)"))
    if spot and wait is None:
        found.append(("StoppingCondition.MaxWaitTimeInSeconds", None,
                      "required with managed spot training"))
    if spot and isinstance(wait, int) and isinstance(runtime, int) and wait < runtime:
        found.append(("StoppingCondition.MaxWaitTimeInSeconds", wait,
                      f"at least MaxRuntimeInSeconds ({runtime}): the wait for spot capacity "
                      "includes the run; raise -o max_wait or lower time_limit"))
    vpc = request.get("VpcConfig")
    if vpc is not None and not (vpc.get("Subnets") and vpc.get("SecurityGroupIds")):
        found.append(("VpcConfig", vpc, "both -o subnets=... and -o security_group_ids=..."))
    count = (request.get("ResourceConfig") or {}).get("InstanceCount")
    if isinstance(count, int) and count < 1:
        found.append(("ResourceConfig.InstanceCount", count, "at least 1"))
    return found


def validate(request: dict[str, Any]) -> None:
    """The request against botocore's model of CreateTrainingJob (types, required members,
    enums, patterns, lengths) and corral's cross-field checks; a SpecError lists every
    problem, and nothing is sent."""
    from corral.backends.aws.session import boto3_module
    from corral.backends.aws.validate import check_request

    boto3_module()  # botocore comes with boto3: a missing one says what to install
    checked = {k: v for k, v in request.items() if k != "Tags"}
    check_request("sagemaker", "CreateTrainingJob", checked,
                  more=cross_field_problems(request) + _tag_problems(request.get("Tags", [])))


def check(spec: JobSpec, options: SageMakerOptions) -> tuple[str, str, str, list[str]]:
    """(image, role, S3 prefix, warnings); what SageMaker cannot run is refused here."""
    problems: list[tuple[str, Any, str]] = []
    image = options.image or spec.image
    if not image:
        problems.append(("image", None, "the sagemaker backend needs a container image (in "
                         "ECR) with Python and corral installed: --image IMAGE (or "
                         "-o image=IMAGE)"))
    if not options.role_arn:
        problems.append(("sagemaker.role_arn", None, "the IAM role SageMaker assumes for the "
                         "job: -o role_arn=arn:aws:iam::ACCOUNT:role/NAME"))
    if not options.s3_prefix:
        problems.append(("sagemaker.s3_prefix", None, "where the job's description and code "
                         "go, read by every instance: -o s3_prefix=s3://BUCKET/PREFIX"))
    refused = launcher_problem(spec.launcher, "sagemaker", ALL_HOSTS_LAUNCHERS)
    if refused:
        problems.append(refused)
    if problems:
        raise SpecError(problems)
    warnings = []
    gpu_family = options.instance_type.startswith(("ml.p", "ml.g"))
    if spec.resources.gpus and not gpu_family:
        warnings.append(f"resources.gpus={spec.resources.gpus:g}: on SageMaker the instance "
                        f"type decides the GPUs, and {options.instance_type} has none; choose "
                        "one with -o instance_type=... (ml.g5.12xlarge, ml.p4d.24xlarge...)")
    if options.use_spot and not options.checkpoint_s3_uri:
        warnings.append("use_spot without checkpoint_s3_uri: a job interrupted by a spot "
                        "reclaim starts over from the beginning")
    if spec.priority:
        warnings.append(f"priority {spec.priority} has no meaning on SageMaker")
    return str(image), str(options.role_arn), str(options.s3_prefix), warnings


def _environment(spec: JobSpec) -> tuple[dict[str, str], list[str]]:
    """The container's environment: the job's variables that SageMaker can carry (the
    ranks get them all from job.json)."""
    env = {"PYTHONUNBUFFERED": "1"}
    left: list[str] = []
    for key, value in spec.env.items():
        if len(value) > ENV_VALUE_MAX or len(env) >= ENV_ENTRIES_MAX:
            left.append(key)
        else:
            env[key] = value
    return env, left


def render(spec: JobSpec, *, job_id: str, options: SageMakerOptions, local_workdir: str,
           paths: ContainerPaths = PATHS) -> SageMakerPlan:
    """The job's CreateTrainingJob request and the S3 objects it reads, validated."""
    image, role, s3_prefix, warnings = check(spec, options)
    name = training_job_name(job_id)
    base = job_prefix(s3_prefix, job_id)
    package = options.code == "package"
    workdir = paths.work_dir if package else options.image_workdir
    node_spec = entry_in_container(spec, local_workdir, workdir) if package else spec
    node_spec = node_spec.replace(workdir=workdir)
    function = isinstance(spec.entrypoint, Function)
    node_job = NodeJob(
        job_id=job_id, spec=spec_summary(node_spec), run_dir=paths.run_dir, workdir=workdir,
        master_port=options.master_port, python=options.python,
        package_url=f"{paths.channel}/{PACKAGE_FILE}" if package else None,
        payload_url=f"{paths.channel}/{PAYLOAD_FILE}" if function else None,
        grace=NODE_GRACE)
    uploads = [Upload(base + JOB_FILE, "the job's description, read by every instance",
                      node_job.to_json())]
    if package:
        uploads.append(Upload(base + PACKAGE_FILE, f"{local_workdir}, packed at submit"))
    if function:
        uploads.append(Upload(base + PAYLOAD_FILE, "the function and its arguments, "
                              "pickled at submit"))
    runtime = math.ceil(spec.time_limit) if spec.time_limit else DEFAULT_RUNTIME
    stopping: dict[str, Any] = {"MaxRuntimeInSeconds": runtime}
    if options.use_spot:
        stopping["MaxWaitTimeInSeconds"] = options.max_wait or min(2 * runtime, 2 * MAX_RUNTIME)
    elif options.max_wait is not None:
        stopping["MaxWaitTimeInSeconds"] = options.max_wait
    resources: dict[str, Any] = {"InstanceType": options.instance_type,
                                 "InstanceCount": spec.nodes,
                                 "VolumeSizeInGB": options.volume_size_gb}
    if options.keep_alive_seconds is not None:
        resources["KeepAlivePeriodInSeconds"] = options.keep_alive_seconds
    environment, left_out = _environment(spec)
    request: dict[str, Any] = {
        "TrainingJobName": name,
        "RoleArn": role,
        "AlgorithmSpecification": {
            "TrainingImage": image,
            "TrainingInputMode": "File",
            "ContainerEntrypoint": [options.python, "-m", "corral.runtime.cloud_node",
                                    "sagemaker"],
            "ContainerArguments": ["--job", f"{paths.channel}/{JOB_FILE}"],
        },
    }
    if options.hyperparameters:
        request["HyperParameters"] = dict(options.hyperparameters)
    request.update({
        "InputDataConfig": [{
            "ChannelName": CHANNEL,
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": base,
                                            "S3DataDistributionType": "FullyReplicated"}},
            "InputMode": "File",
        }],
        "OutputDataConfig": {"S3OutputPath": options.output_path
                             or f"{s3_prefix.rstrip('/')}/output"},
        "ResourceConfig": resources,
        "StoppingCondition": stopping,
        "Environment": environment,
        "Tags": [{"Key": JOB_ID_TAG, "Value": job_id},
                 *({"Key": k, "Value": v} for k, v in options.tags.items())],
        "EnableNetworkIsolation": options.enable_network_isolation,
    })
    if options.inter_container_encryption:
        request["EnableInterContainerTrafficEncryption"] = True
    if options.use_spot:
        request["EnableManagedSpotTraining"] = True
    if options.checkpoint_s3_uri:
        request["CheckpointConfig"] = {"S3Uri": options.checkpoint_s3_uri,
                                       "LocalPath": paths.checkpoints}
    if options.subnets or options.security_group_ids:
        request["VpcConfig"] = {"SecurityGroupIds": list(options.security_group_ids),
                                "Subnets": list(options.subnets)}
    validate(request)
    notes = [f"every instance runs corral's node from the image; its run directory is "
             f"{paths.run_dir}, the ranks' working directory {workdir}",
             f"what the job writes to {paths.model_dir} is uploaded to "
             f"{request['OutputDataConfig']['S3OutputPath']}/{name}/output/"]
    if options.use_spot:
        notes.append(f"spot: SageMaker waits for capacity and runs the job within "
                     f"{stopping['MaxWaitTimeInSeconds']} s in all")
    if options.enable_network_isolation:
        notes.append("network isolation: SageMaker's documentation says the instances of a "
                     "training job still reach each other; not tried on SageMaker by corral")
    if options.checkpoint_s3_uri:
        notes.append(f"{paths.checkpoints} is kept in {options.checkpoint_s3_uri}")
    if left_out:
        notes.append("too long for SageMaker's Environment, so in job.json only (the ranks "
                     "get them): " + ", ".join(left_out))
    if spec.resources.cpus or spec.resources.memory_mb:
        notes.append(f"resources.cpus/memory are not sent: {options.instance_type} decides")
    return SageMakerPlan(job_id=job_id, name=name, run_dir=paths.run_dir,
                         workdir=local_workdir, package=package, request=request,
                         node_job=node_job, s3_base=base, uploads=tuple(uploads),
                         notes=tuple(notes), warnings=tuple(warnings))
