"""The GCP Batch backend without Google: golden renders of every option, the request
validators, the official SDK (REST) against a loopback fake of the service
(tests/infra/fake_gcp_batch.py), and the node contract for real: the rendered container
command runs on the local backend's emulated nodes with BATCH_* faked per node."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from cloud_nodes import node_output, run_service_nodes
from conftest import require
from corral.backends import backend_class, configured_backend
from corral.backends.gcp_batch import GcpBatchBackend, GcpBatchOptions
from corral.backends.gcp_batch.render import GcpBatchPlan, job_name, label_value, render
from corral.backends.gcp_batch.validate import check_request, to_request
from corral.errors import BackendError, MissingDependency, SpecError, SubmitError
from corral.launchers.failures import parse_torchrun
from corral.nodelog import parse_pod_log
from corral.ports import PORT_BLOCK, pick_port
from corral.runtime.cloud_job import NodeJob
from corral.spec import JobSpec, JobState
from infra.fake_gcp_batch import FakeGcpBatch


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False


SDK = installed("google.cloud.batch_v1")
JOB_ID = "train-250101-120000-abc123"
PLACE = {"project": "my-proj", "location": "us-central1"}


def spec(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "train", "entrypoint": {"kind": "script", "path": "train.py"},
                            "nodes": 2, "procs_per_node": 2, "launcher": "torchrun",
                            "image": "python:3.11"}
    return JobSpec(**{**base, **fields})


def plan_for(job_spec: JobSpec | None = None, **options: Any) -> GcpBatchPlan:
    return render(job_spec or spec(), job_id=JOB_ID,
                  options=GcpBatchOptions(**{**PLACE, **options}),
                  local_workdir="/home/me/project")


def problems(exc: pytest.ExceptionInfo[SpecError]) -> dict[str, str]:
    return {field: accepted for field, _, accepted in exc.value.problems}


# -- golden renders --------------------------------------------------------------------------

GOLDEN_MINIMAL = """\
# corral job train-250101-120000-abc123: GCP Batch job train-250101-120000-abc123 in \
projects/my-proj/locations/us-central1 (2 task(s), one VM each)
# POST https://batch.googleapis.com/v1/projects/my-proj/locations/us-central1/jobs?\
jobId=train-250101-120000-abc123
{
  "parent": "projects/my-proj/locations/us-central1",
  "jobId": "train-250101-120000-abc123",
  "job": {
    "taskGroups": [
      {
        "taskSpec": {
          "runnables": [
            {
              "displayName": "corral-node",
              "container": {
                "imageUri": "python:3.11",
                "entrypoint": "python3",
                "commands": [
                  "-m",
                  "corral.runtime.cloud_node",
                  "gcp-batch"
                ]
              }
            }
          ],
          "environment": {
            "variables": {
              "CORRAL_JOB": "<CORRAL_JOB>",
              "PYTHONUNBUFFERED": "1"
            }
          },
          "maxRetryCount": 0
        },
        "taskCount": 2,
        "parallelism": 2,
        "taskCountPerNode": 1,
        "requireHostsFile": true
      }
    ],
    "allocationPolicy": {
      "instances": [
        {
          "policy": {
            "provisioningModel": "STANDARD"
          }
        }
      ]
    },
    "labels": {
      "managed-by": "corral",
      "corral-job": "train-250101-120000-abc123"
    },
    "logsPolicy": {
      "destination": "CLOUD_LOGGING"
    }
  }
}
# $CORRAL_JOB decoded:
"""


def test_dry_run_golden_minimal() -> None:
    plan = plan_for()
    text = re.sub(r'"CORRAL_JOB": "z1:[^"]+"', '"CORRAL_JOB": "<CORRAL_JOB>"',
                  plan.dry_run_text())
    head, _, decoded = text.partition("# $CORRAL_JOB decoded:\n")
    assert head + "# $CORRAL_JOB decoded:\n" == GOLDEN_MINIMAL
    shown = json.loads("\n".join(line[2:] for line in decoded.splitlines()))
    job = NodeJob.decode(plan.node_env()["CORRAL_JOB"])
    assert shown == json.loads(job.to_json())
    assert (job.job_id, job.run_dir, job.workdir, job.master_port, job.python,
            job.package_url) == (JOB_ID, "/opt/corral/run", "/workspace", 29500, "python3",
                                 None)
    assert job.spec["launcher"] == "torchrun" and job.spec["nodes"] == 2
    assert job.spec["workdir"] == "/workspace"  # where the node finds the code
    assert plan.node_command() == ["python3", "-m", "corral.runtime.cloud_node", "gcp-batch"]


EVERY_OPTION = {
    "allowed_locations": ["zones/us-central1-a", "regions/us-central1"],
    "image": "us-docker.pkg.dev/my-proj/ml/train:1", "python": "/opt/venv/bin/python",
    "container_options": "--shm-size=16g", "code": "package",
    "package_store": "gs://my-bucket/corral", "image_workdir": "/srv",
    "machine_type": "a2-highgpu-2g", "provisioning_model": "SPOT",
    "accelerator_type": "nvidia-tesla-a100", "install_gpu_drivers": False,
    "service_account": "trainer@my-proj.iam.gserviceaccount.com",
    "network": "projects/my-proj/global/networks/ml",
    "subnetwork": "projects/my-proj/regions/us-central1/subnetworks/ml",
    "no_external_ip": True, "labels": ["team=vision", "cost_center=r-d"], "priority": 42,
    "max_retry_count": 2, "logs": "NONE", "master_port": 23456, "poll_seconds": 30,
    "api_endpoint": "https://us-central1-batch.googleapis.com",
}
GOLDEN_EVERY_OPTION = {
    "parent": "projects/my-proj/locations/us-central1",
    "jobId": "train-250101-120000-abc123",
    "job": {
        "taskGroups": [{
            "taskSpec": {
                "runnables": [{"displayName": "corral-node", "container": {
                    "imageUri": "us-docker.pkg.dev/my-proj/ml/train:1",
                    "entrypoint": "/opt/venv/bin/python",
                    "commands": ["-m", "corral.runtime.cloud_node", "gcp-batch"],
                    "options": "--shm-size=16g"}}],
                "environment": {"variables": {"CORRAL_JOB": "<CORRAL_JOB>",
                                              "PYTHONUNBUFFERED": "1"}},
                "maxRetryCount": 2,
                "computeResource": {"cpuMilli": 7500, "memoryMib": 65536},
                "maxRunDuration": "5401s",
            },
            "taskCount": 4, "parallelism": 4, "taskCountPerNode": 1, "requireHostsFile": True,
        }],
        "allocationPolicy": {
            "instances": [{"policy": {"provisioningModel": "SPOT",
                                      "machineType": "a2-highgpu-2g",
                                      "accelerators": [{"type": "nvidia-tesla-a100",
                                                        "count": 2}]},
                           "installGpuDrivers": False}],
            "location": {"allowedLocations": ["zones/us-central1-a", "regions/us-central1"]},
            "serviceAccount": {"email": "trainer@my-proj.iam.gserviceaccount.com"},
            "network": {"networkInterfaces": [{
                "network": "projects/my-proj/global/networks/ml",
                "subnetwork": "projects/my-proj/regions/us-central1/subnetworks/ml",
                "noExternalIpAddress": True}]},
        },
        "labels": {"team": "vision", "cost_center": "r-d", "managed-by": "corral",
                   "corral-job": "train-250101-120000-abc123"},
        "priority": 42,
    },
}


def test_request_golden_every_option() -> None:
    job_spec = spec(nodes=4, procs_per_node=2, time_limit="1h30m0.5s",
                    resources={"cpus": 7.5, "memory": "64G", "gpus": 2},
                    entrypoint={"kind": "script", "path": "/home/me/project/src/train.py"})
    plan = plan_for(job_spec, **EVERY_OPTION)
    request = copy.deepcopy(plan.request)
    request["job"]["taskGroups"][0]["taskSpec"]["environment"]["variables"]["CORRAL_JOB"] = (
        "<CORRAL_JOB>")
    assert request == GOLDEN_EVERY_OPTION
    job = plan.node_job
    assert (job.workdir, job.python, job.master_port, job.package_url) == (
        "/opt/corral/work", "/opt/venv/bin/python", 23456,
        "gs://my-bucket/corral/train-250101-120000-abc123/code.tar.gz")
    assert job.spec["entrypoint"] == {"kind": "script", "path": "/opt/corral/work/src/train.py"}
    text = plan.dry_run_text()
    assert text.startswith(
        "# corral job train-250101-120000-abc123: GCP Batch job train-250101-120000-abc123 "
        "in projects/my-proj/locations/us-central1 (4 task(s), one VM each)\n"
        "# POST https://us-central1-batch.googleapis.com/v1/projects/my-proj/locations/"
        "us-central1/jobs?jobId=train-250101-120000-abc123\n"
        "# note: the working directory /home/me/project is packed at submit and uploaded to "
        "gs://my-bucket/corral/train-250101-120000-abc123/code.tar.gz\n")
    if SDK:  # and the SDK's message types take every field
        assert to_request(plan.request).job.task_groups[0].task_count == 4


@pytest.mark.parametrize("options, spec_fields, path, expected", [
    ({"image": "other:2"}, {}, "job.taskGroups.0.taskSpec.runnables.0.container.imageUri",
     "other:2"),
    ({}, {"image": "spec-image:1"}, "job.taskGroups.0.taskSpec.runnables.0.container.imageUri",
     "spec-image:1"),
    ({"python": "/usr/bin/python3.12"}, {},
     "job.taskGroups.0.taskSpec.runnables.0.container.entrypoint", "/usr/bin/python3.12"),
    ({"container_options": "--shm-size=8g"}, {},
     "job.taskGroups.0.taskSpec.runnables.0.container.options", "--shm-size=8g"),
    ({"machine_type": "n2-standard-8"}, {},
     "job.allocationPolicy.instances.0.policy.machineType", "n2-standard-8"),
    ({"provisioning_model": "SPOT"}, {},
     "job.allocationPolicy.instances.0.policy.provisioningModel", "SPOT"),
    ({"accelerator_type": "nvidia-l4"}, {"resources": {"gpus": 1}},
     "job.allocationPolicy.instances.0.policy.accelerators", [{"type": "nvidia-l4",
                                                               "count": 1}]),
    ({"accelerator_type": "nvidia-l4"}, {"resources": {"gpus": 1}},
     "job.allocationPolicy.instances.0.installGpuDrivers", True),
    ({"service_account": "sa@my-proj.iam.gserviceaccount.com"}, {},
     "job.allocationPolicy.serviceAccount", {"email": "sa@my-proj.iam.gserviceaccount.com"}),
    ({"network": "global/networks/default"}, {},
     "job.allocationPolicy.network.networkInterfaces.0", {"network": "global/networks/default"}),
    ({"subnetwork": "regions/us-central1/subnetworks/a"}, {},
     "job.allocationPolicy.network.networkInterfaces.0",
     {"subnetwork": "regions/us-central1/subnetworks/a"}),
    ({"no_external_ip": True}, {}, "job.allocationPolicy.network.networkInterfaces.0",
     {"noExternalIpAddress": True}),
    ({"allowed_locations": "zones/europe-west4-a"}, {}, "job.allocationPolicy.location",
     {"allowedLocations": ["zones/europe-west4-a"]}),
    ({"labels": {"team": "nlp"}}, {}, "job.labels.team", "nlp"),
    ({"priority": 7}, {}, "job.priority", 7),
    ({}, {"priority": 9}, "job.priority", 9),
    ({"max_retry_count": 3}, {}, "job.taskGroups.0.taskSpec.maxRetryCount", 3),
    ({"logs": "NONE"}, {}, "job.logsPolicy", None),
    ({}, {"resources": {"cpus": 0.5, "memory": "1.5G"}},
     "job.taskGroups.0.taskSpec.computeResource", {"cpuMilli": 500, "memoryMib": 1536}),
    ({}, {"time_limit": "2h"}, "job.taskGroups.0.taskSpec.maxRunDuration", "7200s"),
    ({}, {"nodes": 5}, "job.taskGroups.0.taskCount", 5),
    ({}, {"nodes": 5}, "job.taskGroups.0.parallelism", 5),
    ({"project": "other-proj", "location": "europe-west4"}, {}, "parent",
     "projects/other-proj/locations/europe-west4"),
])
def test_each_option_lands_in_the_request(options: dict[str, Any], spec_fields: dict[str, Any],
                                          path: str, expected: Any) -> None:
    value: Any = plan_for(spec(**spec_fields), **options).request
    for part in path.split("."):
        value = value[int(part)] if isinstance(value, list) else value.get(part)
    assert value == expected


@pytest.mark.parametrize("options, attribute, expected", [
    ({"image_workdir": "/code"}, "workdir", "/code"),
    ({"master_port": 31000}, "master_port", 31000),
    ({"python": "python3.11"}, "python", "python3.11"),
    ({"code": "package", "package_store": "gs://b/p/"}, "package_url",
     "gs://b/p/train-250101-120000-abc123/code.tar.gz"),
    ({"code": "package", "package_store": "gs://b"}, "workdir", "/opt/corral/work"),
])
def test_options_that_reach_the_node(options: dict[str, Any], attribute: str,
                                     expected: Any) -> None:
    plan = plan_for(**options)
    assert getattr(NodeJob.decode(plan.node_env()["CORRAL_JOB"]), attribute) == expected


def test_backend_options_poll_and_endpoint() -> None:
    backend = configured_backend("gcp-batch", {**PLACE, "poll_seconds": "2.5",
                                               "api_endpoint": "http://127.0.0.1:9"})
    assert isinstance(backend, GcpBatchBackend)
    assert backend.poll_interval == 2.5
    assert backend.engine_address() == {**PLACE, "api_endpoint": "http://127.0.0.1:9"}
    plan = backend.render(spec(), job_id=JOB_ID)
    assert "# POST http://127.0.0.1:9/v1/projects/my-proj/" in plan.dry_run_text()
    assert backend.capabilities.logs is False


def test_names_and_labels_follow_gcp_rules() -> None:
    assert job_name("9lives-250101-120000-abc123") == "j-9lives-250101-120000-abc123"
    long = "a" * 40 + "-250101-120000-abc123"
    assert len(job_name("x" * 80 + long)) <= 63 and job_name("x" * 80 + long).endswith(
        "250101-120000-abc123")
    assert label_value("Mixed.Case-ID") == "mixed-case-id"
    assert len(label_value("a" * 100)) == 63


def test_warnings_for_queue_and_spot() -> None:
    plan = plan_for(spec(queue="gpu"), provisioning_model="SPOT")
    assert any("queue 'gpu'" in w for w in plan.warnings)
    assert any("50001" in w for w in plan.warnings)
    assert "# warning: queue 'gpu'" in plan.dry_run_text()


# -- validators ------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value", [
    ("project", "My_Project"), ("location", "us central"),
    ("allowed_locations", "us-central1"), ("provisioning_model", "CHEAP"),
    ("machine_type", "N2 Standard"), ("accelerator_type", "Nvidia L4"),
    ("service_account", "not-an-email"), ("network", "default"),
    ("subnetwork", "subnet-a"), ("labels", "Team=x"), ("labels", "team=Vision"),
    ("labels", "goog-x=y"), ("labels", "novalue"), ("priority", 100), ("max_retry_count", 11),
    ("logs", "PATH"), ("master_port", 80), ("poll_seconds", 0), ("code", "git"),
    ("package_store", "s3://bucket"), ("image_workdir", "relative"),
    ("api_endpoint", "ftp://x"), ("package_max_mb", 0), ("python", ""),
    ("flavour", "volcano"), ("project", "a\x00b"),
])
def test_options_refuse_bad_values(key: str, value: Any) -> None:
    with pytest.raises(SpecError) as exc:
        GcpBatchOptions(**{key: value})
    assert f"gcp-batch.{key}" in problems(exc), exc.value


@pytest.mark.parametrize("options, spec_fields, field, says", [
    ({"project": None}, {}, "gcp-batch.project", "-o project="),
    ({"location": None}, {}, "gcp-batch.location", "-o location="),
    ({}, {"image": None}, "image", "--image IMAGE"),
    ({}, {"launcher": "mpirun"}, "launcher", "accepted on gcp-batch: none, torchrun"),
    ({}, {"launcher": "deepspeed"}, "launcher", "remote shell"),
    ({}, {"launcher": "ray", "procs_per_node": 1}, "launcher", "Ray"),
    ({}, {"resources": {"gpus": 2}}, "gcp-batch.accelerator_type", "nvidia-l4"),
    ({"accelerator_type": "nvidia-l4"}, {}, "resources.gpus", "--gpus N"),
    ({}, {"resources": {"gpus": 0.5}}, "resources.gpus", "whole GPUs"),
    ({"code": "package"}, {}, "gcp-batch.package_store", "gs://BUCKET"),
    ({}, {"priority": -5}, "priority", "0 to 99"),
    ({}, {"entrypoint": {"kind": "function", "fn": print}, "launcher": "none"},
     "entrypoint", "Cloud Logging"),
])
def test_render_refuses_what_gcp_batch_cannot_run(options: dict[str, Any],
                                                  spec_fields: dict[str, Any], field: str,
                                                  says: str) -> None:
    with pytest.raises(SpecError) as exc:
        plan_for(spec(**spec_fields), **options)
    assert says in problems(exc)[field], exc.value


def _broken(path: str, value: Any) -> dict[str, Any]:
    request = copy.deepcopy(plan_for(spec(resources={"cpus": 2, "memory": "4G"},
                                          time_limit=60)).request)
    *parents, last = path.split(".")
    target: Any = request
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    elif value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return request


_DELETE = object()
GROUP = "job.taskGroups.0"


@pytest.mark.parametrize("path, value, field", [
    ("jobId", "Train_1", "jobId"),
    ("jobId", "1train", "jobId"),
    ("jobId", "t" * 64, "jobId"),
    ("jobId", "train-", "jobId"),
    ("parent", "projects/p", "parent"),
    ("job.taskGroups", [], "job.taskGroups"),
    (f"{GROUP}.taskCount", 0, "job.taskGroups[0].taskCount"),
    (f"{GROUP}.parallelism", 3, "job.taskGroups[0].parallelism"),
    (f"{GROUP}.taskSpec.computeResource.cpuMilli", 0,
     "job.taskGroups[0].taskSpec.computeResource.cpuMilli"),
    (f"{GROUP}.taskSpec.computeResource.memoryMib", -1,
     "job.taskGroups[0].taskSpec.computeResource.memoryMib"),
    (f"{GROUP}.taskSpec.runnables.0.container.imageUri", "",
     "job.taskGroups[0].taskSpec.runnables[0].container.imageUri"),
    (f"{GROUP}.taskSpec.runnables", [], "job.taskGroups[0].taskSpec.runnables"),
    (f"{GROUP}.taskSpec", _DELETE, "job.taskGroups[0].taskSpec"),
    (f"{GROUP}.taskSpec.maxRetryCount", 11, "job.taskGroups[0].taskSpec.maxRetryCount"),
    (f"{GROUP}.taskSpec.maxRunDuration", "1h", "job.taskGroups[0].taskSpec.maxRunDuration"),
    (f"{GROUP}.taskSpec.maxRunDuration", "0s", "job.taskGroups[0].taskSpec.maxRunDuration"),
    ("job.labels.Team", "x", "job.labels.Team"),
    ("job.labels.team", "x" * 64, "job.labels.team"),
    ("job.labels.goog-billing", "x", "job.labels.goog-billing"),
    ("job.priority", 100, "job.priority"),
    ("job.allocationPolicy.instances.0.policy.accelerators", [{"type": "", "count": 0}],
     "job.allocationPolicy.instances[0].policy.accelerators[0].type"),
    ("job.allocationPolicy.instances.0.policy.accelerators", [{"type": "nvidia-l4",
                                                               "count": 0}],
     "job.allocationPolicy.instances[0].policy.accelerators[0].count"),
    ("job.allocationPolicy.location", {"allowedLocations": ["us-central1"]},
     "job.allocationPolicy.location.allowedLocations[0]"),
])
def test_request_checks_name_the_field(path: str, value: Any, field: str) -> None:
    with pytest.raises(SpecError) as exc:
        check_request(_broken(path, value))
    assert field in problems(exc), exc.value
    if SDK:
        with pytest.raises(SpecError):  # and the same before anything is sent
            to_request(_broken(path, value))


def test_request_checks_report_every_problem_at_once() -> None:
    request = _broken("jobId", "BAD")
    request["job"]["priority"] = 500
    request["job"]["taskGroups"][0]["taskCount"] = 0
    with pytest.raises(SpecError) as exc:
        check_request(request)
    assert {"jobId", "job.priority", "job.taskGroups[0].taskCount"} <= set(problems(exc))


@pytest.mark.parametrize("path, value, field, says", [
    (f"{GROUP}.bogus", 1, "job.taskGroups[0].bogus", "unknown field; accepted: name, taskSpec"),
    (f"{GROUP}.taskSpec.runnables.0.container.imageURI", "x",
     "job.taskGroups[0].taskSpec.runnables[0].container.imageURI", "imageUri"),
    ("job.allocationPolicy.instances.0.policy.provisioningModel", "CHEAP",
     "job.allocationPolicy.instances[0].policy.provisioningModel", "accepted: STANDARD, SPOT"),
    ("job.logsPolicy.destination", "STDOUT", "job.logsPolicy.destination",
     "accepted: CLOUD_LOGGING, PATH"),
])
def test_sdk_types_refuse_unknown_fields_and_enum_values(path: str, value: Any, field: str,
                                                         says: str) -> None:
    require(SDK, "google-cloud-batch is not installed (pip install 'corral[gcp]')")
    request = _broken(path, value)
    check_request(request)  # only the SDK's types know these
    with pytest.raises(SpecError) as exc:
        to_request(request)
    assert says in problems(exc)[field], exc.value


# -- the SDK against the fake service --------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeGcpBatch]:
    require(SDK, "google-cloud-batch is not installed (pip install 'corral[gcp]')")
    service = FakeGcpBatch().start()
    yield service
    service.stop()


def backend_for(fake: FakeGcpBatch, **options: Any) -> GcpBatchBackend:
    return GcpBatchBackend(GcpBatchOptions(**{**PLACE, "api_endpoint": fake.url,
                                              "poll_seconds": 0.01, **options}))


def settle(backend: GcpBatchBackend, job_id: str) -> Any:
    time.sleep(0.02)  # past the poll interval: the next describe asks the fake
    return backend.describe(job_id)


def test_submit_describe_fail_names_the_node(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)
    ref = backend.submit(spec())
    record = backend.store.get(ref.job_id)
    assert record.engine_id == f"projects/my-proj/locations/us-central1/jobs/{job_name(ref.job_id)}"
    method, path, body = fake.requests[0]
    assert (method, path) == ("POST", "projects/my-proj/locations/us-central1/jobs")
    from google.cloud import batch_v1 as sdk

    plan = backend.render(spec(), job_id=ref.job_id)
    assert sdk.Job.from_json(json.dumps(body)) == sdk.Job.from_json(json.dumps(plan.job))
    assert settle(backend, ref.job_id).state is JobState.PENDING
    fake.advance(record.engine_id, "SCHEDULED")
    status = settle(backend, ref.job_id)
    assert status.state is JobState.PENDING and "to SCHEDULED" in status.reason
    fake.advance(record.engine_id, "RUNNING")
    status = settle(backend, ref.job_id)
    assert status.state is JobState.RUNNING
    assert [(r.rank, r.node, r.state) for r in status.ranks] == [
        (0, 0, JobState.RUNNING), (1, 0, JobState.RUNNING), (2, 1, JobState.RUNNING),
        (3, 1, JobState.RUNNING)]
    now = time.time()
    fake.set_task(record.engine_id, 1, "FAILED", exit_code=3, at=now - 5)
    fake.set_task(record.engine_id, 0, "FAILED", exit_code=143, at=now - 2)
    fake.advance(record.engine_id, "FAILED")
    status = settle(backend, ref.job_id)
    assert status.state is JobState.FAILED
    assert status.failure is not None
    assert (status.failure.node, status.failure.returncode) == (1, 3)
    assert "node 1 failed: exit code 3 (GCP Batch task 1:" in status.reason
    assert [(r.node, r.state) for r in status.ranks] == [
        (0, JobState.CANCELLED), (0, JobState.CANCELLED), (1, JobState.FAILED),
        (1, JobState.FAILED)]
    assert any("node 1: task 1: FAILED" in n for n in status.notes)


def test_succeeded_and_timed_out(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)
    done, late = backend.submit(spec()), backend.submit(spec(time_limit=60))
    for ref in (done, late):
        name = backend.store.get(ref.job_id).engine_id
        fake.advance(name, "SCHEDULED")
        fake.advance(name, "RUNNING")
    fake.advance(backend.store.get(done.job_id).engine_id, "SUCCEEDED")
    late_name = backend.store.get(late.job_id).engine_id
    fake.set_task(late_name, 0, "FAILED", exit_code=50005)
    fake.advance(late_name, "FAILED")
    status = settle(backend, done.job_id)
    assert status.state is JobState.SUCCEEDED
    assert {r.returncode for r in status.ranks} == {0}
    status = backend.describe(late.job_id)
    assert status.state is JobState.TIMEOUT
    assert "maxRunDuration" in status.reason


def test_cancel_is_idempotent(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)
    ref = backend.submit(spec())
    name = backend.store.get(ref.job_id).engine_id
    fake.advance(name, "SCHEDULED")
    status = backend.cancel(ref.job_id, timeout=10)
    assert status.state is JobState.CANCELLED
    assert [r[:2] for r in fake.requests if r[0] == "POST" and r[1].endswith(":cancel")] == [
        ("POST", f"{name}:cancel")]
    assert backend.cancel(ref.job_id).state is JobState.CANCELLED  # nothing more is sent
    record = backend.store.get(ref.job_id)
    backend._stop(record)  # Batch: FAILED_PRECONDITION (already cancelled): nothing to stop
    fake.jobs.pop(name)
    backend._stop(record)  # NotFound: nothing to stop


def test_a_deleted_job_is_cancelled(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)
    ref = backend.submit(spec())
    name = backend.store.get(ref.job_id).engine_id
    fake.jobs.pop(name)  # deleted by someone else (gcloud batch jobs delete)
    status = settle(backend, ref.job_id)
    assert status.state is JobState.CANCELLED and "was deleted" in status.reason


def test_find_submitted_by_name_and_label(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)
    ref = backend.submit(spec())
    record = backend.store.get(ref.job_id)
    assert backend.find_submitted([record]) == {ref.job_id: record.engine_id}
    fake.job(record.engine_id)["labels"]["corral-job"] = "someone-else"
    assert backend.find_submitted([record]) == {}


@pytest.mark.parametrize("code, says", [
    (403, "roles/batch.jobsEditor"), (401, "gcloud auth application-default login"),
    (404, "check -o project=my-proj and -o location=us-central1"),
    (409, "already exists"), (400, "GCP Batch answered 400"),
])
def test_service_errors_become_submit_errors(fake: FakeGcpBatch, code: int, says: str) -> None:
    backend = backend_for(fake)
    fake.fail_next(code, "already exists" if code == 409 else "no")
    with pytest.raises(SubmitError) as exc:
        backend.submit(spec(name=f"e{code}"))
    assert says in str(exc.value)
    (record,) = backend.store.jobs("gcp-batch")
    assert record.state is JobState.FAILED and "submission failed" in record.reason


def test_unreachable_endpoint() -> None:
    port = pick_port()
    backend = GcpBatchBackend(GcpBatchOptions(**PLACE, api_endpoint=f"http://127.0.0.1:{port}"))
    with pytest.raises(SubmitError, match=f"cannot create .*127.0.0.1:{port}"):
        backend.submit(spec())


def test_logs_say_where_they_are(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)
    ref = backend.submit(spec())
    uid = fake.job(backend.store.get(ref.job_id).engine_id)["uid"]
    with pytest.raises(BackendError) as exc:
        list(backend.logs(ref.job_id))
    assert (f'logName="projects/my-proj/logs/batch_task_logs" AND labels.job_uid="{uid}"'
            in str(exc.value))
    with pytest.raises(SpecError):
        list(backend.logs(ref.job_id, rank=9))
    quiet = backend_for(fake, logs="NONE")
    ref = quiet.submit(spec())
    with pytest.raises(BackendError, match="logs=NONE"):
        list(quiet.logs(ref.job_id))


def test_foreground_run_says_where_the_output_is_and_waits(fake: FakeGcpBatch) -> None:
    backend = backend_for(fake)

    def service() -> None:  # the job starts and ends while run() waits
        deadline = time.monotonic() + 20
        while not fake.jobs and time.monotonic() < deadline:
            time.sleep(0.01)
        (name,) = fake.jobs
        for state in ("SCHEDULED", "RUNNING", "SUCCEEDED"):
            time.sleep(0.1)
            fake.advance(name, state)

    helper = threading.Thread(target=service)
    helper.start()
    lines: list[str] = []
    status = backend.run(spec(), sink=lambda source, line: lines.append(line))
    helper.join()
    assert status.state is JobState.SUCCEEDED
    assert len(lines) == 1 and "batch_task_logs" in lines[0]


def test_code_package_is_uploaded_before_the_job(fake: FakeGcpBatch, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    sent: list[tuple[str, bytes]] = []
    monkeypatch.setattr("corral.backends.gcp_batch.client.upload",
                        lambda data, url: sent.append((url, data)) or None)
    backend = backend_for(fake, code="package", package_store="gs://bucket/corral")
    ref = backend.submit(spec(workdir=str(tmp_path)))
    ((url, data),) = sent
    assert url == f"gs://bucket/corral/{ref.job_id}/code.tar.gz"
    with tarfile.open(fileobj=BytesIO(data)) as archive:
        assert archive.getnames() == ["train.py"]
    body = fake.requests[-1][2]
    job = NodeJob.decode(body["taskGroups"][0]["taskSpec"]["environment"]["variables"][
        "CORRAL_JOB"])
    assert job.package_url == url and job.workdir == "/opt/corral/work"
    with pytest.raises(SubmitError, match="not found"):  # nothing is uploaded or sent
        backend.submit(spec(workdir=str(tmp_path), entrypoint={"kind": "script",
                                                              "path": "missing.py"}))
    assert len(sent) == 1
    removed: list[list[str]] = []
    monkeypatch.setattr("corral.backends.gcp_batch.client.remove", removed.append)
    fake.fail_next(403, "Permission denied on resource project", "PERMISSION_DENIED")
    with pytest.raises(SubmitError):  # the job was refused: its package does not stay
        backend.submit(spec(workdir=str(tmp_path)))
    assert len(sent) == 2 and removed == [[sent[1][0]]]


def test_missing_sdk_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [m for m in sys.modules if m.startswith("google.cloud.batch")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "google.cloud.batch_v1", None)  # import fails
    assert backend_class("gcp-batch") is GcpBatchBackend  # importing needs no SDK
    backend = GcpBatchBackend(GcpBatchOptions(**PLACE))
    plan = backend.render(spec())  # a dry run still works, checked without the SDK
    assert any("pip install 'corral[gcp]'" in n for n in plan.notes)
    with pytest.raises(MissingDependency) as exc:
        backend.submit(spec())
    assert "google-cloud-batch" in str(exc.value)
    assert "pip install 'corral[gcp]'" in str(exc.value)
    assert backend.store.jobs("gcp-batch") == []  # nothing recorded


# -- the node contract, for real -------------------------------------------------------------

DDP = """\
import os, sys
import torch, torch.distributed as dist
rank = int(os.environ["RANK"])
print(f"rank {rank} on task {os.environ['BATCH_TASK_INDEX']}", flush=True)
if rank == int(os.environ.get("FAIL_RANK", "-1")):
    sys.exit(3)  # before the process group: the other ranks wait until they are stopped
dist.init_process_group("gloo")
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"sum {t.item():g}", flush=True)
dist.destroy_process_group()
"""
# Node 1's VM comes up a moment later (as VMs do): its torchrun joins the rendezvous after
# node 0's, so c10d numbers node 0's ranks first. The rendered command runs as it is.
DELAYED = ["sh", "-c", 'sleep "${BOOT_DELAY:-0}"; exec "$@"', "sh"]


def run_nodes(tmp_path: Path, fail_rank: int | None = None) -> tuple[Any, GcpBatchPlan]:
    require(installed("torch"), "torch is not installed")
    work = tmp_path / "image-workdir"
    work.mkdir()
    (work / "ddp.py").write_text(DDP)
    env = {"FAIL_RANK": str(fail_rank)} if fail_rank is not None else {}
    backend = GcpBatchBackend(GcpBatchOptions(
        **PLACE, python=sys.executable, image_workdir=str(work),
        master_port=pick_port(span=PORT_BLOCK)))
    plan = backend.render(spec(entrypoint={"kind": "script", "path": "ddp.py"}, env=env,
                               time_limit=120))
    hosts = tmp_path / "batch-hosts"
    hosts.write_text("127.0.0.1\n127.0.0.1\n")  # one line per task, in task order
    node_env = {n: {**plan.node_env(), "BATCH_TASK_INDEX": str(n), "BATCH_TASK_COUNT": "2",
                    "BATCH_HOSTS_FILE": str(hosts), "BOOT_DELAY": str(n)}
                for n in range(2)}
    status = run_service_nodes([*DELAYED, *plan.node_command()], node_env, tmp_path / "nodes",
                               name="gcp-nodes", timeout=120)
    return status, plan


def rank_lines(status: Any) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for source, text in parse_pod_log(node_output(status).splitlines(), 0):
        if source.kind == "rank":
            found.setdefault(source.number, []).append(text)
    return found


@pytest.mark.slow
def test_node_contract_ddp_all_reduce(tmp_path: Path) -> None:
    status, _ = run_nodes(tmp_path)
    assert status.state is JobState.SUCCEEDED, status.summary()
    lines = rank_lines(status)
    assert sorted(lines) == [0, 1, 2, 3]
    assert all("sum 10" in lines[r] for r in range(4)), lines
    assert {r: lines[r][0] for r in range(4)} == {
        0: "rank 0 on task 0", 1: "rank 1 on task 0", 2: "rank 2 on task 1",
        3: "rank 3 on task 1"}
    assert "gcp-batch node 1 is corral node 1 of 2" in node_output(status)


@pytest.mark.slow
def test_node_contract_failure_named_by_local_run_and_describe(
        tmp_path: Path, fake: FakeGcpBatch) -> None:
    status, _ = run_nodes(tmp_path, fail_rank=2)
    assert status.state is JobState.FAILED, status.summary()
    assert rank_lines(status)[2][0] == "rank 2 on task 1"
    assert status.failure is not None and status.failure.node == 1, status.summary()
    output = node_output(status)
    node1 = "\n".join(t for s, t in parse_pod_log(output.splitlines(), 1) if s.kind == "node")
    inner = parse_torchrun(node1)  # the node's log names the rank, as Cloud Logging keeps it
    assert inner is not None and (inner.rank, inner.returncode) == (2, 3)
    codes = {r.node: r.returncode for r in status.ranks}  # each emulated node's exit code
    assert codes[1] == status.failure.returncode != 0
    # GCP Batch reports the same task ends: describe names node 1 with its exit code
    backend = backend_for(fake)
    ref = backend.submit(spec())
    name = backend.store.get(ref.job_id).engine_id
    fake.advance(name, "SCHEDULED")
    fake.advance(name, "RUNNING")
    now = time.time()
    fake.set_task(name, 1, "FAILED", exit_code=codes[1], at=now - 1)
    fake.set_task(name, 0, "FAILED", exit_code=128 + 15, at=now)  # stopped by Batch
    fake.advance(name, "FAILED")
    described = settle(backend, ref.job_id)
    assert described.state is JobState.FAILED
    assert described.failure is not None
    assert (described.failure.node, described.failure.returncode) == (1, codes[1])
    assert described.reason.startswith(f"node 1 failed: exit code {codes[1]}")
