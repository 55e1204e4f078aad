"""Render a job as AWS Batch requests. Pure: nothing is asked of AWS (botocore's service model,
read from its installed files, checks every request before anyone sends it).

A job is two requests:

- ``RegisterJobDefinition``: a ``multinode`` definition whose one node range (``0:``, open
  above, so that a submission may say how many nodes) runs corral's node entry in the image.
  Its name is the hash of its contents (``corral-<hash>``): what a submission cannot override
  (the image, ``/dev/shm``'s size, the log configuration, the roles) makes a new definition;
  the same contents reuse the registered one.
- ``SubmitJob`` with ``nodeOverrides``: the number of nodes, each node's vCPUs, memory and
  GPUs, and ``CORRAL_JOB`` (the job's description, :mod:`corral.runtime.cloud_job`), plus the
  queue, priority, share, tags, retries and time limit.

On the nodes, ``python3 -m corral.runtime.cloud_node aws-batch`` takes its node rank from
``AWS_BATCH_JOB_NODE_INDEX`` (the main node, index 0, is node 0) and the rendezvous address
from ``AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS`` on children, its own address on the main
node, then starts the launcher (:mod:`corral.runtime.cloud_env`).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from corral.errors import SpecError
from corral.launchers.nodeplan import entry_in_container
from corral.runtime.cloud_job import (
    ENV_VAR,
    MASTER_ONLY_LAUNCHERS,
    NodeJob,
    function_runner,
    launcher_problem,
)
from corral.spec import Function, JobSpec

from .options import AwsBatchOptions

RUN_DIR = "/tmp/corral/run"  # in each node's container
PACKAGE_WORKDIR = "/tmp/corral/work"  # where a shipped package unpacks
DEFAULT_LOG_GROUP = "/aws/batch/job"  # Batch's own group, unless the definition names one
# ECS allows 8192 characters of container overrides in all: a larger description goes to S3
MAX_INLINE_JOB = 6000
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
NODE_COMMAND = ("-m", "corral.runtime.cloud_node", "aws-batch")


@dataclass(frozen=True)
class BatchPlan:
    job_id: str
    run_dir: str  # in the containers
    workdir: str  # on the submitting machine (packed with code=s3)
    job_definition: dict[str, Any]  # the RegisterJobDefinition request
    submit_job: dict[str, Any]  # the SubmitJob request
    node_job: NodeJob
    uploads: tuple[tuple[str, str], ...] = ()  # (S3 URL, what goes there) at submit
    warnings: tuple[str, ...] = field(default=())

    @property
    def definition_name(self) -> str:
        return str(self.job_definition["jobDefinitionName"])

    def dry_run_text(self) -> str:
        lines = [f"# corral job {self.job_id}: an AWS Batch multi-node parallel job of "
                 f"{self.submit_job['nodeOverrides']['numNodes']} node(s)"]
        lines += [f"# warning: {w}" for w in self.warnings]
        lines += [f"# upload at submit: {what} -> {url}" for url, what in self.uploads]
        lines.append(f"# the definition is registered unless {self.definition_name} is "
                     "already active (same contents)")
        lines.append("RegisterJobDefinition " + json.dumps(self.job_definition, indent=2))
        lines.append("SubmitJob " + json.dumps(self.submit_job, indent=2))
        lines.append(f"# {ENV_VAR}, decoded (what every node reads):")
        lines += ["#   " + line for line in self.node_job.to_json().splitlines()]
        return "\n".join(lines) + "\n"


def package_urls(store: str, job_id: str) -> dict[str, str]:
    base = f"{store.rstrip('/')}/{job_id}"
    return {"package": f"{base}/code.tar.gz", "payload": f"{base}/function.pkl",
            "job": f"{base}/job.json"}


def _requirements(spec: JobSpec, options: AwsBatchOptions) -> list[dict[str, str]]:
    """Per node (Batch's unit): vCPUs (whole), memory (MiB), GPUs (whole)."""
    res = spec.resources
    found = [{"type": "VCPU", "value": str(max(1, math.ceil(res.cpus or 1)))},
             {"type": "MEMORY", "value": str(res.memory_mb or options.memory_mb)}]
    if res.gpus:
        found.append({"type": "GPU", "value": str(res.whole_gpus("aws-batch"))})
    return found


def _container(image: str, options: AwsBatchOptions) -> dict[str, Any]:
    """The node range's container: what every submission of this definition shares."""
    container: dict[str, Any] = {
        "image": image,
        "command": [options.python, *NODE_COMMAND],
        "resourceRequirements": [{"type": "VCPU", "value": "1"},
                                 {"type": "MEMORY", "value": str(options.memory_mb)}],
        "environment": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
    }
    if options.shm_size_mb:
        container["linuxParameters"] = {"sharedMemorySize": options.shm_size_mb}
    if options.log_group:
        container["logConfiguration"] = {"logDriver": "awslogs",
                                         "options": {"awslogs-group": options.log_group}}
    if options.job_role_arn:
        container["jobRoleArn"] = options.job_role_arn
    if options.execution_role_arn:
        container["executionRoleArn"] = options.execution_role_arn
    return container


def job_definition(image: str, options: AwsBatchOptions) -> dict[str, Any]:
    """The definition, named by the hash of its contents."""
    body = {
        "type": "multinode",
        "platformCapabilities": ["EC2"],  # multi-node parallel jobs do not run on Fargate
        "nodeProperties": {"numNodes": 1, "mainNode": 0, "nodeRangeProperties": [
            {"targetNodes": "0:", "container": _container(image, options)}]},
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return {"jobDefinitionName": f"corral-{digest}", **body,
            "tags": {"corral-definition": digest}}


def check(spec: JobSpec, options: AwsBatchOptions) -> tuple[str, str, list[str]]:
    """The image and queue to use, and warnings; what AWS Batch cannot do is refused."""
    problems: list[tuple[str, Any, str]] = []
    image = options.image or spec.image
    if not image:
        problems.append(("image", None, "AWS Batch runs a container image with Python and "
                         "corral installed: --image IMAGE (or -o image=IMAGE)"))
    queue = options.job_queue or spec.queue
    if not queue:
        problems.append(("queue", None, "an AWS Batch job queue: --queue NAME (or -o "
                         "job_queue=NAME)"))
    refused = launcher_problem(spec.launcher, "aws-batch", MASTER_ONLY_LAUNCHERS)
    if refused:
        problems.append(refused)
    if spec.time_limit is not None and spec.time_limit < 60:
        problems.append(("time_limit", spec.time_limit, "at least 60 seconds (AWS Batch's "
                         "shortest attempt timeout)"))
    if options.code == "s3" and not options.package_store:
        problems.append(("aws-batch.package_store", None, "code=s3 needs -o package_store="
                         "s3://BUCKET/PREFIX"))
    if isinstance(spec.entrypoint, Function) and not options.package_store:
        problems.append(("entrypoint", spec.entrypoint.label, "a function travels as a "
                         "pickle in S3: give -o package_store=s3://BUCKET/PREFIX"))
    if problems:
        raise SpecError(problems)
    warnings = []
    if spec.priority and options.scheduling_priority is None:
        warnings.append(f"priority {spec.priority} has no meaning on AWS Batch by itself: give "
                        "-o scheduling_priority=0..9999 (fair-share queues only)")
    assert image and queue
    return image, queue, warnings


def cross_checks(submit: dict[str, Any], definition: dict[str, Any]) -> list[tuple[str, Any,
                                                                                  str]]:
    """What botocore's model cannot say about these two requests."""
    found: list[tuple[str, Any, str]] = []
    if not JOB_NAME.match(str(submit.get("jobName", ""))):
        found.append(("jobName", submit.get("jobName"), "1-128 letters, digits, - and _, "
                      "starting with a letter or digit"))
    if not JOB_NAME.match(str(definition.get("jobDefinitionName", ""))):
        found.append(("jobDefinitionName", definition.get("jobDefinitionName"),
                      "1-128 letters, digits, - and _"))
    props = definition.get("nodeProperties") or {}
    nodes = (submit.get("nodeOverrides") or {}).get("numNodes", props.get("numNodes", 0))
    if not isinstance(nodes, int) or nodes < 1:
        found.append(("nodeOverrides.numNodes", nodes, "at least 1"))
    elif props.get("mainNode", 0) >= nodes:
        found.append(("nodeProperties.mainNode", props.get("mainNode"),
                      f"a node index below the number of nodes ({nodes})"))
    for i, node_range in enumerate(props.get("nodeRangeProperties") or []):
        low, sep, high = str(node_range.get("targetNodes", "")).partition(":")
        if not sep or (low and not low.isdigit()) or (high and not high.isdigit()):
            found.append((f"nodeRangeProperties[{i}].targetNodes",
                          node_range.get("targetNodes"), "START:END, START:, :END or :"))
        elif not high and int(low or 0) >= nodes:
            found.append((f"nodeRangeProperties[{i}].targetNodes", node_range["targetNodes"],
                          f"a lower bound below the number of nodes ({nodes})"))
    for where, reqs in _all_requirements(submit, definition):
        for req in reqs:
            value = str(req.get("value", ""))
            if not value.isdigit() or int(value) < (4 if req.get("type") == "MEMORY" else 1):
                found.append((f"{where}.{req.get('type')}", value,
                              "a whole number, at least 1 (MEMORY: at least 4 MiB)"))
    for where, env in _all_environments(submit, definition):
        for item in env:
            if str(item.get("name", "")).startswith("AWS_BATCH"):
                found.append((f"{where}.environment", item.get("name"),
                              "names starting with AWS_BATCH are reserved by AWS Batch"))
    timeout = (submit.get("timeout") or {}).get("attemptDurationSeconds")
    if timeout is not None and timeout < 60:
        found.append(("timeout.attemptDurationSeconds", timeout, "at least 60"))
    priority = submit.get("schedulingPriorityOverride")
    if priority is not None and not 0 <= priority <= 9999:
        found.append(("schedulingPriorityOverride", priority, "0 to 9999"))
    attempts = (submit.get("retryStrategy") or {}).get("attempts")
    if attempts is not None and not 1 <= attempts <= 10:
        found.append(("retryStrategy.attempts", attempts, "1 to 10"))
    tags = submit.get("tags") or {}
    if len(tags) > 50:
        found.append(("tags", len(tags), "at most 50 tags"))
    return found


def _all_requirements(submit: dict[str, Any], definition: dict[str, Any]
                      ) -> list[tuple[str, list[dict[str, Any]]]]:
    found = [(f"nodeRangeProperties[{i}].container.resourceRequirements",
              r.get("container", {}).get("resourceRequirements") or [])
             for i, r in enumerate((definition.get("nodeProperties") or {}).get(
                 "nodeRangeProperties") or [])]
    found += [(f"nodePropertyOverrides[{i}].containerOverrides.resourceRequirements",
               o.get("containerOverrides", {}).get("resourceRequirements") or [])
              for i, o in enumerate((submit.get("nodeOverrides") or {}).get(
                  "nodePropertyOverrides") or [])]
    return found


def _all_environments(submit: dict[str, Any], definition: dict[str, Any]
                      ) -> list[tuple[str, list[dict[str, Any]]]]:
    found = [(f"nodeRangeProperties[{i}].container",
              r.get("container", {}).get("environment") or [])
             for i, r in enumerate((definition.get("nodeProperties") or {}).get(
                 "nodeRangeProperties") or [])]
    found += [(f"nodePropertyOverrides[{i}].containerOverrides",
               o.get("containerOverrides", {}).get("environment") or [])
              for i, o in enumerate((submit.get("nodeOverrides") or {}).get(
                  "nodePropertyOverrides") or [])]
    return found


def validate(plan: BatchPlan) -> None:
    """Both requests against botocore's model and corral's cross-field checks."""
    from corral.backends.aws.validate import problems

    found = [(f"RegisterJobDefinition: {f}", v, a) for f, v, a in problems(
        "batch", "RegisterJobDefinition", plan.job_definition)]
    found += [(f"SubmitJob: {f}", v, a) for f, v, a in problems(
        "batch", "SubmitJob", plan.submit_job)]
    found += cross_checks(plan.submit_job, plan.job_definition)
    if found:
        raise SpecError(found, what="AWS Batch request")


def render(spec: JobSpec, *, job_id: str, options: AwsBatchOptions,
           local_workdir: str) -> BatchPlan:
    image, queue, warnings = check(spec, options)
    urls = package_urls(options.package_store, job_id) if options.package_store else {}
    shipped = options.code == "s3"
    workdir = PACKAGE_WORKDIR if shipped else options.image_workdir
    if shipped:
        spec = entry_in_container(spec, local_workdir, workdir)
    uploads: list[tuple[str, str]] = []
    data = spec.model_dump(mode="json", exclude={"entrypoint"})
    if isinstance(spec.entrypoint, Function):
        data["entrypoint"] = {"kind": "command",
                              "argv": function_runner(options.python, RUN_DIR)}
        uploads.append((urls["payload"], f"the pickled function {spec.entrypoint.label}"))
    else:
        data["entrypoint"] = spec.entrypoint.model_dump(mode="json")
    if shipped:
        uploads.insert(0, (urls["package"], f"the code package of {local_workdir}"))
    node_job = NodeJob(
        job_id=job_id, spec=data, run_dir=RUN_DIR, workdir=workdir,
        master_port=options.master_port, python=options.python,
        package_url=urls["package"] if shipped else None,
        payload_url=urls["payload"] if isinstance(spec.entrypoint, Function) else None,
        grace=float(options.stop_grace))
    encoded = node_job.encode()
    if len(encoded) <= MAX_INLINE_JOB:
        described = {"name": ENV_VAR, "value": encoded}
    elif options.package_store:
        described = {"name": f"{ENV_VAR}_URL", "value": urls["job"]}
        uploads.append((urls["job"], "the job's description (too large for the environment)"))
    else:
        raise SpecError([("spec", f"{len(encoded)} characters encoded", f"at most "
                          f"{MAX_INLINE_JOB} in the node's environment (arguments, env "
                          "values...); or give -o package_store=s3://BUCKET/PREFIX")])
    definition = job_definition(image, options)
    overrides: dict[str, Any] = {"environment": [described],
                                 "resourceRequirements": _requirements(spec, options)}
    submit: dict[str, Any] = {
        "jobName": job_id, "jobQueue": queue,
        "jobDefinition": definition["jobDefinitionName"],
        "nodeOverrides": {"numNodes": spec.nodes, "nodePropertyOverrides": [
            {"targetNodes": "0:", "containerOverrides": overrides}]},
        "retryStrategy": {"attempts": options.retry_attempts},
        "propagateTags": options.propagate_tags,
        "tags": {**options.tags, "corral-job-id": job_id},
    }
    if spec.time_limit is not None:
        submit["timeout"] = {"attemptDurationSeconds": max(60, math.ceil(spec.time_limit))}
    if options.scheduling_priority is not None:
        submit["schedulingPriorityOverride"] = options.scheduling_priority
    if options.share_identifier:
        submit["shareIdentifier"] = options.share_identifier
    plan = BatchPlan(job_id=job_id, run_dir=RUN_DIR, workdir=local_workdir,
                     job_definition=definition, submit_job=submit, node_job=node_job,
                     uploads=tuple(uploads), warnings=tuple(warnings))
    validate(plan)
    return plan
