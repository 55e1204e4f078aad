"""The AWS Batch backend: its requests (golden, and refused when AWS would refuse them), round
trips against moto's server (an EMULATOR: it proves the requests and calls, not how Batch runs
nodes), per-node states from fixtures written from AWS's DescribeJobs documentation
(botocore's Stubber), and the node contract run for real on the local backend's nodes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cloud_nodes import run_service_nodes
from corral.backends.aws_batch import AwsBatchBackend, AwsBatchOptions
from corral.backends.aws_batch.render import cross_checks
from corral.errors import SpecError
from corral.jobstate import JobState
from corral.runtime.cloud_job import NodeJob
from corral.spec import JobSpec, Script
from infra.moto_server import MotoServer, batch_queue

boto3 = pytest.importorskip("boto3")
from botocore.stub import ANY, Stubber  # noqa: E402

BASE = {"region": "us-east-1", "job_queue": "gpu-queue", "image": "corral/train:1"}
JOB_ID = "train-261129-120000-abcdef"
DDP = """import os, sys, torch, torch.distributed as dist
dist.init_process_group("gloo")
rank = dist.get_rank()
if rank == int(os.environ.get("FAIL_RANK", "-1")):
    print(f"rank {rank} gives up", flush=True)
    os.kill(os.getpid(), 9)  # killed, as by the kernel's OOM killer
t = torch.tensor([float(rank + 1)])
dist.all_reduce(t)
print(f"rank {rank} node {os.environ['NODE_RANK']} sum {t.item():g}", flush=True)
dist.destroy_process_group()
"""


def backend(clients: dict[str, Any] | None = None, **options: Any) -> AwsBatchBackend:
    return AwsBatchBackend(AwsBatchOptions(**{**BASE, **options}), clients=clients)


def spec(**fields: Any) -> JobSpec:
    data: dict[str, Any] = {"name": "train", "entrypoint": Script(path="train.py"),
                            "nodes": 4, "procs_per_node": 8, "launcher": "torchrun"}
    return JobSpec(**{**data, **fields})


# -- requests ---------------------------------------------------------------------------------


def test_render_golden_requests(tmp_path: Path) -> None:
    plan = backend(shm_size_mb=8192, log_group="/corral/jobs", scheduling_priority=50,
                   share_identifier="teamA", retry_attempts=2, tags=["team=vision"],
                   job_role_arn="arn:aws:iam::123456789012:role/train",
                   execution_role_arn="arn:aws:iam::123456789012:role/exec",
                   master_port=29400).render(
        spec(resources={"cpus": 16, "memory": "64G", "gpus": 4}, time_limit=3600,
             workdir=str(tmp_path)), job_id=JOB_ID)
    container = plan.job_definition["nodeProperties"]["nodeRangeProperties"][0]["container"]
    assert plan.job_definition["type"] == "multinode"
    assert plan.job_definition["platformCapabilities"] == ["EC2"]
    assert plan.job_definition["nodeProperties"]["mainNode"] == 0
    assert plan.job_definition["nodeProperties"]["nodeRangeProperties"][0]["targetNodes"] == "0:"
    assert container["image"] == "corral/train:1"
    assert container["command"] == ["python3", "-m", "corral.runtime.cloud_node", "aws-batch"]
    assert container["linuxParameters"] == {"sharedMemorySize": 8192}
    assert container["logConfiguration"] == {"logDriver": "awslogs",
                                             "options": {"awslogs-group": "/corral/jobs"}}
    assert container["jobRoleArn"].endswith("role/train")
    assert container["executionRoleArn"].endswith("role/exec")
    submit = plan.submit_job
    env = submit["nodeOverrides"]["nodePropertyOverrides"][0]["containerOverrides"]["environment"]
    described = NodeJob.decode(env[0]["value"])
    assert env[0]["name"] == "CORRAL_JOB"
    assert described.master_port == 29400 and described.workdir == "/workspace"
    assert described.spec["nodes"] == 4 and described.spec["launcher"] == "torchrun"
    assert {k: v for k, v in submit.items() if k != "nodeOverrides"} == {
        "jobName": JOB_ID, "jobQueue": "gpu-queue",
        "jobDefinition": plan.job_definition["jobDefinitionName"],
        "retryStrategy": {"attempts": 2}, "propagateTags": True,
        "tags": {"team": "vision", "corral-job-id": JOB_ID},
        "timeout": {"attemptDurationSeconds": 3600},
        "schedulingPriorityOverride": 50, "shareIdentifier": "teamA"}
    assert submit["nodeOverrides"]["numNodes"] == 4
    assert submit["nodeOverrides"]["nodePropertyOverrides"][0]["containerOverrides"][
        "resourceRequirements"] == [{"type": "VCPU", "value": "16"},
                                    {"type": "MEMORY", "value": "65536"},
                                    {"type": "GPU", "value": "4"}]
    text = plan.dry_run_text()
    assert text.startswith(f"# corral job {JOB_ID}: an AWS Batch multi-node parallel job of 4")
    assert "RegisterJobDefinition {" in text and "SubmitJob {" in text
    assert '"launcher": "torchrun"' in text  # the decoded description, for a reader


def test_one_definition_per_contents_the_rest_per_submission() -> None:
    one = backend().render(spec(nodes=2), job_id=JOB_ID)
    two = backend().render(spec(nodes=8, resources={"cpus": 4}, time_limit=120),
                           job_id=JOB_ID.replace("abcdef", "012345"))
    assert one.definition_name == two.definition_name  # nodes, sizes: overridden
    other = backend(shm_size_mb=1024).render(spec(nodes=2), job_id=JOB_ID)
    assert other.definition_name != one.definition_name  # /dev/shm: cannot be overridden
    image = backend(image="corral/train:2").render(spec(nodes=2), job_id=JOB_ID)
    assert image.definition_name != one.definition_name


def test_code_in_s3_and_functions(tmp_path: Path) -> None:
    plan = backend(code="s3", package_store="s3://bucket/corral").render(
        spec(workdir=str(tmp_path), entrypoint=Script(path=str(tmp_path / "train.py"))),
        job_id=JOB_ID)
    assert plan.uploads[0][0] == f"s3://bucket/corral/{JOB_ID}/code.tar.gz"
    assert plan.node_job.package_url == f"s3://bucket/corral/{JOB_ID}/code.tar.gz"
    assert plan.node_job.spec["entrypoint"] == {"kind": "script",
                                                "path": "/tmp/corral/work/train.py"}

    def add(a: int, b: int) -> int:
        return a + b

    from corral.spec import Function

    with pytest.raises(SpecError, match="package_store"):
        backend().render(spec(entrypoint=Function(fn=add, call_args=(1, 2))), job_id=JOB_ID)
    plan = backend(package_store="s3://bucket/corral").render(
        spec(entrypoint=Function(fn=add, call_args=(1, 2))), job_id=JOB_ID)
    assert plan.node_job.payload_url == f"s3://bucket/corral/{JOB_ID}/function.pkl"
    assert plan.node_job.spec["entrypoint"]["argv"][-1] == "/tmp/corral/run/function.pkl"


@pytest.mark.parametrize(("fields", "options", "named"), [
    ({"launcher": "mpirun"}, {}, "launcher"),
    ({"launcher": "ray", "procs_per_node": 1}, {}, "launcher"),
    ({"time_limit": 30}, {}, "time_limit"),
    ({}, {"image": None}, "image"),
    ({}, {"job_queue": None}, "queue"),
    ({"resources": {"gpus": 0.5}}, {}, "resources.gpus"),
    ({}, {"code": "s3"}, "package_store"),
])
def test_refused_before_anything_is_sent(fields: dict[str, Any], options: dict[str, Any],
                                         named: str) -> None:
    with pytest.raises(SpecError) as err:
        backend(**options).render(spec(**fields), job_id=JOB_ID)
    assert named in str(err.value)


@pytest.mark.parametrize(("options", "named"), [
    ({"scheduling_priority": 10000}, "aws-batch.scheduling_priority"),
    ({"retry_attempts": 11}, "aws-batch.retry_attempts"),
    ({"region": "moon"}, "aws-batch.region"),
    ({"tags": ["aws:owner=me"]}, "aws-batch.tags"),
    ({"tags": ["novalue"]}, "aws-batch.tags"),
    ({"package_store": "gs://bucket"}, "aws-batch.package_store"),
    ({"job_role_arn": "role/train"}, "aws-batch.job_role_arn"),
    ({"code": "zip"}, "aws-batch.code"),
    ({"colour": "blue"}, "aws-batch.colour"),
])
def test_bad_options_name_the_field(options: dict[str, Any], named: str) -> None:
    with pytest.raises(SpecError) as err:
        AwsBatchOptions(**{**BASE, **options})
    assert named in str(err.value)


def test_botocore_model_and_cross_field_checks() -> None:
    from corral.backends.aws.validate import problems

    plan = backend().render(spec(nodes=2), job_id=JOB_ID)
    definition = json.loads(json.dumps(plan.job_definition))
    definition["type"] = "multi-node"  # not one of the model's enum
    definition["nodeProperties"]["nodeRangeProperties"][0]["container"]["bogus"] = 1
    found = problems("batch", "RegisterJobDefinition", definition)
    assert any(f == "type" and "multinode" in a for f, _, a in found)
    assert any("bogus" in a for _, _, a in found)
    submit = json.loads(json.dumps(plan.submit_job))
    submit["jobName"] = "-starts-badly"
    submit["nodeOverrides"]["numNodes"] = 0
    submit["timeout"] = {"attemptDurationSeconds": 10}
    submit["schedulingPriorityOverride"] = 12000
    submit["nodeOverrides"]["nodePropertyOverrides"][0]["containerOverrides"][
        "environment"].append({"name": "AWS_BATCH_JOB_ID", "value": "x"})
    named = {f for f, _, _ in cross_checks(submit, definition)}
    assert {"jobName", "nodeOverrides.numNodes", "timeout.attemptDurationSeconds",
            "schedulingPriorityOverride",
            "nodePropertyOverrides[0].containerOverrides.environment"} <= named
    definition = json.loads(json.dumps(plan.job_definition))
    definition["nodeProperties"]["mainNode"] = 3
    assert any(f == "nodeProperties.mainNode" for f, _, _ in cross_checks(
        plan.submit_job, definition))


# -- round trips against moto (an emulator) ---------------------------------------------------


def test_submit_describe_cancel_against_moto(moto: MotoServer, tmp_path: Path) -> None:
    batch_queue(moto)
    (tmp_path / "train.py").write_text("print('hi')\n")
    aws = backend(endpoint_url=moto.url, poll_seconds=0.1)
    first = aws.submit(spec(nodes=2, workdir=str(tmp_path)))
    second = aws.submit(spec(nodes=3, workdir=str(tmp_path)))
    batch = boto3.client("batch", endpoint_url=moto.url)
    definitions = batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
    assert len(definitions) == 1  # the same contents: registered once, reused
    assert definitions[0]["type"] == "multinode"
    record = aws.store.get(first.job_id)
    sent = batch.describe_jobs(jobs=[record.engine_id])["jobs"][0]
    assert sent["jobName"] == first.job_id and sent["tags"]["corral-job-id"] == first.job_id
    assert sent["jobDefinition"] == definitions[0]["jobDefinitionArn"]
    # (moto does not apply nodeOverrides to what it describes: the emulator's limit)
    # moto (an emulator) runs nothing without docker: its jobs go straight to SUCCEEDED
    assert aws.wait(first.job_id, timeout=30).state is JobState.SUCCEEDED
    status = aws.cancel(second.job_id)
    assert aws.cancel(second.job_id).state is status.state  # cancelling again changes nothing
    found = aws.find_submitted([aws.store.get(second.job_id)])
    assert found == {second.job_id: aws.store.get(second.job_id).engine_id}


def test_code_package_goes_to_s3_and_a_failed_submit_removes_it(
        moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)  # s3fs (fsspec) asks the emulator too
    batch_queue(moto)
    s3 = boto3.client("s3", endpoint_url=moto.url)
    s3.create_bucket(Bucket="code")
    (tmp_path / "train.py").write_text("print('hi')\n")
    aws = backend(endpoint_url=moto.url, code="s3", package_store="s3://code/corral")
    ref = aws.submit(spec(nodes=2, workdir=str(tmp_path)))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="code")["Contents"]]
    assert keys == [f"corral/{ref.job_id}/code.tar.gz"]
    with pytest.raises(Exception, match="gpu-queue-missing"):
        backend(endpoint_url=moto.url, code="s3", package_store="s3://code/corral",
                job_queue="gpu-queue-missing").submit(spec(nodes=2, workdir=str(tmp_path)))
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="code")["Contents"]]
    assert keys == [f"corral/{ref.job_id}/code.tar.gz"]  # the failed one left nothing


# -- per-node states: fixtures written from AWS Batch's DescribeJobs documentation ------------

NOW = int(time.time() * 1000)


def node_job(engine: str, index: int, status: str, code: int | None = None,
             reason: str = "", stopped: int | None = None) -> dict[str, Any]:
    """A ``jobId#N`` as DescribeJobs shows a multi-node job's node."""
    container: dict[str, Any] = {"logStreamName": f"corral-x/default/task{index}",
                                 "containerInstanceArn": f"arn:aws:ecs:us-east-1:123456789012"
                                 f":container-instance/ci-{index}"}
    if code is not None:
        container["exitCode"] = code
    if reason:
        container["reason"] = reason
    job = {"jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{engine}#{index}",
           "jobName": "x", "jobId": f"{engine}#{index}", "jobQueue": "q", "status": status,
           "startedAt": NOW - 60_000, "jobDefinition": "d",
           "nodeDetails": {"nodeIndex": index, "isMainNode": index == 0},
           "container": container}
    if stopped is not None:
        job["stoppedAt"] = stopped
    return job


def main_job(engine: str, status: str, reason: str = "") -> dict[str, Any]:
    job = {"jobArn": f"arn:aws:batch:us-east-1:123456789012:job/{engine}", "jobName": "x",
           "jobId": engine, "jobQueue": "q", "status": status, "startedAt": NOW - 60_000,
           "jobDefinition": "d", "nodeProperties": {"numNodes": 2, "mainNode": 0,
                                                    "nodeRangeProperties": []}}
    if reason:
        job["statusReason"] = reason
    return job


def stubbed(tmp_path: Path, moto_url: str, nodes: int = 2, launcher: str = "torchrun"
            ) -> tuple[AwsBatchBackend, Stubber, str]:
    """A backend whose Batch answers come from fixtures and whose logs come from moto's
    CloudWatch Logs (seeded by the test)."""
    batch = boto3.client("batch", region_name="us-east-1", endpoint_url=moto_url)
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=moto_url)
    stub = Stubber(batch)
    stub.add_response("describe_job_definitions", {"jobDefinitions": [
        {"jobDefinitionName": "d", "jobDefinitionArn": "arn:def", "revision": 1,
         "type": "multinode"}]}, {"jobDefinitionName": ANY, "status": "ACTIVE"})
    stub.add_response("submit_job", {"jobName": "x", "jobId": "job-1"}, None)
    stub.activate()
    aws = backend(clients={"batch": batch, "logs": logs}, poll_seconds=0.1,
                  log_group="/corral/test")
    (tmp_path / "train.py").write_text("")
    ref = aws.submit(spec(nodes=nodes, procs_per_node=2, workdir=str(tmp_path),
                          launcher=launcher))
    return aws, stub, ref.job_id


def seed(moto_url: str, stream: str, lines: list[str]) -> None:
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=moto_url)
    try:
        logs.create_log_group(logGroupName="/corral/test")
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    logs.create_log_stream(logGroupName="/corral/test", logStreamName=stream)
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName="/corral/test", logStreamName=stream, logEvents=[
        {"timestamp": now + i, "message": line} for i, line in enumerate(lines)])


def test_a_child_node_failing_fails_the_job_and_is_named(moto: MotoServer,
                                                         tmp_path: Path) -> None:
    aws, stub, job_id = stubbed(tmp_path, moto.url)
    seed(moto.url, "corral-x/default/task1", [
        "[corral] aws-batch node 1 is corral node 1 of 2; rendezvous at 10.0.0.5:29500",
        "[rank 2] Traceback (most recent call last):",
        "[rank 2] RuntimeError: CUDA error: out of memory",
        "[corral] the launcher of node 1 exited with code 1 at 1764400000.250",
        "[node 1] Root Cause (first observed failure):",
        "[node 1] [0]:",
        "[node 1]   time      : 2026-11-29_12:00:00",
        "[node 1]   host      : ip-10-0-0-6",
        "[node 1]   rank      : 2 (local_rank: 0)",
        "[node 1]   exitcode  : 1 (pid: 99)",
    ])
    # The main node still runs: AWS Batch alone would let the job go on without node 1.
    stub.add_response("describe_jobs", {"jobs": [main_job("job-1", "RUNNING")]},
                      {"jobs": ["job-1"]})
    stub.add_response("describe_jobs", {"jobs": [
        node_job("job-1", 0, "RUNNING"),
        node_job("job-1", 1, "FAILED", 1, "Essential container in task exited", NOW)]},
        {"jobs": ["job-1#0", "job-1#1"]})
    stub.add_response("terminate_job", {}, {"jobId": "job-1", "reason": "corral: node 1 failed"})
    record = aws.store.get(job_id)
    seen = aws.describe_many([record])[job_id]
    stub.assert_no_pending_responses()  # corral terminated the job itself
    assert seen.state is JobState.FAILED
    assert seen.failure is not None
    assert (seen.failure.node, seen.failure.rank, seen.failure.returncode) == (1, 2, 1)
    assert "AWS Batch node job-1#1" in seen.failure.reason
    assert "Essential container in task exited" in seen.failure.reason
    assert "RuntimeError: CUDA error: out of memory" in seen.failure.last_lines
    assert seen.ranks is not None
    assert [r.state for r in seen.ranks] == [JobState.CANCELLED, JobState.CANCELLED,
                                             JobState.FAILED, JobState.CANCELLED]
    assert seen.ranks[2].host == "ci-1"
    # torchrun's rendezvous may put rank 0 on node 1: the failing rank's node is where it ran
    seed(moto.url, "corral-x/default/task1b", [
        "[rank 0] RuntimeError: boom", "[corral] rank 0 exited with code 7 at 1764400000.5"])
    nodes = {0: node_job("job-1", 0, "RUNNING"),
             1: {**node_job("job-1", 1, "FAILED", 7, stopped=NOW),
                 "container": {"logStreamName": "corral-x/default/task1b", "exitCode": 7}}}
    moved = aws._observe(record, main_job("job-1", "FAILED", "Essential container exited"),
                         nodes)
    assert moved.failure is not None and (moved.failure.node, moved.failure.rank) == (1, 0)
    assert moved.ranks is not None and moved.ranks[0].node == 1
    assert moved.ranks[0].state is JobState.FAILED and moved.ranks[0].returncode == 7


def test_a_failed_node_fails_the_job_even_when_the_terminate_is_refused(
        moto: MotoServer, tmp_path: Path) -> None:
    aws, stub, job_id = stubbed(tmp_path, moto.url)
    stub.add_response("describe_jobs", {"jobs": [main_job("job-1", "RUNNING")]},
                      {"jobs": ["job-1"]})
    stub.add_response("describe_jobs", {"jobs": [
        node_job("job-1", 0, "RUNNING"), node_job("job-1", 1, "FAILED", 2, stopped=NOW)]},
        {"jobs": ["job-1#0", "job-1#1"]})
    stub.add_client_error("terminate_job", "AccessDeniedException", "not allowed",
                          http_status_code=403)
    seen = aws.describe_many([aws.store.get(job_id)])[job_id]
    assert seen.state is JobState.FAILED and seen.failure is not None
    assert seen.failure.node == 1 and seen.failure.returncode == 2
    assert seen.notes is not None
    assert "aws batch terminate-job --job-id job-1" in seen.notes[-1]
    assert "lack this permission" in seen.notes[-1]


@pytest.mark.parametrize(("status", "reason", "expected"), [
    ("RUNNABLE", "", JobState.PENDING),
    ("FAILED", "Job attempt duration exceeded timeout", JobState.TIMEOUT),
    ("FAILED", "cancelled by corral", JobState.CANCELLED),
    ("SUCCEEDED", "", JobState.SUCCEEDED),
])
def test_main_node_states(moto: MotoServer, tmp_path: Path, status: str, reason: str,
                          expected: JobState) -> None:
    aws, stub, job_id = stubbed(tmp_path, moto.url)
    stub.add_response("describe_jobs", {"jobs": [main_job("job-1", status, reason)]},
                      {"jobs": ["job-1"]})
    if status != "RUNNABLE":
        final = "SUCCEEDED" if status == "SUCCEEDED" else "FAILED"
        stub.add_response("describe_jobs", {"jobs": [
            node_job("job-1", i, final, 0 if final == "SUCCEEDED" else 143, stopped=NOW)
            for i in range(2)]}, {"jobs": ["job-1#0", "job-1#1"]})
    seen = aws.describe_many([aws.store.get(job_id)])[job_id]
    assert seen.state is expected
    if expected is JobState.PENDING:
        assert "waiting in the queue for compute resources" in seen.reason


def test_main_succeeded_but_a_child_failed(moto: MotoServer, tmp_path: Path) -> None:
    aws, stub, job_id = stubbed(tmp_path, moto.url)
    stub.add_response("describe_jobs", {"jobs": [main_job("job-1", "SUCCEEDED")]},
                      {"jobs": ["job-1"]})
    stub.add_response("describe_jobs", {"jobs": [
        node_job("job-1", 0, "SUCCEEDED", 0, stopped=NOW),
        node_job("job-1", 1, "FAILED", 137, "OutOfMemoryError: Container killed due to "
                 "memory usage", NOW - 5000)]}, {"jobs": ["job-1#0", "job-1#1"]})
    seen = aws.describe_many([aws.store.get(job_id)])[job_id]
    assert seen.state is JobState.FAILED and seen.failure is not None
    assert seen.failure.node == 1 and seen.failure.returncode == 137
    assert "OutOfMemoryError" in seen.failure.reason  # no log stream: AWS's words


def test_logs_page_and_follow(moto: MotoServer, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    import corral.backends.aws.cloudwatch as cloudwatch

    monkeypatch.setattr(cloudwatch, "PAGE", 7)  # several pages for 30 lines
    aws, stub, job_id = stubbed(tmp_path, moto.url)
    seed(moto.url, "corral-x/default/task0", [f"[rank {i % 2}] line {i}" for i in range(30)])
    seed(moto.url, "corral-x/default/task1", ["[rank 3] on node 1"])
    stub.add_response("describe_jobs", {"jobs": [node_job("job-1", i, "RUNNING")
                                                 for i in range(2)]},
                      {"jobs": ["job-1#0", "job-1#1"]})  # torchrun: any node may hold rank 3
    assert [(s.kind, s.number, t) for s, t in aws.logs(job_id, rank=3)] == [
        ("rank", 3, "on node 1")]
    launcher_none, stub_none, none_id = stubbed(tmp_path, moto.url, launcher="none")
    stub_none.add_response("describe_jobs", {"jobs": [node_job("job-1", 1, "RUNNING")]},
                           {"jobs": ["job-1#1"]})  # a rank's own node, and only that one
    assert [t for _, t in launcher_none.logs(none_id, rank=3)] == ["on node 1"]
    stub.add_response("describe_jobs", {"jobs": [node_job("job-1", i, "RUNNING")
                                                 for i in range(2)]},
                      {"jobs": ["job-1#0", "job-1#1"]})
    lines = [t for s, t in aws.logs(job_id) if s.number == 0 and s.kind == "rank"]
    assert lines == [f"line {i}" for i in range(0, 30, 2)]
    follower = cloudwatch.StreamFollower(aws._client("logs"), "/corral/test",
                                         "corral-x/default/task0")
    assert len(follower.poll()) == 30
    logs = boto3.client("logs", region_name="us-east-1", endpoint_url=moto.url)
    logs.put_log_events(logGroupName="/corral/test", logStreamName="corral-x/default/task0",
                        logEvents=[{"timestamp": int(time.time() * 1000) + 100,
                                    "message": "[rank 0] later"}])
    assert follower.poll() == ["[rank 0] later"]  # only what is new
    assert follower.poll() == []


# -- the node contract, for real --------------------------------------------------------------


def node_env(plan: Any, nodes: int) -> dict[int, dict[str, str]]:
    """What AWS Batch gives each node's container (faked here: the service sets it)."""
    env = plan.submit_job["nodeOverrides"]["nodePropertyOverrides"][0]["containerOverrides"][
        "environment"]
    given = {e["name"]: e["value"] for e in env}
    found = {}
    for index in range(nodes):
        node = {**given, "AWS_BATCH_JOB_NODE_INDEX": str(index),
                "AWS_BATCH_JOB_NUM_NODES": str(nodes), "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
                "AWS_BATCH_JOB_ID": f"job-1#{index}", "PYTHONUNBUFFERED": "1"}
        if index == 0:
            node["CORRAL_NODE_ADDRESS"] = "127.0.0.1"  # the main node's own address
        else:
            node["AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"] = "127.0.0.1"
        found[index] = node
    return found


def test_node_contract_2x2_torchrun_on_emulated_nodes(tmp_path: Path) -> None:
    from corral.ports import pick_port

    work = tmp_path / "work"
    work.mkdir()
    (work / "ddp.py").write_text(DDP)
    aws = backend(python=sys.executable, image_workdir=str(work), master_port=pick_port())
    plan = aws.render(spec(nodes=2, procs_per_node=2, entrypoint=Script(path="ddp.py")),
                      job_id=JOB_ID)
    command = plan.job_definition["nodeProperties"]["nodeRangeProperties"][0]["container"][
        "command"]
    status = run_service_nodes(command, node_env(plan, 2), tmp_path / "nodes")
    assert status.state is JobState.SUCCEEDED, status.reason
    from cloud_nodes import node_output

    out = node_output(status)
    for rank in range(4):
        assert f"[rank {rank}] rank {rank} node {rank // 2} sum 10" in out
    assert "[corral] aws-batch node 1 is corral node 1 of 2; rendezvous at 127.0.0.1" in out


def test_node_contract_a_failing_rank_is_named_by_both(moto: MotoServer,
                                                       tmp_path: Path) -> None:
    """Rank 2 (node 1) is killed: the local run names node 1; its output, as node 1's
    CloudWatch stream, lets corral's per-node describe (fixtures) name rank 2 on node 1."""
    from corral.ports import pick_port

    work = tmp_path / "work"
    work.mkdir()
    (work / "ddp.py").write_text(DDP)
    aws = backend(python=sys.executable, image_workdir=str(work), master_port=pick_port())
    plan = aws.render(spec(nodes=2, procs_per_node=2, entrypoint=Script(path="ddp.py"),
                           launcher="none", env={"FAIL_RANK": "2"}), job_id=JOB_ID)
    command = plan.job_definition["nodeProperties"]["nodeRangeProperties"][0]["container"][
        "command"]
    status = run_service_nodes(command, node_env(plan, 2), tmp_path / "nodes")
    assert status.state is JobState.FAILED
    assert status.failure is not None and status.failure.node == 1
    from corral.backends.local import LocalBackend

    node_one = [t for s, t in LocalBackend().logs(status.job_id)
                if s.kind == "rank" and s.number == 1]  # emulated node 1's output
    assert any(line.startswith("[corral] rank 2 exited with code -9 at") for line in node_one)
    described, stub, job_id = stubbed(tmp_path, moto.url)
    seed(moto.url, "corral-x/default/task1", node_one)
    stub.add_response("describe_jobs", {"jobs": [main_job("job-1", "FAILED",
                                                          "Essential container exited")]},
                      {"jobs": ["job-1"]})
    stub.add_response("describe_jobs", {"jobs": [
        node_job("job-1", 0, "FAILED", 143, stopped=NOW),
        node_job("job-1", 1, "FAILED", 137, stopped=NOW - 1000)]},
        {"jobs": ["job-1#0", "job-1#1"]})
    seen = described.describe_many([described.store.get(job_id)])[job_id]
    assert seen.failure is not None
    assert (seen.failure.node, seen.failure.rank, seen.failure.returncode) == (1, 2, -9)
    assert "signal 9 (SIGKILL)" in seen.failure.reason
    assert "rank 2 gives up" in seen.failure.last_lines
