"""The Azure Batch backend without Azure: golden requests for every option, the validator
built from the SDK's schema rejecting bad ones, the real SDK (azure-batch 14.2) against a
loopback fake of the REST API (tests/infra/fake_azure_batch.py), and the node contract for
real: the rendered command lines run as processes on emulated nodes, with Azure's AZ_BATCH_*
variables faked per node on loopback, torchrun's DDP across them."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_nodes import run_service_nodes
from conftest import require
from corral.backends import backend_class, backend_options
from corral.backends.azure_batch import AzureBatchBackend, AzureBatchOptions
from corral.backends.azure_batch.client import make_client
from corral.backends.azure_batch.render import (
    API_VERSION,
    NODE_LOG,
    NODE_RC,
    AzurePlan,
    azure_job_id,
    iso_duration,
    render,
)
from corral.backends.azure_batch.validate import check_request
from corral.backends.local import LocalBackend
from corral.errors import MissingDependency, SpecError, SubmitError
from corral.ports import PORT_BLOCK, pick_port
from corral.runtime.cloud_job import NodeJob
from corral.spec import JobSpec, JobState
from infra.fake_azure_batch import FakeAzureBatch

JOB_ID = "train-261129-101010-abcdef"
KEY = base64.b64encode(b"not a real key, the fake does not check it").decode()
WORKDIR = "/home/me/project"


def spec(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "train", "entrypoint": {"kind": "script",
                                                            "path": "train.py"},
                            "nodes": 2, "procs_per_node": 2, "launcher": "torchrun"}
    return JobSpec(**{**base, **fields})


def plan_for(job_spec: JobSpec | None = None, **options: Any) -> AzurePlan:
    options = {"pool": "gpu", "package_store": "az://corral/jobs", **options}
    return render(job_spec or spec(), job_id=JOB_ID, options=AzureBatchOptions(**options),
                  local_workdir=WORKDIR, account_url="https://acct.westeurope.batch.azure.com")


def env_of(plan: AzurePlan) -> dict[str, str]:
    return {e["name"]: e["value"] for e in plan.task["environmentSettings"]}


# -- golden requests -------------------------------------------------------------------------

PRIMARY = ("/bin/sh -c 'cd \"$AZ_BATCH_TASK_WORKING_DIR\" && export CORRAL_NODE_RUN_DIR="
           "\"$AZ_BATCH_TASK_WORKING_DIR/corral-run\" && exec python3 -m "
           "corral.runtime.cloud_node azure-batch'")
COORDINATION = (
    "/bin/sh -c 'if [ \"$AZ_BATCH_IS_CURRENT_NODE_MASTER\" = true ]; then exit 0; fi; "
    "cd \"$AZ_BATCH_TASK_WORKING_DIR\" || exit 1; nohup /bin/sh -c '\"'\"'cd "
    "\"$AZ_BATCH_TASK_WORKING_DIR\" && export CORRAL_NODE_RUN_DIR=\"$AZ_BATCH_TASK_WORKING_DIR"
    "/corral-run\" && python3 -m corral.runtime.cloud_node azure-batch; echo $? > "
    "\"$AZ_BATCH_TASK_WORKING_DIR/corral-node.rc\"'\"'\"' > corral-node.log 2>&1 < /dev/null & "
    "echo \"corral: node agent started in the background (pid $!); its output: "
    "$AZ_BATCH_TASK_WORKING_DIR/corral-node.log\"'")
GOLDEN_JOB = {
    "id": JOB_ID, "displayName": "train", "priority": 0, "poolInfo": {"poolId": "gpu"},
    "onAllTasksComplete": "noaction", "onTaskFailure": "noaction",
    "metadata": [{"name": "corral-job-id", "value": JOB_ID},
                 {"name": "created-by", "value": "corral"}]}
GOLDEN_TASK = {
    "id": "corral", "displayName": "train: 2 node(s) x 2", "commandLine": PRIMARY,
    "environmentSettings": [{"name": "CORRAL_JOB", "value": "<CORRAL_JOB>"},
                            {"name": "PYTHONUNBUFFERED", "value": "1"}],
    "constraints": {"maxTaskRetryCount": 0},
    "userIdentity": {"autoUser": {"scope": "task", "elevationLevel": "nonadmin"}},
    "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": COORDINATION}}
GOLDEN_NODE_JOB = {
    "job_id": JOB_ID, "run_dir": f"/tmp/corral-run/{JOB_ID}", "workdir": "corral-work",
    "master_port": 29500, "python": "python3",
    "package_url": f"az://corral/jobs/{JOB_ID}/code.tar.gz", "payload_url": None,
    "grace": 10.0, "version": 1}


def without_job(task: dict[str, Any]) -> dict[str, Any]:
    return {**task, "environmentSettings": [
        {**e, "value": "<CORRAL_JOB>"} if e["name"] == "CORRAL_JOB" else e
        for e in task["environmentSettings"]]}


def node_job(plan: AzurePlan) -> NodeJob:
    return NodeJob.decode(env_of(plan)["CORRAL_JOB"])


def test_golden_requests_of_the_defaults() -> None:
    plan = plan_for()
    assert plan.job == GOLDEN_JOB
    assert without_job(plan.task) == GOLDEN_TASK
    assert plan.finish == {"onAllTasksComplete": "terminatejob"}
    job = node_job(plan)
    data = {k: v for k, v in job.__dict__.items() if k != "spec"}
    assert data == GOLDEN_NODE_JOB
    assert job.spec["entrypoint"] == {"kind": "script", "path": "train.py"}
    assert (job.spec["nodes"], job.spec["procs_per_node"], job.spec["launcher"]) == (
        2, 2, "torchrun")
    # the command lines are what /bin/sh gets: exactly one script each
    assert shlex.split(PRIMARY)[:2] == ["/bin/sh", "-c"] and len(shlex.split(PRIMARY)) == 3
    assert len(shlex.split(COORDINATION)) == 3


def test_dry_run_prints_every_request_with_its_path_and_exact_body() -> None:
    plan = plan_for()
    text = plan.dry_run_text()
    base = "https://acct.westeurope.batch.azure.com"
    assert f"POST {base}/jobs?api-version={API_VERSION}\n" in text
    assert f"POST {base}/jobs/{JOB_ID}/tasks?api-version={API_VERSION}\n" in text
    assert f"PATCH {base}/jobs/{JOB_ID}?api-version={API_VERSION}\n" in text
    chunks = text.split("Content-Type: application/json; odata=minimalmetadata; charset=utf-8")
    bodies = [json.loads(chunk.split("\n\n")[1]) for chunk in chunks[1:]]
    assert bodies == [plan.job, plan.task, plan.finish]
    assert '"job_id": "train-261129-101010-abcdef"' in text  # CORRAL_JOB, readable
    assert "shared key (not shown)" in text


def test_the_account_key_is_never_printed_nor_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = base64.b64encode(b"top secret key material").decode()
    options = AzureBatchOptions(pool="gpu", code="image", account_key=secret,
                                account_url="https://a.b.batch.azure.com", account_name="a")
    backend = AzureBatchBackend(options)
    text = backend.render(spec()).dry_run_text()
    assert secret not in text and secret not in repr(options)
    assert "account_key" not in backend.options_data()
    assert secret not in json.dumps(backend.options_data()) + json.dumps(
        backend.engine_address())
    monkeypatch.setenv("AZURE_BATCH_ACCOUNT_KEY", secret)
    assert AzureBatchOptions().resolved_key() == secret


OPTION_CASES: list[tuple[dict[str, Any], dict[str, Any], str, Any]] = [
    # (options, spec fields, where in the requests, expected)
    ({"pool": "cpu-pool"}, {}, "job.poolInfo", {"poolId": "cpu-pool"}),
    ({"pool": None}, {"queue": "from-queue"}, "job.poolInfo", {"poolId": "from-queue"}),
    ({"image": "myreg.azurecr.io/train:1"}, {}, "task.containerSettings",
     {"imageName": "myreg.azurecr.io/train:1", "workingDirectory": "taskWorkingDirectory"}),
    ({}, {"image": "python:3.11"}, "task.containerSettings",
     {"imageName": "python:3.11", "workingDirectory": "taskWorkingDirectory"}),
    ({"image": "i:1", "container_run_options": "--shm-size=8g"}, {}, "task.containerSettings",
     {"imageName": "i:1", "workingDirectory": "taskWorkingDirectory",
      "containerRunOptions": "--shm-size=8g"}),
    ({"code": "image"}, {}, "node.workdir", "/workspace"),
    ({"code": "image"}, {}, "node.package_url", None),
    ({"code": "image", "image_workdir": "/opt/code"}, {}, "node.workdir", "/opt/code"),
    ({"package_store": "s3://b/p/"}, {}, "node.package_url",
     f"s3://b/p/{JOB_ID}/code.tar.gz"),
    ({"python": "/opt/venv/bin/python"}, {}, "task.commandLine", PRIMARY.replace(
        "exec python3", "exec /opt/venv/bin/python")),
    ({"python": "/opt/my venv/python"}, {}, "node.python", "/opt/my venv/python"),
    ({"master_port": 23456}, {}, "node.master_port", 23456),
    ({"max_wall_clock": "2h"}, {}, "task.constraints",
     {"maxTaskRetryCount": 0, "maxWallClockTime": "PT2H"}),
    ({"max_wall_clock": "2h"}, {"time_limit": "1h30m"}, "task.constraints",
     {"maxTaskRetryCount": 0, "maxWallClockTime": "PT1H30M"}),
    ({"retention": "1d"}, {}, "task.constraints",
     {"maxTaskRetryCount": 0, "retentionTime": "P1D"}),
    ({"max_task_retry_count": 2}, {}, "task.constraints", {"maxTaskRetryCount": 2}),
    ({"elevation": "admin"}, {}, "task.userIdentity",
     {"autoUser": {"scope": "task", "elevationLevel": "admin"}}),
    ({}, {"priority": -5}, "job.priority", -5),
    ({}, {"nodes": 4, "procs_per_node": 8}, "task.multiInstanceSettings.numberOfInstances", 4),
    ({}, {"entrypoint": {"kind": "script", "path": f"{WORKDIR}/src/train.py"}},
     "node.spec.entrypoint", {"kind": "script", "path": "src/train.py"}),
    ({"code": "image"}, {"entrypoint": {"kind": "script", "path": f"{WORKDIR}/train.py"}},
     "node.spec.entrypoint", {"kind": "script", "path": f"{WORKDIR}/train.py"}),
]


def _at(plan: AzurePlan, where: str) -> Any:
    head, *path = where.split(".")
    value: Any = {"job": plan.job, "task": plan.task, "node": node_job(plan).__dict__}[head]
    for key in path:
        value = value[key]
    return value


@pytest.mark.parametrize(("options", "fields", "where", "expected"), OPTION_CASES,
                         ids=[f"{'+'.join(o) or 'spec'}:{w}" for o, _, w, _ in OPTION_CASES])
def test_golden_option(options: dict[str, Any], fields: dict[str, Any], where: str,
                       expected: Any) -> None:
    plan = plan_for(spec(**fields), **options)
    assert _at(plan, where) == expected
    for request in plan.requests():  # every golden plan passes the SDK's schema too
        check_request(request.model, request.body, request.what)


def test_options_that_change_no_request() -> None:
    base = plan_for()
    for options in ({"account_name": "acct"}, {"account_key": KEY}, {"poll_seconds": 0.5},
                    {"package_exclude": ["data/*"]}, {"package_max_mb": 10}):
        plan = plan_for(**options)
        assert (plan.job, plan.task, plan.finish) == (base.job, base.task, base.finish)
    assert AzureBatchBackend(AzureBatchOptions(poll_seconds=0.5)).poll_interval == 0.5
    assert AzureBatchOptions(package_exclude="data/*").package_exclude == ("data/*",)


def test_a_function_travels_through_the_package_store_and_warnings_are_said() -> None:
    plan = plan_for(spec(entrypoint={"kind": "function", "fn": print}, launcher="none",
                         resources={"cpus": 4, "gpus": 1}), code="image")
    assert node_job(plan).payload_url == f"az://corral/jobs/{JOB_ID}/function.pkl"
    assert node_job(plan).spec["entrypoint"] == {"kind": "function", "label": "print"}
    assert any("VM size decides" in w for w in plan.warnings)
    assert any("launcher 'none' on several nodes" in w for w in plan.warnings)


def test_durations_are_written_as_the_sdk_writes_them() -> None:
    import datetime

    import isodate

    for seconds in (1, 59, 60, 61, 3599, 3600, 5400, 86399, 86400, 90061, 366 * 86400):
        assert iso_duration(seconds) == isodate.duration_isoformat(
            datetime.timedelta(seconds=seconds))
    assert iso_duration(0.2) == "PT1S"


def test_ids_and_the_api_version_are_azures() -> None:
    client = make_client(AzureBatchOptions(account_url="http://127.0.0.1:1",
                                           account_name="a", account_key=KEY))
    assert client.api_version == API_VERSION
    assert azure_job_id(JOB_ID) == JOB_ID
    long = "x" * 80 + "-261129-101010-abcdef"
    assert len(azure_job_id(long)) == 64 and azure_job_id(long).endswith("-261129-101010-abcdef")
    assert azure_job_id("a.b/c") == "a-b-c"


# -- what is refused -------------------------------------------------------------------------

def _fields(exc: pytest.ExceptionInfo[SpecError]) -> set[str]:
    return {field for field, _, _ in exc.value.problems}


@pytest.mark.parametrize(("options", "fields", "named"), [
    ({"pool": "bad pool!"}, {}, "azure-batch.pool"),
    ({"elevation": "root"}, {}, "azure-batch.elevation"),
    ({"code": "git"}, {}, "azure-batch.code"),
    ({"max_wall_clock": "soon"}, {}, "azure-batch.max_wall_clock"),
    ({"max_task_retry_count": -2}, {}, "azure-batch.max_task_retry_count"),
    ({"master_port": 80}, {}, "azure-batch.master_port"),
    ({"account_url": "acct.batch.azure.com"}, {}, "azure-batch.account_url"),
    ({"package_store": "not a url"}, {}, "azure-batch.package_store"),
    ({"image_workdir": "relative"}, {}, "azure-batch.image_workdir"),
    ({"poll_seconds": 0}, {}, "azure-batch.poll_seconds"),
    ({"flavour": "volcano"}, {}, "azure-batch.flavour"),
    ({"pool": None}, {}, "azure-batch.pool"),
    ({"pool": None}, {"queue": "no spaces allowed"}, "queue"),
    ({"package_store": None}, {}, "azure-batch.package_store"),
    ({}, {"launcher": "mpirun"}, "launcher"),
    ({}, {"launcher": "ray", "procs_per_node": 1}, "launcher"),
])
def test_bad_options_and_specs_are_refused_naming_the_field(
        options: dict[str, Any], fields: dict[str, Any], named: str) -> None:
    with pytest.raises(SpecError) as exc:
        plan_for(spec(**fields), **options)
    assert named in _fields(exc)


def test_backend_options_come_from_minus_o_values() -> None:
    assert backend_class("azure-batch") is AzureBatchBackend
    options = backend_options("azure-batch", {"pool": "p", "max_task_retry_count": "1"})
    assert options.max_task_retry_count == 1
    with pytest.raises(SpecError, match=r"azure-batch\.nope"):
        backend_options("azure-batch", {"nope": 1})


def good_task() -> dict[str, Any]:
    return json.loads(json.dumps(plan_for().task))


@pytest.mark.parametrize(("change", "named", "said"), [
    (lambda t: t.update(comandLine="x"), "task.comandLine", "no such property"),
    (lambda t: t.pop("commandLine"), "task.commandLine", "required"),
    (lambda t: t["multiInstanceSettings"].pop("coordinationCommandLine"),
     "task.multiInstanceSettings.coordinationCommandLine", "required"),
    (lambda t: t["multiInstanceSettings"].update(numberOfInstances="2"),
     "task.multiInstanceSettings.numberOfInstances", "whole number"),
    (lambda t: t["multiInstanceSettings"].update(numberOfInstances=2**31),
     "task.multiInstanceSettings.numberOfInstances", "2147483647"),
    (lambda t: t["multiInstanceSettings"].update(numberOfInstances=0),
     "task.multiInstanceSettings.numberOfInstances", "at least 1"),
    (lambda t: t["userIdentity"]["autoUser"].update(elevationLevel="root"),
     "task.userIdentity.autoUser.elevationLevel", "accepted: nonadmin, admin"),
    (lambda t: t["constraints"].update(maxWallClockTime="1 hour"),
     "task.constraints.maxWallClockTime", "ISO 8601"),
    (lambda t: t["environmentSettings"].append({"value": "x"}),
     "task.environmentSettings[2].name", "required"),
    (lambda t: t["environmentSettings"].append({"name": "PYTHONUNBUFFERED", "value": "0"}),
     "task.environmentSettings", "each variable once"),
    (lambda t: t.update(id="has space"), "task.id", "64 letters"),
    (lambda t: t.update(displayName="x" * 1025), "task.displayName", "1024"),
    (lambda t: t.update(containerSettings={"containerRunOptions": "--rm"}),
     "task.containerSettings.imageName", "required"),
    (lambda t: t.update(requiredSlots=True), "task.requiredSlots", "whole number"),
])
def test_the_validator_refuses_bad_requests_naming_the_field(change: Any, named: str,
                                                               said: str) -> None:
    task = good_task()
    change(task)
    with pytest.raises(SpecError) as exc:
        check_request("TaskAddParameter", task, "task")
    problems = {field: why for field, _, why in exc.value.problems}
    assert named in problems, exc.value
    assert said in problems[named]


def test_the_validator_checks_job_bodies_too() -> None:
    job = {**GOLDEN_JOB, "priority": 1001, "onAllTasksComplete": "terminate",
           "poolInfo": {"pool": "gpu"}}
    with pytest.raises(SpecError) as exc:
        check_request("JobAddParameter", job, "job")
    assert {"job.priority", "job.onAllTasksComplete", "job.poolInfo.pool"} <= _fields(exc)
    check_request("JobPatchParameter", {"onAllTasksComplete": "terminatejob"}, "job patch")


def test_a_missing_sdk_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("azure.batch", "azure.batch.models", "azure.batch.batch_auth"):
        monkeypatch.setitem(sys.modules, name, None)
    options = AzureBatchOptions(pool="gpu", code="image")
    with pytest.raises(MissingDependency, match=r"pip install 'corral\[azure\]'"):
        AzureBatchBackend(options).render(spec())
    with pytest.raises(MissingDependency, match=r"pip install 'corral\[azure\]'"):
        make_client(options)
    backend = AzureBatchBackend(options)
    with pytest.raises(MissingDependency):
        backend.submit(spec())
    assert backend.store.jobs("azure-batch") == []  # nothing recorded


def test_a_missing_account_names_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_BATCH_ENDPOINT", "AZURE_BATCH_ACCOUNT", "AZURE_BATCH_ACCOUNT_KEY",
                 "AZURE_BATCH_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SpecError) as exc:
        make_client(AzureBatchOptions(pool="gpu"))
    assert _fields(exc) == {"azure-batch.account_url", "azure-batch.account_name",
                            "azure-batch.account_key"}
    backend = AzureBatchBackend(AzureBatchOptions(pool="gpu", code="image"))
    with pytest.raises(SpecError, match="AZURE_BATCH_ACCOUNT_KEY"):
        backend.submit(spec())
    assert backend.store.jobs("azure-batch") == []  # refused before anything is recorded
    with pytest.raises(SpecError, match="base64"):
        make_client(AzureBatchOptions(account_url="http://127.0.0.1:1", account_name="a",
                                      account_key="not base64!"))
    monkeypatch.setenv("AZURE_BATCH_ENDPOINT", "acct.region.batch.azure.com")
    assert AzureBatchOptions().resolved_url() == "https://acct.region.batch.azure.com"


# -- the SDK against the fake ----------------------------------------------------------------

@pytest.fixture
def fake() -> Iterator[FakeAzureBatch]:
    with FakeAzureBatch() as server:
        server.add_pool("gpu", nodes=2)
        yield server


def azure(fake: FakeAzureBatch, **options: Any) -> AzureBatchBackend:
    base = {"account_url": fake.url, "account_name": fake.account, "account_key": KEY,
            "pool": "gpu", "code": "image", "poll_seconds": 0.01}
    return AzureBatchBackend(AzureBatchOptions(**{**base, **options}))


def job_of(backend: AzureBatchBackend, job_id: str) -> str:
    engine_id = backend.store.get(job_id).engine_id
    assert engine_id is not None
    return engine_id


def test_submit_sends_exactly_the_dry_run_requests(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    plan = backend.render(spec())
    ref = backend.submit(spec(), plan)
    sent = [(s.method, s.path) for s in fake.seen]
    azure_id = plan.azure_job_id
    assert sent == [("GET", "/pools/gpu"), ("POST", "/jobs"), ("POST", f"/jobs/{azure_id}/tasks"),
                    ("PATCH", f"/jobs/{azure_id}")]
    assert [s.body for s in fake.seen[1:]] == [plan.job, plan.task, plan.finish]
    assert all(s.query["api-version"] == [API_VERSION] for s in fake.seen)
    assert all(s.headers["authorization"].startswith(f"SharedKey {fake.account}:")
               for s in fake.seen)
    assert job_of(backend, ref.job_id) == azure_id
    status = backend.describe(ref.job_id)
    assert status.state is JobState.PENDING
    assert status.reason == "waiting for 2 node(s) of pool gpu"


def test_running_then_failed_names_node_1_and_its_rank(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    ref = backend.submit(spec())
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    status = backend.describe(ref.job_id)
    assert status.state is JobState.RUNNING
    assert {r.state for r in status.ranks} == {JobState.RUNNING} and len(status.ranks) == 4
    assert "subtask 1: tvm-gpu-1: running" in status.notes
    fake.set_output(azure_id, 0, "[corral] azure-batch node 0 is corral node 0 of 2; x\n"
                    "[rank 0] step 1\n[corral] the launcher of node 0 exited with code 1 at "
                    "200.5\n")
    fake.set_output(azure_id, 1, "[corral] azure-batch node 1 is corral node 1 of 2; x\n"
                    "[rank 2] about to fail\n[corral] rank 2 exited with code 3 at 199.0\n")
    fake.finish(azure_id, 1)
    status = backend.wait(ref.job_id, timeout=5)
    assert status.state is JobState.FAILED
    assert status.failure is not None
    assert (status.failure.node, status.failure.rank, status.failure.returncode) == (1, 2, 3)
    assert "tvm-gpu-1" in status.failure.reason
    assert status.failure.last_lines == ["about to fail"]
    assert [(r.rank, r.state, r.host) for r in status.ranks] == [
        (0, JobState.CANCELLED, "tvm-gpu-0"), (1, JobState.CANCELLED, "tvm-gpu-0"),
        (2, JobState.FAILED, "tvm-gpu-1"), (3, JobState.CANCELLED, "tvm-gpu-1")]
    lines = list(backend.logs(ref.job_id, rank=2))
    assert [t for _, t in lines] == ["about to fail"]


def test_a_failed_subtask_is_named_without_its_log(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    ref = backend.submit(spec())
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    fake.finish(azure_id, 1, subtask_codes={1: 137})
    status = backend.wait(ref.job_id, timeout=5)
    assert status.state is JobState.FAILED and status.failure is not None
    assert (status.failure.node, status.failure.rank, status.failure.returncode) == (1, None, 137)
    assert "subtask 1 on node tvm-gpu-1" in status.failure.reason


def test_a_primary_that_never_started_corral_shows_its_stderr(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    ref = backend.submit(spec())
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    fake.task(azure_id).files["stderr.txt"] = b"/usr/bin/python3: No module named corral\n"
    fake.finish(azure_id, 1)
    status = backend.wait(ref.job_id, timeout=5)
    assert status.state is JobState.FAILED and status.failure is not None
    assert (status.failure.node, status.failure.rank, status.failure.returncode) == (0, None, 1)
    assert "FailureExitCode" in status.failure.reason and "the primary" in status.failure.reason
    assert status.failure.last_lines == ["/usr/bin/python3: No module named corral"]


def test_success_and_a_worker_that_failed_alone(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    ok, alone = backend.submit(spec()), backend.submit(spec(launcher="none"))
    for ref in (ok, alone):
        fake.move(job_of(backend, ref.job_id), "running")
    fake.finish(job_of(backend, ok.job_id), 0)
    fake.set_output(job_of(backend, alone.job_id), 1, "[rank 1] x\n[corral] rank 1 exited "
                    "with code 4 at 10.0\n")
    fake.finish(job_of(backend, alone.job_id), 0)  # node 0 did not wait for node 1
    status = backend.wait(ok.job_id, timeout=5)
    assert status.state is JobState.SUCCEEDED and {r.returncode for r in status.ranks} == {0}
    status = backend.wait(alone.job_id, timeout=5)
    assert status.state is JobState.FAILED and status.failure is not None
    assert (status.failure.node, status.failure.rank, status.failure.returncode) == (1, 1, 4)
    assert fake.jobs[job_of(backend, ok.job_id)].state == "completed"  # terminatejob


def test_cancel_is_idempotent_running_waiting_or_gone(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    running, waiting = backend.submit(spec()), backend.submit(spec())
    fake.move(job_of(backend, running.job_id), "running")
    for ref in (running, waiting):
        assert backend.cancel(ref.job_id, timeout=5).state is JobState.CANCELLED
        assert backend.cancel(ref.job_id, timeout=5).state is JobState.CANCELLED
        backend._stop(backend.store.get(ref.job_id))  # the engine's 409 JobCompleted is fine
    terminate = [s for s in fake.seen if s.path.endswith("/terminate")]
    assert terminate[0].body == {"terminateReason": "corral: cancelled"}
    assert fake.task(job_of(backend, waiting.job_id)).state == "active"  # as Azure leaves it
    gone = backend.submit(spec())
    del fake.jobs[job_of(backend, gone.job_id)]
    backend._stop(backend.store.get(gone.job_id))  # 404: nothing to stop
    assert backend.describe(gone.job_id).state is JobState.CANCELLED


@pytest.mark.parametrize("step", ["POST /tasks", "PATCH"])
def test_a_half_submission_is_deleted(fake: FakeAzureBatch, step: str, tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    backend = azure(fake, code="package", package_store=f"file://{tmp_path}/store")
    method, pattern = ("POST", r"/tasks$") if step == "POST /tasks" else ("PATCH", r"/jobs/")
    fake.fail_next(method, pattern, 400, "InvalidPropertyValue", "The value is not valid.")
    with pytest.raises(SubmitError, match=r"InvalidPropertyValue.*please report"):
        backend.submit(spec(workdir=str(tmp_path)))
    assert fake.jobs == {}
    assert [s.method for s in fake.seen][-1] == "DELETE"
    assert not list((tmp_path / "store").rglob("*.tar.gz"))  # the package went too
    (record,) = backend.store.jobs("azure-batch")
    assert record.state is JobState.FAILED and "submission failed" in record.reason


def test_pool_prerequisites_are_checked_before_anything_is_added(fake: FakeAzureBatch) -> None:
    fake.add_pool("no-ib", inter_node=False)
    fake.add_pool("slots", slots=4)
    fake.add_pool("vms", containers=False)
    for pool, said in (("no-ib", "inter-node communication"), ("slots", "taskSlotsPerNode"),
                       ("missing", "is not in Azure Batch account"),
                       ("vms", "no container configuration")):
        with pytest.raises(SubmitError, match=said):
            azure(fake, pool=pool, image="i:1" if pool == "vms" else None).submit(spec())
    assert fake.requests("POST") == []


def test_engine_errors_are_clear(fake: FakeAzureBatch) -> None:
    with pytest.raises(SubmitError, match=r"AuthenticationFailed.*account_name"):
        azure(fake, account_name="someoneelse").submit(spec())
    backend = azure(fake, account_url=f"http://127.0.0.1:{pick_port()}")
    backend.client.config.retry_policy.retries = 0
    with pytest.raises(SubmitError, match=r"cannot reach Azure Batch at http://127\.0\.0\.1"):
        backend.submit(spec())
    fake.fail_next("POST", r"^/jobs$", 403, "ActiveJobAndScheduleQuotaReached", "quota")
    with pytest.raises(SubmitError, match="quota of active jobs"):
        azure(fake).submit(spec())


def test_a_lost_submission_is_adopted_or_discarded(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    whole, half = (backend.record(spec(), backend.render(spec())) for _ in range(2))
    models = {r.what: r for r in backend.render(spec(), whole.id).requests()}
    client = backend.client
    from corral.backends.azure_batch.validate import check_request as model

    client.job.add(model("JobAddParameter", models["job"].body, "job"))
    client.task.add(whole.id, model("TaskAddParameter", models["task"].body, "task"))
    half_job = backend.render(spec(), half.id).job
    client.job.add(model("JobAddParameter", half_job, "job"))
    assert backend.find_submitted([whole, half]) == {whole.id: whole.id}
    backend.discard_lost(half)
    assert set(fake.jobs) == {whole.id}


def test_logs_follow_until_the_job_ends(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    ref = backend.submit(spec())
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    fake.set_output(azure_id, 0, "[rank 0] one\n[rank 1] par")

    def later() -> None:
        time.sleep(0.3)
        fake.set_output(azure_id, 0, "[rank 0] one\n[rank 1] partial line\n[rank 0] two\n")
        fake.set_output(azure_id, 1, "[rank 3] three\n")
        fake.finish(azure_id, 0)

    threading.Thread(target=later, daemon=True).start()
    lines = [(s.number, t) for s, t in backend.logs(ref.job_id, follow=True)]
    assert lines == [(0, "one"), (1, "partial line"), (0, "two"), (3, "three")]


def test_a_foreground_run_waits_then_streams_the_ranks(fake: FakeAzureBatch) -> None:
    backend = azure(fake)

    def service() -> None:  # the job starts and ends while run() waits
        deadline = time.monotonic() + 20
        while not fake.jobs or not fake.jobs[next(iter(fake.jobs))].tasks:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (azure_id,) = fake.jobs
        time.sleep(0.1)
        fake.move(azure_id, "running")
        fake.set_output(azure_id, 0, "[rank 0] hello\n")
        fake.set_output(azure_id, 1, "[rank 1] there\n")
        time.sleep(0.1)
        fake.finish(azure_id, 0)

    helper = threading.Thread(target=service)
    helper.start()
    lines: list[tuple[int | None, str]] = []
    waited: list[str] = []
    status = backend.run(spec(procs_per_node=1), sink=lambda s, t: lines.append((s.number, t)),
                         waiting=lambda s: waited.append(s.reason))
    helper.join()
    assert status.state is JobState.SUCCEEDED
    assert lines == [(0, "hello"), (1, "there")]
    assert "waiting for 2 node(s) of pool gpu" in waited


def test_time_limit_is_a_timeout(fake: FakeAzureBatch) -> None:
    backend = azure(fake)
    ref = backend.submit(spec(time_limit=1))
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    fake.task(azure_id).started = time.time() - 2
    fake.finish(azure_id, 137, failure={"category": "usererror", "code": "TaskEnded",
                                        "message": "terminated"})
    assert backend.wait(ref.job_id, timeout=5).state is JobState.TIMEOUT


def test_a_function_ships_its_payload_and_reads_results_from_the_log(
        fake: FakeAzureBatch, tmp_path: Path) -> None:
    backend = azure(fake, package_store=f"file://{tmp_path}/store")
    ref = backend.submit(spec(entrypoint={"kind": "function", "fn": print}, nodes=1,
                              procs_per_node=1, launcher="none"))
    assert (tmp_path / "store" / ref.job_id / "function.pkl").stat().st_size > 0
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    fake.set_output(azure_id, 0, f"[result 0] {base64.b64encode(b'pickled').decode()}\n")
    fake.finish(azure_id, 0)
    assert backend.read_result(ref.job_id, 0) == b"pickled"


# -- the node contract for real --------------------------------------------------------------

DDP = """import os, sys
import torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
if os.environ.get("FAIL_ON_WORKER") and os.environ["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "false" \\
        and os.environ["LOCAL_RANK"] == "0":
    print(f"rank {rank} fails on purpose", flush=True)
    sys.exit(3)
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value)
print(f"rank {rank}/{dist.get_world_size()} sum {value.item():g}", flush=True)
dist.destroy_process_group()
"""
# torchrun's c10d rendezvous numbers the nodes its own way (sorted by host name, then process
# id: --node-rank is ignored), so which node holds which torch rank is read from the output.
HOSTS = ("127.0.0.1", "127.0.0.2")  # every 127.x address reaches loopback on Linux


def az_env(plan: AzurePlan, folder: Path, node: int) -> dict[str, str]:
    """What Azure Batch gives node ``node``'s task (faked; node 0 is the master)."""
    task_dir = folder / f"az-node-{node}"
    (task_dir / "wd").mkdir(parents=True, exist_ok=True)
    return {**env_of(plan), "AZ_BATCH_HOST_LIST": ",".join(HOSTS),
            "AZ_BATCH_MASTER_NODE": f"{HOSTS[0]}:6000",
            "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if node == 0 else "false",
            "CORRAL_NODE_ADDRESS": HOSTS[node], "AZ_BATCH_TASK_DIR": str(task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"),
            "AZ_BATCH_TASK_SHARED_DIR": str(task_dir / "shared")}


def node_outputs(job_id: str) -> dict[int, str]:
    """Each emulated node's output, as Azure would keep it (its stdout file or agent log)."""
    found: dict[int, list[str]] = {}
    for source, text in LocalBackend().logs(job_id):
        found.setdefault(source.number or 0, []).append(text)
    return {node: "\n".join(lines) + "\n" for node, lines in found.items()}


@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True], ids=["allreduce", "rank-2-fails"])
def test_ddp_2x2_on_emulated_azure_nodes(fake: FakeAzureBatch, tmp_path: Path,
                                         fail: bool) -> None:
    """Every node runs the primary's command line (the agent in the foreground: on Azure the
    workers run it from the coordination command, detached; the split is tested below)."""
    require(importlib.util.find_spec("torch") is not None, "torch is not installed")
    (tmp_path / "ddp.py").write_text(DDP)
    backend = azure(fake, image_workdir=str(tmp_path), python=sys.executable,
                    master_port=pick_port("127.0.0.1", span=PORT_BLOCK))
    job_spec = spec(entrypoint={"kind": "script", "path": "ddp.py"},
                    env={"FAIL_ON_WORKER": "1"} if fail else {})
    plan = backend.render(job_spec)
    ref = backend.submit(job_spec, plan)
    argv = shlex.split(plan.task["commandLine"])
    local = run_service_nodes(argv, {n: az_env(plan, tmp_path, n) for n in range(2)},
                              tmp_path / "local", timeout=120)
    outputs = node_outputs(local.job_id)
    azure_id = job_of(backend, ref.job_id)
    fake.move(azure_id, "running")
    for node, text in outputs.items():
        fake.set_output(azure_id, node, text)
    codes = {r.rank: r.returncode or 0 for r in local.ranks}  # local rank = emulated node
    fake.finish(azure_id, codes[0], subtask_codes={1: codes[1]})
    status = backend.wait(ref.job_id, timeout=10)
    if not fail:
        assert local.state is JobState.SUCCEEDED, local.summary()
        sums = sorted(line.split("] ", 1)[1] for text in outputs.values()
                      for line in text.splitlines() if " sum " in line)
        assert sums == [f"rank {r}/4 sum 10" for r in range(4)], outputs
        assert status.state is JobState.SUCCEEDED, status.summary()
        return
    failing = int(outputs[1].split(" fails on purpose")[0].rsplit("rank ", 1)[1])
    assert local.state is JobState.FAILED and local.failure is not None, local.summary()
    assert local.failure.node == 1, local.summary()  # the local run names node 1 ...
    assert f"rank      : {failing} (local_rank: 0)" in outputs[1]  # ... torchrun the rank
    assert status.state is JobState.FAILED and status.failure is not None, status.summary()
    assert (status.failure.node, status.failure.rank, status.failure.returncode) == (
        1, failing, 3), status.summary()
    assert "tvm-gpu-1" in status.failure.reason


@pytest.mark.slow
def test_coordination_command_detaches_the_worker_and_the_primary_runs_node_0(
        tmp_path: Path) -> None:
    """Azure's split, faithfully: the coordination command on every node (it returns at once;
    on the worker it leaves the agent running, detached, into corral-node.log), then the
    primary command on the master in the foreground; torchrun's rendezvous joins them. The
    code travels as a package through a file:// store and unpacks in each task's folder."""
    require(importlib.util.find_spec("torch") is not None, "torch is not installed")
    project = tmp_path / "project"
    project.mkdir()
    (project / "ddp.py").write_text(DDP)
    backend = AzureBatchBackend(AzureBatchOptions(
        pool="gpu", package_store=f"file://{tmp_path}/store", python=sys.executable,
        master_port=pick_port("127.0.0.1", span=PORT_BLOCK)))
    job_spec = spec(entrypoint={"kind": "script", "path": "ddp.py"}, procs_per_node=1,
                    workdir=str(project))
    plan = backend.render(job_spec)
    backend._ship(job_spec, plan)

    def on_node(node: int, command: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CORRAL_")}
        return subprocess.run(shlex.split(command), env={**env, **az_env(plan, tmp_path, node)},
                              capture_output=True, text=True, timeout=90)

    coordination = plan.task["multiInstanceSettings"]["coordinationCommandLine"]
    worker = tmp_path / "az-node-1" / "wd"
    started = time.monotonic()
    done = on_node(1, coordination)
    agent = int(done.stdout.split("(pid ")[1].split(")")[0])
    try:
        assert done.returncode == 0 and "started in the background" in done.stdout, done
        assert time.monotonic() - started < 5  # it returned; the agent runs on
        assert on_node(0, coordination).returncode == 0
        assert not (tmp_path / "az-node-0" / "wd" / NODE_LOG).exists()  # the master: nothing
        primary = on_node(0, plan.task["commandLine"])
        assert primary.returncode == 0, primary.stdout + primary.stderr
        assert primary.stdout.count("/2 sum 3\n") == 1, primary.stdout
        deadline = time.monotonic() + 30
        while not (worker / NODE_RC).exists():
            assert time.monotonic() < deadline, (worker / NODE_LOG).read_text()
            time.sleep(0.1)
        log = (worker / NODE_LOG).read_text()
        assert (worker / NODE_RC).read_text().strip() == "0", log
        assert "[corral] azure-batch node 1 is corral node 1 of 2" in log
        assert log.count("/2 sum 3\n") == 1, log
        assert (worker / "corral-work" / "ddp.py").exists()  # unpacked in its own task folder
    finally:
        try:
            os.kill(agent, 15)  # it has ended unless something above failed
        except ProcessLookupError:
            pass
