"""Render a job as Azure Batch requests. Pure: no account is asked anything.

One Azure Batch job per corral job, on the pool ``-o pool=ID``, holding one multi-instance
task of ``spec.nodes`` instances. Azure runs such a task in two parts:

* the *coordination command* runs on every node (the primary's and each subtask's), and all
  of them must return before anything else starts;
* the *primary command* then runs on the master node only; when it ends, Azure ends the
  subtasks, and its exit code is the task's.

So the coordination command starts corral's node agent (``python3 -m
corral.runtime.cloud_node azure-batch``) in the background on every node but the master,
its output in the task's working directory (``corral-node.log``, its exit code in
``corral-node.rc``), and returns; the primary command runs the same agent in the
foreground on the master, which :mod:`corral.runtime.cloud_env` makes node 0 (the
rendezvous). Each node renders its own processes with the job's launcher once it knows where
it stands, from ``AZ_BATCH_HOST_LIST`` and ``AZ_BATCH_MASTER_NODE``; the job itself reaches
them in ``$CORRAL_JOB`` (:mod:`corral.runtime.cloud_job`).

A worker's failure reaches the master only through the launcher: torchrun's collectives (or
its rendezvous) fail on node 0 when a rank of another node dies, and node 0's agent then ends
the primary command. Nothing else carries it there (the coordination command has long
returned 0), so corral's describe reads every node's log once the task has ended.

Three requests, in this order (Azure's advice for a job that ends with its tasks: add it
with ``onAllTasksComplete: noaction``, add its tasks, then switch to ``terminatejob``, since a
job with no tasks yet counts as having completed them all)::

    POST  /jobs                   JobAddParameter
    POST  /jobs/{job}/tasks       TaskAddParameter (multiInstanceSettings)
    PATCH /jobs/{job}             JobPatchParameter {"onAllTasksComplete": "terminatejob"}
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from corral.errors import SpecError
from corral.runtime.cloud_job import ALL_HOSTS_LAUNCHERS, NodeJob, launcher_problem
from corral.spec import Function, JobSpec, Script

from .options import AZURE_ID, AzureBatchOptions

SERVICE = "azure-batch"
API_VERSION = "2024-02-01.19.0"  # what azure-batch 14.2.0 speaks (a test checks it)
TASK_ID = "corral"
JOB_ID_METADATA = "corral-job-id"
NODE_LOG = "corral-node.log"  # a worker's agent output, in its task working directory
NODE_RC = "corral-node.rc"  # a worker's agent exit code, beside it
RUN_DIR_NAME = "corral-run"
WORK_DIR_NAME = "corral-work"  # code=package: unpacked here, in the task working directory
CONTENT_TYPE = "application/json; odata=minimalmetadata; charset=utf-8"


def azure_job_id(job_id: str) -> str:
    """An Azure Batch job id for a corral id: the id itself where Azure allows it."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", job_id).strip("-") or "job"
    if len(slug) > 64:  # keep the unique end: yymmdd-hhmmss-<6 hex>
        slug = slug[:43].rstrip("-") + "-" + slug[-20:]
    return slug


def iso_duration(seconds: float) -> str:
    """Whole seconds (rounded up) as ISO 8601, written as the SDK writes a timedelta."""
    total = max(1, math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "")


def package_url(store: str, job_id: str, name: str = "code.tar.gz") -> str:
    """Where a job's code package (or a function's payload) goes in object storage."""
    return f"{store.rstrip('/')}/{job_id}/{name}"


def agent_script(python: str, background: bool = False) -> str:
    """corral's node agent, run in the task's working directory (every Azure task starts
    there; the ``cd`` says so, and lets emulated nodes on one machine keep apart)."""
    setup = (f'cd "$AZ_BATCH_TASK_WORKING_DIR" && export CORRAL_NODE_RUN_DIR='
             f'"$AZ_BATCH_TASK_WORKING_DIR/{RUN_DIR_NAME}" && ')
    agent = f"{shlex.quote(python)} -m corral.runtime.cloud_node {SERVICE}"
    if background:
        return f'{setup}{agent}; echo $? > "$AZ_BATCH_TASK_WORKING_DIR/{NODE_RC}"'
    return f"{setup}exec {agent}"


def shell(script: str) -> str:
    """A command line Azure runs as it is (no shell of its own on Linux): ``/bin/sh -c``."""
    return f"/bin/sh -c {shlex.quote(script)}"


def primary_command(python: str) -> str:
    """The master node's command: the agent in the foreground (corral's node 0)."""
    return shell(agent_script(python))


def coordination_command(python: str) -> str:
    """Every node's first command. Not the master: the agent, detached, output to a file."""
    script = (
        'if [ "$AZ_BATCH_IS_CURRENT_NODE_MASTER" = true ]; then exit 0; fi; '
        'cd "$AZ_BATCH_TASK_WORKING_DIR" || exit 1; '
        f"nohup /bin/sh -c {shlex.quote(agent_script(python, background=True))} "
        f"> {NODE_LOG} 2>&1 < /dev/null & "
        f'echo "corral: node agent started in the background (pid $!); its output: '
        f'$AZ_BATCH_TASK_WORKING_DIR/{NODE_LOG}"')
    return shell(script)


@dataclass(frozen=True)
class Request:
    """One REST request: its method, path (with the query) and JSON body."""

    method: str
    path: str
    body: dict[str, Any]
    model: str  # the SDK model the body is, for validation (corral.backends.azure_batch.validate)
    what: str  # how errors name it: job, task, job patch

    def text(self, account_url: str | None) -> str:
        base = account_url or "{batchUrl}"
        body = json.dumps(self.body, indent=2, ensure_ascii=False)
        return f"{self.method} {base}{self.path}\nContent-Type: {CONTENT_TYPE}\n\n{body}\n"


@dataclass(frozen=True)
class AzurePlan:
    job_id: str  # corral's
    azure_job_id: str
    task_id: str
    pool: str
    nodes: int
    run_dir: str  # on each node
    workdir: str  # on the submitting machine (packed with code=package)
    package: bool
    package_url: str | None
    payload_url: str | None
    account_url: str | None
    job: dict[str, Any]  # JobAddParameter
    task: dict[str, Any]  # TaskAddParameter
    finish: dict[str, Any]  # JobPatchParameter
    node_job: NodeJob
    warnings: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def requests(self) -> tuple[Request, ...]:
        query = f"?api-version={API_VERSION}"
        return (
            Request("POST", f"/jobs{query}", self.job, "JobAddParameter", "job"),
            Request("POST", f"/jobs/{self.azure_job_id}/tasks{query}", self.task,
                    "TaskAddParameter", "task"),
            Request("PATCH", f"/jobs/{self.azure_job_id}{query}", self.finish,
                    "JobPatchParameter", "job patch"),
        )

    def dry_run_text(self) -> str:
        head = [f"# corral job {self.job_id}: Azure Batch job {self.azure_job_id} on pool "
                f"{self.pool}, one multi-instance task of {self.nodes} node(s)",
                "# account: " + (self.account_url or "(not set: -o account_url=URL or "
                                 "$AZURE_BATCH_ENDPOINT)") + "; shared key (not shown)"]
        head += [f"# warning: {w}" for w in self.warnings]
        head += [f"# note: {n}" for n in self.notes]
        head.append("# CORRAL_JOB, as every node reads it (encoded in the task's environment):")
        head += ["#   " + line for line in self.node_job.to_json().splitlines()]
        return "\n".join(head) + "\n\n" + "\n".join(
            r.text(self.account_url) for r in self.requests())


def check(spec: JobSpec, options: AzureBatchOptions) -> tuple[str, list[str]]:
    """The pool to run on, and warnings; what Azure Batch cannot do is refused here."""
    problems: list[tuple[str, Any, str]] = []
    pool = options.pool or spec.queue
    if not pool:
        problems.append(("azure-batch.pool", None, "the pool to run on: -o pool=POOL_ID (a "
                         "pool with inter-node communication enabled and one task slot per "
                         "node), or --queue POOL_ID"))
    elif not re.match(AZURE_ID, pool):
        problems.append(("queue", pool, "on azure-batch the queue is the pool's id: letters, "
                         "digits, - and _, at most 64"))
    refused = launcher_problem(spec.launcher, "azure-batch", ALL_HOSTS_LAUNCHERS)
    if refused:
        problems.append(refused)
    if options.code == "package" and not options.package_store:
        problems.append(("azure-batch.package_store", None, "code=package ships the working "
                         "directory through object storage: -o package_store=az://CONTAINER/"
                         "PREFIX (fsspec, the nodes fetch it with their own credentials), or "
                         "run the code in the image with -o code=image"))
    elif isinstance(spec.entrypoint, Function) and not options.package_store:
        problems.append(("azure-batch.package_store", None, "a Python function travels to the "
                         "nodes through object storage: -o package_store=az://CONTAINER/PREFIX"))
    if problems:
        raise SpecError(problems)
    warnings = []
    res = spec.resources
    asked = [f"{name}={value:g}" for name, value in (
        ("cpus", res.cpus), ("memory_mb", res.memory_mb), ("gpus", res.gpus)) if value]
    if asked:
        warnings.append(f"resources ({', '.join(asked)}) are not asked of Azure Batch: each "
                        f"node is a whole VM of pool {pool}, whose VM size decides")
    if spec.launcher == "none" and spec.nodes > 1:
        warnings.append("launcher 'none' on several nodes: Azure ends every node when node 0's "
                        "command ends, and nothing on node 0 waits for the others")
    assert pool is not None
    return pool, warnings


def _entry_on_node(spec: JobSpec, local_workdir: str) -> JobSpec:
    """A script given by an absolute path inside the working directory runs from the
    package's copy (the package unpacks into the node's working directory)."""
    entry = spec.entrypoint
    prefix = local_workdir.rstrip("/") + "/"
    if isinstance(entry, Script) and entry.path.startswith(prefix):
        return spec.replace(entrypoint=Script(path=entry.path[len(prefix):]))
    return spec


def render(spec: JobSpec, *, job_id: str, options: AzureBatchOptions, local_workdir: str,
           account_url: str | None = None) -> AzurePlan:
    """The job's requests. ``account_url`` is where they would go (shown by a dry run)."""
    from corral.backends.base import spec_summary

    pool, warnings = check(spec, options)
    package = options.code == "package"
    if package:
        spec = _entry_on_node(spec, local_workdir)
    store = options.package_store
    code_url = package_url(store, job_id) if package and store else None
    payload_url = (package_url(store, job_id, "function.pkl")
                   if isinstance(spec.entrypoint, Function) and store else None)
    run_dir = f"/tmp/corral-run/{job_id}"  # the command line moves it to the task's folder
    node_job = NodeJob(
        job_id=job_id, spec=spec_summary(spec), run_dir=run_dir,
        workdir=WORK_DIR_NAME if package else options.image_workdir,
        master_port=options.master_port, python=options.python, package_url=code_url,
        payload_url=payload_url)
    azure_id = azure_job_id(job_id)
    job: dict[str, Any] = {
        "id": azure_id,
        "displayName": spec.name,
        "priority": spec.priority,
        "poolInfo": {"poolId": pool},
        "onAllTasksComplete": "noaction",  # terminatejob once the task is in (see above)
        "onTaskFailure": "noaction",
        "metadata": [{"name": JOB_ID_METADATA, "value": job_id},
                     {"name": "created-by", "value": "corral"}],
    }
    constraints: dict[str, Any] = {"maxTaskRetryCount": options.max_task_retry_count}
    limit = spec.time_limit or options.max_wall_clock
    if limit:
        constraints["maxWallClockTime"] = iso_duration(limit)
    if options.retention:
        constraints["retentionTime"] = iso_duration(options.retention)
    task: dict[str, Any] = {
        "id": TASK_ID,
        "displayName": f"{spec.name}: {spec.nodes} node(s) x {spec.procs_per_node}",
        "commandLine": primary_command(options.python),
        "environmentSettings": [{"name": "CORRAL_JOB", "value": node_job.encode()},
                                {"name": "PYTHONUNBUFFERED", "value": "1"}],
        "constraints": constraints,
        "userIdentity": {"autoUser": {"scope": "task",
                                      "elevationLevel": options.elevation}},
        "multiInstanceSettings": {"numberOfInstances": spec.nodes,
                                  "coordinationCommandLine": coordination_command(
                                      options.python)},
    }
    image = options.image or spec.image
    if image:
        container: dict[str, Any] = {"imageName": image,
                                     "workingDirectory": "taskWorkingDirectory"}
        if options.container_run_options:
            container["containerRunOptions"] = options.container_run_options
        task["containerSettings"] = container
    notes = []
    if code_url:
        notes.append(f"the working directory {local_workdir} is packed at submit and "
                     f"uploaded to {code_url}")
    if payload_url:
        notes.append(f"the function and its arguments are uploaded to {payload_url}")
    if not image:
        notes.append(f"no image: the task runs on pool {pool}'s VMs, which need "
                     f"{options.python} with corral installed")
    return AzurePlan(
        job_id=job_id, azure_job_id=azure_id, task_id=TASK_ID, pool=pool, nodes=spec.nodes,
        run_dir=run_dir, workdir=local_workdir, package=package, package_url=code_url,
        payload_url=payload_url, account_url=account_url, job=job, task=task,
        finish={"onAllTasksComplete": "terminatejob"}, node_job=node_job,
        warnings=tuple(warnings), notes=tuple(notes))
