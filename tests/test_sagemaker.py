"""The SageMaker backend, without AWS.

What each layer is evidence of:

- golden renders and the validators: the exact CreateTrainingJob request and S3 objects of
  every option, checked against botocore's own model of the service (no service asked);
- DescribeTrainingJob answers through botocore's Stubber, from fixtures written by hand from
  the API reference (tests/fixtures/sagemaker/README.md): how corral reads states and
  failures; not evidence of what a running SageMaker says;
- moto's server on 127.0.0.1, an EMULATOR: the round trip of real boto3 requests (S3
  uploads, CreateTrainingJob, DescribeTrainingJob, ListTags) and CloudWatch Logs paging;
  moto completes every training job at once and runs nothing, so it says nothing about
  instances or per-node behaviour;
- the node contract for real: the rendered container command runs as real processes on the
  local backend's emulated nodes, each with its own resourceconfig.json (faked: on
  SageMaker, SageMaker writes it), and a 2 x 2 torchrun DDP all_reduce succeeds.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY

from cloud_nodes import node_output, run_service_nodes
from corral.backends import backend_class, configured_backend
from corral.backends.local import LocalBackend
from corral.backends.sagemaker import SageMakerBackend, SageMakerOptions, SageMakerPlan, observe
from corral.backends.sagemaker.render import (
    PATHS,
    ContainerPaths,
    render,
    training_job_name,
)
from corral.codepackage import pack
from corral.errors import BackendError, MissingDependency, SpecError
from corral.jobstate import JobState
from corral.runtime.cloud_env import sagemaker as sagemaker_place
from corral.runtime.cloud_job import NodeJob
from corral.spec import JobSpec
from corral.states import Source
from corral.store import Observation
from infra.moto_server import FAKE_CREDENTIALS, MotoServer, moto, moto_session  # noqa: F401

FIXTURES = Path(__file__).parent / "fixtures" / "sagemaker"
JOB_ID = "train-261129-101010-abcdef"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/corral-train:1.4"
REGION = "us-east-1"
UPDATE_GOLDEN = bool(os.environ.get("CORRAL_UPDATE_GOLDEN"))


def spec(**fields: Any) -> JobSpec:
    base: dict[str, Any] = {"name": "train", "entrypoint": {"kind": "script", "path": "train.py"},
                            "nodes": 2, "procs_per_node": 2, "launcher": "torchrun",
                            "image": IMAGE}
    return JobSpec(**{**base, **fields})


def options(**values: Any) -> SageMakerOptions:
    base: dict[str, Any] = {"role_arn": ROLE, "s3_prefix": "s3://my-bucket/corral"}
    return SageMakerOptions(**{**base, **values})


def plan_for(job_spec: JobSpec | None = None, **values: Any) -> SageMakerPlan:
    return render(job_spec or spec(), job_id=JOB_ID, options=options(**values),
                  local_workdir="/home/me/project")


def at(data: dict[str, Any], path: str) -> Any:
    for part in path.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def check_golden(name: str, text: str) -> None:
    path = FIXTURES / name
    if UPDATE_GOLDEN:
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), "regenerate with CORRAL_UPDATE_GOLDEN=1"


# -- golden renders --------------------------------------------------------------------------

def test_golden_dry_run_defaults() -> None:
    check_golden("dry_run_defaults.txt", plan_for().dry_run_text())


EVERY_OPTION: dict[str, Any] = {
    "instance_type": "ml.g5.12xlarge", "image": IMAGE.replace(":1.4", ":1.5"),
    "python": "/usr/bin/python3.11", "output_path": "s3://my-output/models",
    "volume_size_gb": 200, "use_spot": True, "max_wait": "36h",
    "checkpoint_s3_uri": "s3://my-bucket/checkpoints/train",
    "hyperparameters": ["lr=0.1", "epochs=3"], "tags": ["team=vision", "cost-centre=4711"],
    "subnets": ["subnet-0abc", "subnet-0def"], "security_group_ids": "sg-0123",
    "enable_network_isolation": True, "inter_container_encryption": True,
    "keep_alive_seconds": 1800, "master_port": 29600,
}


def test_golden_dry_run_every_option() -> None:
    job = spec(time_limit="20h", env={"WANDB_MODE": "offline", "LONG": "x" * 600},
               resources={"gpus": 4, "cpus": 48})
    check_golden("dry_run_every_option.txt", plan_for(job, **EVERY_OPTION).dry_run_text())


@pytest.mark.parametrize(("option", "value", "path", "expected"), [
    ("instance_type", "ml.p4d.24xlarge", "ResourceConfig.InstanceType", "ml.p4d.24xlarge"),
    ("image", "repo/img:2", "AlgorithmSpecification.TrainingImage", "repo/img:2"),
    ("python", "python3.12", "AlgorithmSpecification.ContainerEntrypoint.0", "python3.12"),
    ("output_path", "s3://out-bucket/x", "OutputDataConfig.S3OutputPath", "s3://out-bucket/x"),
    ("volume_size_gb", 77, "ResourceConfig.VolumeSizeInGB", 77),
    ("use_spot", True, "EnableManagedSpotTraining", True),
    ("use_spot", True, "StoppingCondition.MaxWaitTimeInSeconds", 2 * 86400),
    ("checkpoint_s3_uri", "s3://my-bucket/ck", "CheckpointConfig",
     {"S3Uri": "s3://my-bucket/ck", "LocalPath": "/opt/ml/checkpoints"}),
    ("hyperparameters", "lr=0.1", "HyperParameters", {"lr": "0.1"}),
    ("hyperparameters", {"a": 1}, "HyperParameters", {"a": "1"}),
    ("tags", ["a=1", "b=x y"], "Tags", [{"Key": "corral-job-id", "Value": JOB_ID},
                                         {"Key": "a", "Value": "1"},
                                         {"Key": "b", "Value": "x y"}]),
    ("enable_network_isolation", True, "EnableNetworkIsolation", True),
    ("inter_container_encryption", True, "EnableInterContainerTrafficEncryption", True),
    ("keep_alive_seconds", 600, "ResourceConfig.KeepAlivePeriodInSeconds", 600),
    ("s3_prefix", "s3://other-bucket/a/b/", "InputDataConfig.0.DataSource.S3DataSource.S3Uri",
     f"s3://other-bucket/a/b/{JOB_ID}/"),
    ("s3_prefix", "s3://other-bucket/a", "OutputDataConfig.S3OutputPath",
     "s3://other-bucket/a/output"),
])
def test_each_option_reaches_the_request(option: str, value: Any, path: str,
                                         expected: Any) -> None:
    assert at(plan_for(**{option: value}).request, path) == expected


def test_options_that_change_the_node_job() -> None:
    plan = plan_for(master_port=29777, python="python3.12")
    assert (plan.node_job.master_port, plan.node_job.python) == (29777, "python3.12")
    vpc = plan_for(subnets="subnet-1", security_group_ids=["sg-1", "sg-2"]).request["VpcConfig"]
    assert vpc == {"SecurityGroupIds": ["sg-1", "sg-2"], "Subnets": ["subnet-1"]}
    image = plan_for(code="image", image_workdir="/srv/app")
    assert image.node_job.package_url is None and image.node_job.workdir == "/srv/app"
    assert [u.url.rsplit("/", 1)[1] for u in image.uploads] == ["job.json"]
    assert plan_for().node_job.package_url == "/opt/ml/input/data/corral/code.tar.gz"


def test_the_job_reaches_every_instance_through_the_channel() -> None:
    plan = plan_for(spec(entrypoint={"kind": "script", "path": "/home/me/project/src/t.py"},
                         time_limit="90m"))
    channel = plan.request["InputDataConfig"][0]
    assert channel["ChannelName"] == "corral"
    assert channel["DataSource"]["S3DataSource"]["S3DataDistributionType"] == "FullyReplicated"
    algo = plan.request["AlgorithmSpecification"]
    assert algo["ContainerArguments"] == ["--job", "/opt/ml/input/data/corral/job.json"]
    assert plan.request["StoppingCondition"] == {"MaxRuntimeInSeconds": 5400}
    job = NodeJob.decode(plan.uploads[0].text or "")
    assert job.spec["entrypoint"]["path"] == "/opt/ml/corral/work/src/t.py"
    assert (job.run_dir, job.workdir) == (PATHS.run_dir, PATHS.work_dir)
    assert plan.run_dir == PATHS.run_dir and plan.name == JOB_ID


def test_function_job_ships_its_payload() -> None:
    from corral.spec import Function

    job = spec(entrypoint=Function(fn=len, call_args=([1, 2],)), launcher="none")
    plan = plan_for(job)
    assert plan.node_job.payload_url == "/opt/ml/input/data/corral/function.pkl"
    assert plan.uploads[-1].url == f"s3://my-bucket/corral/{JOB_ID}/function.pkl"


def test_environment_keeps_what_fits_and_the_rest_travels_in_job_json() -> None:
    plan = plan_for(spec(env={"SHORT": "1", "LONG": "x" * 513}))
    assert plan.request["Environment"] == {"PYTHONUNBUFFERED": "1", "SHORT": "1"}
    assert NodeJob.decode(plan.uploads[0].text or "").spec["env"]["LONG"] == "x" * 513
    assert any("LONG" in n for n in plan.notes)


def test_gpus_are_the_instance_type_s_business() -> None:
    assert any("has none" in w for w in plan_for(spec(resources={"gpus": 8})).warnings)
    assert not plan_for(spec(resources={"gpus": 8}), instance_type="ml.p4d.24xlarge").warnings


@pytest.mark.parametrize("job_id", [
    JOB_ID, "a" * 40 + "-261129-101010-abcdef", "x" * 90 + "-261129-101010-abcdef",
    "--weird__name..-261129-101010-abcdef", "Ünïcode-job", "-", "1.2.3",
])
def test_training_job_name_is_valid_and_keeps_the_unique_end(job_id: str) -> None:
    import re

    name = training_job_name(job_id)
    assert re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", name), name
    if job_id.endswith("abcdef"):
        assert name.endswith("261129-101010-abcdef")


# -- validators: bad requests are refused before anything is sent ---------------------------

@pytest.mark.parametrize(("values", "job", "field", "says"), [
    ({"instance_type": "ml.nope.xlarge"}, {}, "ResourceConfig.InstanceType", "one of"),
    ({"role_arn": "arn:aws:iam::12:role/x"}, {}, "sagemaker.role_arn", "pattern"),
    ({"s3_prefix": "https://my-bucket/x"}, {}, "sagemaker.s3_prefix", "pattern"),
    ({"output_path": "s3://B/x"}, {}, "sagemaker.output_path", "pattern"),
    ({"tags": "team=a#b"}, {}, "Tags[1].Value", "letters, spaces, digits"),
    ({"tags": "x" * 129 + "=1"}, {}, "Tags[1].Key", "1 to 128"),
    ({"tags": "aws:owner=me"}, {}, "sagemaker.tags", "AWS's own"),
    ({"tags": "corral-job-id=x"}, {}, "sagemaker.tags", "corral sets"),
    ({"tags": [f"k{i}=v" for i in range(50)]}, {}, "Tags", "at most 50"),
    ({"hyperparameters": [f"k{i}=v" for i in range(101)]}, {}, "HyperParameters",
     "at most 100"),
    ({"hyperparameters": "lr=" + "1" * 2501}, {}, "HyperParameters['lr']", "at most 2500"),
    ({}, {"time_limit": "29d"}, "StoppingCondition.MaxRuntimeInSeconds", "28 days"),
    ({"use_spot": True, "max_wait": "1h"}, {"time_limit": "2h"},
     "StoppingCondition.MaxWaitTimeInSeconds", "at least MaxRuntimeInSeconds"),
    ({"max_wait": "3h"}, {}, "StoppingCondition.MaxWaitTimeInSeconds", "use_spot"),
    ({"subnets": "subnet-1"}, {}, "VpcConfig", "security_group_ids"),
    ({"subnets": "subnet-1"}, {}, "CreateTrainingJob request", "SecurityGroupIds"),
    ({"image": "x" * 256}, {}, "AlgorithmSpecification.TrainingImage", "at most 255"),
    ({"python": "p" * 257}, {}, "AlgorithmSpecification.ContainerEntrypoint[0]",
     "at most 256"),
    ({"keep_alive_seconds": 30000}, {}, "sagemaker.keep_alive_seconds", "21600"),
    ({"volume_size_gb": 0}, {}, "sagemaker.volume_size_gb", "greater than or equal to 1"),
    ({"region": "mars"}, {}, "sagemaker.region", "pattern"),
    ({"endpoint_url": "ftp://x"}, {}, "sagemaker.endpoint_url", "pattern"),
    ({"max_wait": "soon"}, {}, "sagemaker.max_wait", ""),
    ({"code": "git"}, {}, "sagemaker.code", "package"),
    ({"color": "red"}, {}, "sagemaker.color", "unknown field"),
    ({"role_arn": None}, {}, "sagemaker.role_arn", "IAM role"),
    ({"s3_prefix": None}, {}, "sagemaker.s3_prefix", "s3://BUCKET"),
    ({}, {"image": None}, "image", "container image"),
    ({}, {"launcher": "mpirun"}, "launcher", "on sagemaker"),
    ({}, {"launcher": "ray", "procs_per_node": 1}, "launcher", "on sagemaker"),
])
def test_validators_refuse(values: dict[str, Any], job: dict[str, Any], field: str,
                           says: str) -> None:
    with pytest.raises(SpecError) as caught:
        plan_for(spec(**job), **values)
    problems = caught.value.problems
    assert any(field in name and says in accepted for name, _, accepted in problems), problems


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(SpecError) as caught:
        plan_for(spec(time_limit="30d"), instance_type="ml.bogus", tags="k=#")
    fields = [name for name, _, _ in caught.value.problems]
    assert len(fields) == 3 and all(f.startswith("sagemaker CreateTrainingJob: ")
                                    for f in fields)


def test_a_valid_request_passes_botocore_s_own_validator() -> None:
    from botocore.session import get_session
    from botocore.validate import ParamValidator

    request = plan_for(spec(time_limit="1h"), **EVERY_OPTION).request
    model = get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob")
    assert not ParamValidator().validate(request, model.input_shape).has_errors()


def test_without_boto3_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(MissingDependency, match=r"pip install 'corral\[aws\]'"):
        plan_for()


def test_cli_dry_run_prints_the_exact_request(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print('hi')\n")
    cli = [sys.executable, "-m", "corral.cli", "run", "--backend", "sagemaker", "--dry-run",
           "--nodes", "2", "--image", IMAGE, "-o", f"role_arn={ROLE}",
           "-o", "s3_prefix=s3://my-bucket/corral", "-o", "tags=team=a"]
    done = subprocess.run([*cli, "train.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"TrainingJobName": "train-' in done.stdout and '"InstanceCount": 2' in done.stdout
    bad = subprocess.run([*cli, "-o", "instance_type=ml.tiny", "train.py"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 125 and "ResourceConfig.InstanceType" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_registered_and_options_from_plain_values() -> None:
    assert backend_class("sagemaker") is SageMakerBackend
    backend = configured_backend("sagemaker", {"role_arn": ROLE, "subnets": "subnet-1",
                                                "poll_seconds": 3})
    assert isinstance(backend, SageMakerBackend) and backend.poll_interval == 3
    full = options(**EVERY_OPTION)  # as recorded with a job, and read back by later commands
    again = configured_backend("sagemaker", SageMakerBackend(full).options_data())
    assert isinstance(again, SageMakerBackend) and again.options == full


# -- states and failures from DescribeTrainingJob (fixtures from the API reference) ----------

_TIMES = ("StartTime", "EndTime", "CreationTime", "LastModifiedTime", "TrainingStartTime",
          "TrainingEndTime")


def _parsed(value: Any) -> Any:
    """As botocore's parser gives it: timestamps as datetimes."""
    if isinstance(value, dict):
        return {k: (datetime.fromisoformat(v.replace("Z", "+00:00"))
                    if k in _TIMES and isinstance(v, str) else _parsed(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_parsed(v) for v in value]
    return value


def described(case: str, name: str = JOB_ID) -> dict[str, Any]:
    cases = json.loads((FIXTURES / "describe_training_job.json").read_text(encoding="utf-8"))
    found: dict[str, Any] = _parsed(cases[case])
    found["TrainingJobName"] = name
    found["TrainingJobArn"] = f"arn:aws:sagemaker:{REGION}:123456789012:training-job/{name}"
    return found


@pytest.mark.parametrize(("case", "state", "reason", "attempt"), [
    ("starting", JobState.PENDING, "Starting: Launching requested ML instances", 1),
    ("downloading", JobState.PENDING, "Downloading: Downloading the training image", 1),
    ("training", JobState.RUNNING, "", 1),
    ("spot_interrupted", JobState.PENDING, "Interrupted: Insufficient capacity", 2),
    ("spot_resumed", JobState.RUNNING, "", 2),
    ("completed", JobState.SUCCEEDED, "", 1),
    ("failed_algo2", JobState.FAILED, "AlgorithmError", 1),
    ("failed_capacity", JobState.FAILED, "CapacityError", 1),
    ("stopping", JobState.RUNNING, "Stopping", 1),
    ("stopped", JobState.CANCELLED, "StopTrainingJob", 1),
    ("max_runtime_exceeded", JobState.TIMEOUT, "MaxRuntimeInSeconds", 1),
    ("max_wait_exceeded", JobState.TIMEOUT, "MaxWaitTimeInSeconds", 2),
])
def test_states_from_the_documented_answers(case: str, state: JobState, reason: str,
                                            attempt: int) -> None:
    desc = described(case)
    found, why = observe.job_state(desc)
    assert (found, observe.engine_attempt(desc)) == (state, attempt)
    assert reason in why
    started, finished = observe.times(desc, found)
    assert (finished is not None) == found.is_terminal()
    assert started is not None or case in ("starting", "downloading", "failed_capacity")


def test_unknown_answers_are_unknown_not_a_crash() -> None:
    assert observe.job_state({"TrainingJobStatus": "Hibernating"})[0] is JobState.UNKNOWN
    assert observe.job_state({})[0] is JobState.UNKNOWN
    assert observe.failed_host("AlgorithmError: on algo-12, exit 1") == 11
    assert observe.failed_host("ClientError: no host") is None


def test_ranks_hosts_are_known_except_under_torchrun() -> None:
    from corral.status import Failure

    plain = observe.rank_statuses(2, 2, "none", JobState.RUNNING, None)
    assert [(r.node, r.host) for r in plain] == [(0, "algo-1"), (0, "algo-1"),
                                                 (1, "algo-2"), (1, "algo-2")]
    failed = Failure(node=1, rank=0, returncode=3, reason="exit code 3")
    ranks = observe.rank_statuses(2, 2, "torchrun", JobState.FAILED, failed)
    assert [(r.state, r.host) for r in ranks] == [
        (JobState.FAILED, "algo-2"), *[(JobState.CANCELLED, None)] * 3]


def test_streams_map_to_nodes() -> None:
    streams = [f"{JOB_ID}/algo-2-1795980000", f"{JOB_ID}/algo-1-1795980000",
               f"{JOB_ID}/algo-10-1795980000", f"{JOB_ID}/algo-1-1795990000",
               f"{JOB_ID}-2/algo-1-1795980000", f"{JOB_ID}/algo-0-1", f"{JOB_ID}/other"]
    assert observe.node_streams(JOB_ID, streams) == {
        0: [f"{JOB_ID}/algo-1-1795980000", f"{JOB_ID}/algo-1-1795990000"],
        1: [f"{JOB_ID}/algo-2-1795980000"], 9: [f"{JOB_ID}/algo-10-1795980000"]}
    config = {"current_host": "algo-2", "hosts": [f"algo-{i}" for i in range(10, 0, -1)]}
    where = sagemaker_place(config)  # the node's side: algo-2 is node 1
    assert (where.node_rank, where.master_addr) == (1, "algo-1")


# -- the backend against a stubbed SageMaker and moto's CloudWatch Logs ----------------------

@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(name="emulator")
def _emulator(request: pytest.FixtureRequest) -> MotoServer:
    """moto's server, clean for this test (the ``moto`` fixture, under a name of its own)."""
    server: MotoServer = request.getfixturevalue("moto")
    return server


def stubbed_sagemaker() -> Any:
    """A real boto3 SageMaker client whose answers come from botocore's Stubber (it checks
    each request and each fixture against the service model); its endpoint is loopback."""
    import boto3
    from botocore.stub import Stubber

    sm = boto3.client("sagemaker", region_name=REGION, endpoint_url="http://127.0.0.1:9")
    stub = Stubber(sm)
    stub.activate()
    sm.stub = stub
    return sm


def moto_client(server: MotoServer, service: str) -> Any:
    import boto3

    return boto3.client(service, region_name=REGION, endpoint_url=server.url)


def recorded(backend: SageMakerBackend, job: JobSpec, job_id: str = JOB_ID) -> str:
    """The job as submit leaves it: recorded, PENDING, with SageMaker's name for it."""
    plan = render(job, job_id=job_id, options=backend.options, local_workdir="/home/me/x")
    backend.record(job, plan)
    backend.store.apply(job_id, Observation(JobState.PENDING), Source.SUBMIT,
                        engine_id=plan.name)
    return job_id


def seed_streams(logs: Any, streams: dict[str, list[str]]) -> None:
    group = observe.LOG_GROUP
    try:
        logs.create_log_group(logGroupName=group)
    except logs.exceptions.ResourceAlreadyExistsException:
        pass
    now = int(time.time() * 1000)
    for stream, lines in streams.items():
        try:
            logs.create_log_stream(logGroupName=group, logStreamName=stream)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass
        if lines:
            logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[
                {"timestamp": now + i, "message": line} for i, line in enumerate(lines)])


def watch(backend: SageMakerBackend, answers: list[dict[str, Any]], job_id: str = JOB_ID
          ) -> list[tuple[JobState, str, int]]:
    """The store after each answer (one DescribeTrainingJob per refresh)."""
    seen = []
    for answer in answers:
        backend.sagemaker.stub.add_response(
            "describe_training_job", answer,
            {"TrainingJobName": training_job_name(job_id)})
        backend.refresh(force=True)
        status = backend.store.status(job_id)
        seen.append((status.state, status.reason, status.attempt))
    backend.sagemaker.stub.assert_no_pending_responses()
    return seen


def test_a_job_s_life_through_the_store(fake_aws: None, emulator: MotoServer) -> None:
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=moto_client(emulator, "logs"))
    recorded(backend, spec())
    seen = watch(backend, [described(c) for c in (
        "starting", "downloading", "training", "spot_interrupted", "spot_resumed",
        "completed")])
    assert [s for s, _, _ in seen] == [JobState.PENDING, JobState.PENDING, JobState.RUNNING,
                                       JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED]
    assert "Launching requested ML instances" in seen[0][1]
    assert [a for _, _, a in seen] == [1, 1, 1, 2, 2, 2]  # the spot reclaim is a requeue
    status = backend.store.status(JOB_ID)
    assert [r.host for r in status.ranks] == [None] * 4  # torchrun: join order decides
    assert all(r.state is JobState.SUCCEEDED and r.returncode == 0 for r in status.ranks)
    assert any("model: s3://my-bucket/corral/output/" in n for n in status.notes)
    assert status.started is not None and status.finished is not None


@pytest.mark.parametrize(("case", "state"), [
    ("max_runtime_exceeded", JobState.TIMEOUT), ("stopped", JobState.CANCELLED),
    ("max_wait_exceeded", JobState.TIMEOUT)])
def test_ends_without_failure(fake_aws: None, emulator: MotoServer, case: str,
                              state: JobState) -> None:
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=moto_client(emulator, "logs"))
    recorded(backend, spec())
    assert watch(backend, [described("training"), described(case)])[-1][0] is state
    assert backend.store.status(JOB_ID).failure is None


FAILED_NODE_1 = [  # what node 1's stream holds when rank 3 fails (the nodelog format)
    "[corral] sagemaker node 1 is corral node 1 of 2; rendezvous at algo-1:29500",
    "[rank 2] step 1", "[rank 3] step 1", "[rank 3] Traceback (most recent call last):",
    "[rank 3] ValueError: bad batch",
    "[corral] rank 3 exited with code 1 at 1795980031.5",
    "[corral] node 1 done: exit code 1",
]
STOPPED_NODE_0 = [
    "[corral] sagemaker node 0 is corral node 0 of 2; rendezvous at algo-1:29500",
    "[rank 0] step 1", "[corral] rank 0 exited with code -15 at 1795980033.0",
]


def test_failure_names_the_rank_from_the_node_logs(fake_aws: None, emulator: MotoServer) -> None:
    logs = moto_client(emulator, "logs")
    seed_streams(logs, {f"{JOB_ID}/algo-1-1795980000": STOPPED_NODE_0,
                        f"{JOB_ID}/algo-2-1795979000": ["[corral] an older start"],
                        f"{JOB_ID}/algo-2-1795980000": FAILED_NODE_1})
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=logs)
    recorded(backend, spec())
    watch(backend, [described("training"), described("failed_algo2")])
    status = backend.store.status(JOB_ID)
    failure = status.failure
    assert status.state is JobState.FAILED and failure is not None
    assert (failure.node, failure.rank, failure.returncode) == (1, 3, 1)
    assert "host algo-2" in failure.reason and "AlgorithmError" in failure.reason
    assert failure.last_lines[-1] == "ValueError: bad batch"
    assert status.reason.startswith("rank 3 on node 1 failed: exit code 1")
    states = {r.rank: r.state for r in status.ranks}
    assert states == {0: JobState.CANCELLED, 1: JobState.CANCELLED, 2: JobState.CANCELLED,
                      3: JobState.FAILED}


@pytest.mark.parametrize(("case", "node", "says"), [
    ("failed_capacity", 0, "CapacityError"), ("failed_algo2", 1, "on host algo-2")])
def test_failure_without_logs_names_what_sagemaker_names(
        fake_aws: None, emulator: MotoServer, case: str, node: int, says: str) -> None:
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=moto_client(emulator, "logs"))  # no log group at all
    recorded(backend, spec())
    watch(backend, [described(case)])
    failure = backend.store.status(JOB_ID).failure
    assert failure is not None and (failure.node, failure.rank) == (node, None)
    assert says in failure.reason


def test_an_unreachable_sagemaker_makes_jobs_unknown(fake_aws: None) -> None:
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker())
    recorded(backend, spec())
    backend.sagemaker.stub.add_client_error("describe_training_job", "ThrottlingException",
                                            "Rate exceeded", http_status_code=400)
    backend.refresh(force=True)
    status = backend.store.status(JOB_ID)
    assert status.state is JobState.UNKNOWN and "ThrottlingException" in status.reason


def test_stop_is_idempotent(fake_aws: None) -> None:
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker())
    recorded(backend, spec())
    record = backend.store.get(JOB_ID)
    stub = backend.sagemaker.stub
    stub.add_response("stop_training_job", {}, {"TrainingJobName": JOB_ID})
    backend._stop(record)
    stub.add_client_error("stop_training_job", "ValidationException", "The request was "
                          "rejected because the training job is in status Completed.")
    backend._stop(record)  # already finished: nothing to do
    stub.add_client_error("stop_training_job", "AccessDeniedException", "not allowed")
    with pytest.raises(BackendError, match="lack this permission"):
        backend._stop(record)
    stub.assert_no_pending_responses()


def test_cancel_waits_for_stopped(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SageMakerBackend(options(region=REGION, poll_seconds=0.01),
                               sagemaker_client=stubbed_sagemaker())
    recorded(backend, spec())
    stub = backend.sagemaker.stub
    stub.add_response("stop_training_job", {}, {"TrainingJobName": JOB_ID})
    for case in ("stopping", "stopped"):
        stub.add_response("describe_training_job", described(case), {"TrainingJobName": JOB_ID})
    status = backend.cancel(JOB_ID, timeout=30)
    assert status.state is JobState.CANCELLED


# -- round trips against moto's server (an emulator) -----------------------------------------

@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "src").mkdir(parents=True)
    (folder / "train.py").write_text("print('training')\n")
    (folder / "src" / "model.py").write_text("WIDTH = 3\n")
    return folder


def test_submit_round_trip_on_the_emulator(emulator: MotoServer, project: Path) -> None:
    s3 = moto_client(emulator, "s3")
    s3.create_bucket(Bucket="my-bucket")
    backend = SageMakerBackend(options(region=REGION, endpoint_url=emulator.url,
                                       hyperparameters="lr=0.1"))
    job = spec(workdir=str(project))
    ref = backend.submit(job)
    record = backend.store.get(ref.job_id)
    name = training_job_name(ref.job_id)
    assert record.engine_id == name and record.details["s3"].endswith(f"/{ref.job_id}/")
    base = f"corral/{ref.job_id}/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="my-bucket", Prefix=base)["Contents"]}
    assert keys == {base + "job.json", base + "code.tar.gz"}
    node_job = NodeJob.decode(s3.get_object(Bucket="my-bucket", Key=base + "job.json")[
        "Body"].read().decode())
    assert node_job.job_id == ref.job_id and node_job.spec["nodes"] == 2
    package = s3.get_object(Bucket="my-bucket", Key=base + "code.tar.gz")["Body"].read()
    with tarfile.open(fileobj=BytesIO(package)) as archive:
        assert sorted(archive.getnames()) == ["src/model.py", "train.py"]
    sm = moto_client(emulator, "sagemaker")
    desc = sm.describe_training_job(TrainingJobName=name)  # what the emulator kept
    assert desc["ResourceConfig"]["InstanceCount"] == 2
    assert desc["AlgorithmSpecification"]["ContainerEntrypoint"][-1] == "sagemaker"
    assert desc["HyperParameters"] == {"lr": "0.1"}
    assert desc["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == (
        f"s3://my-bucket/{base}")
    tags = sm.list_tags(ResourceArn=desc["TrainingJobArn"])["Tags"]
    assert {"Key": "corral-job-id", "Value": ref.job_id} in tags
    # the emulator completes every training job at once: a round trip, not a run
    backend.refresh(force=True)
    assert backend.store.status(ref.job_id).state is JobState.SUCCEEDED
    assert backend.find_submitted([record]) == {ref.job_id: name}
    backend.discard_lost(record)
    assert "Contents" not in s3.list_objects_v2(Bucket="my-bucket", Prefix=base)


def test_submission_failure_leaves_nothing_behind(emulator: MotoServer, project: Path) -> None:
    s3 = moto_client(emulator, "s3")
    s3.create_bucket(Bucket="my-bucket")
    backend = SageMakerBackend(options(region=REGION, endpoint_url=emulator.url),
                               sagemaker_client=stubbed_sagemaker())
    stub = backend.sagemaker.stub
    stub.add_client_error("create_training_job", "ResourceLimitExceeded",
                          "account-level service limit exceeded")
    with pytest.raises(BackendError, match="ResourceLimitExceeded"):
        backend.submit(spec(workdir=str(project)))  # refused: nothing to stop
    assert "Contents" not in s3.list_objects_v2(Bucket="my-bucket")
    (status,) = backend.list()
    assert status.state is JobState.FAILED and "submission failed" in status.reason
    stub.assert_no_pending_responses()


def test_a_create_without_answer_is_stopped(emulator: MotoServer, project: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.exceptions import ReadTimeoutError

    moto_client(emulator, "s3").create_bucket(Bucket="my-bucket")
    backend = SageMakerBackend(options(region=REGION, endpoint_url=emulator.url),
                               sagemaker_client=stubbed_sagemaker())

    def no_answer(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9")

    monkeypatch.setattr(backend.sagemaker, "create_training_job", no_answer)
    backend.sagemaker.stub.add_response("stop_training_job", {}, {"TrainingJobName": ANY})
    with pytest.raises(BackendError, match="ReadTimeoutError"):
        backend.submit(spec(workdir=str(project)))
    backend.sagemaker.stub.assert_no_pending_responses()  # it may exist: it was stopped


def test_missing_bucket_is_a_submit_error(emulator: MotoServer, project: Path) -> None:
    backend = SageMakerBackend(options(region=REGION, endpoint_url=emulator.url))
    with pytest.raises(BackendError, match="NoSuchBucket"):
        backend.submit(spec(workdir=str(project)))


def test_logs_page_by_page_every_rank_and_one(fake_aws: None, emulator: MotoServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("corral.backends.aws.cloudwatch.PAGE", 3)  # many pages of 3 events
    logs = moto_client(emulator, "logs")
    node0 = [f"[rank {i % 2}] line {i}" for i in range(10)] + ["[corral] node 0 done"]
    node1 = [f"[rank {2 + i % 2}] line {i}" for i in range(7)] + ["not labelled"]
    seed_streams(logs, {f"{JOB_ID}/algo-2-1795980000": node1,
                        f"{JOB_ID}/algo-1-1795980000": node0,
                        f"{JOB_ID}-other/algo-1-1795980000": ["[rank 0] another job"]})
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=logs)
    recorded(backend, spec())
    every = list(backend.logs(JOB_ID))
    assert [(s.kind, s.number) for s, _ in every][:3] == [("rank", 0), ("rank", 1), ("rank", 0)]
    assert [t for _, t in every] == [line.split("] ", 1)[1] for line in node0 + node1[:-1]]
    assert [t for _, t in backend.logs(JOB_ID, rank=3)] == ["line 1", "line 3", "line 5"]
    with pytest.raises(SpecError):
        list(backend.logs(JOB_ID, rank=4))


class WritingSageMaker:
    """A named fake: DescribeTrainingJob answers from the fixtures (Training, then Completed
    after ``polls``), and each answer first writes one more line to a node's log stream, as
    a running instance would between two polls."""

    def __init__(self, logs: Any, polls: int) -> None:
        self.logs, self.polls, self.asked = logs, polls, 0
        self.meta = None

    def describe_training_job(self, TrainingJobName: str) -> dict[str, Any]:
        self.asked += 1
        node = self.asked % 2
        seed_streams(self.logs, {f"{TrainingJobName}/algo-{node + 1}-1795980000": [
            f"[rank {2 * node}] poll {self.asked}"]})
        return described("training" if self.asked < self.polls else "completed")


def test_logs_follow_until_the_job_ends(fake_aws: None, emulator: MotoServer) -> None:
    logs = moto_client(emulator, "logs")
    fake = WritingSageMaker(logs, polls=5)
    backend = SageMakerBackend(options(region=REGION, poll_seconds=0.01),
                               sagemaker_client=fake, logs_client=logs)
    recorded(backend, spec())
    lines = [t for _, t in backend.logs(JOB_ID, follow=True)]
    assert backend.store.status(JOB_ID).state is JobState.SUCCEEDED
    assert sorted(lines, key=lambda t: int(t.split()[1])) == [
        f"poll {i}" for i in range(1, fake.asked + 1)]
    assert len(set(lines)) == len(lines)


def test_function_result_from_the_node_log(fake_aws: None, emulator: MotoServer) -> None:
    logs = moto_client(emulator, "logs")
    payload = base64.b64encode(b"pickled result").decode()
    seed_streams(logs, {f"{JOB_ID}/algo-2-1795980000": [f"[result 3] {payload}"]})
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=logs)
    recorded(backend, spec())
    assert backend.read_result(JOB_ID, 3) == b"pickled result"
    assert backend.read_result(JOB_ID, 0) is None


# -- the node contract, for real: the rendered command on emulated nodes ---------------------

DDP = """import os, torch, torch.distributed as dist
dist.init_process_group("gloo")
t = torch.tensor([float(dist.get_rank() + 1)])
dist.all_reduce(t)
print(f"rank {dist.get_rank()} node {os.environ['NODE_RANK']} sum {t.item()}", flush=True)
dist.destroy_process_group()
"""
# Killed: the first rank of the node whose resourceconfig.json says 127.0.0.2 (node 1). Its
# global rank is 0 or 2: torchrun's c10d rendezvous numbers the nodes in the order they join.
DIE = """import json, os, signal, time
rank = int(os.environ["RANK"])
with open(os.environ["CORRAL_SAGEMAKER_RESOURCE_CONFIG"], encoding="utf-8") as handle:
    host = json.load(handle)["current_host"]
print(f"rank {rank} up on {host}", flush=True)
if host == "127.0.0.2" and os.environ["LOCAL_RANK"] == "0":
    time.sleep(1)
    print(f"rank {rank} going down", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(60)
"""
# Node addresses that resolve on this machine. On SageMaker the hosts are algo-1 ... algo-N,
# which SageMaker makes resolvable; the order (node 0 first) is the same.
HOSTS = ["127.0.0.1", "127.0.0.2"]


def emulated_run(root: Path, script: str, port: int) -> tuple[SageMakerPlan, Any]:
    """Render the job with container paths under ``root``, put the channel's files where the
    container would find them, write each host's resourceconfig.json, and run the rendered
    ContainerEntrypoint + ContainerArguments on two emulated nodes."""
    project = root / "project"
    project.mkdir(parents=True)
    (project / "job.py").write_text(script)
    paths = ContainerPaths(channel=str(root / "channel"), run_dir=str(root / "run"),
                           work_dir=str(root / "work"), model_dir=str(root / "model"),
                           checkpoints=str(root / "checkpoints"))
    job = spec(entrypoint={"kind": "script", "path": "job.py"})
    plan = render(job, job_id=JOB_ID, options=options(python=sys.executable, master_port=port),
                  local_workdir=str(project), paths=paths)
    channel = root / "channel"
    channel.mkdir()
    (channel / "job.json").write_text(plan.node_job.to_json())  # as uploaded
    (channel / "code.tar.gz").write_bytes(pack(str(project))[0])
    node_env = {}
    for node, host in enumerate(HOSTS):
        config = root / f"resourceconfig-{host}.json"
        config.write_text(json.dumps({"current_host": host, "hosts": HOSTS,
                                      "network_interface_name": "eth0"}))
        node_env[node] = {"CORRAL_SAGEMAKER_RESOURCE_CONFIG": str(config)}
    algo = plan.request["AlgorithmSpecification"]
    command = [*algo["ContainerEntrypoint"], *algo["ContainerArguments"]]
    return plan, run_service_nodes(command, node_env, root / "nodes", timeout=120)


@pytest.fixture
def torch_available() -> None:
    pytest.importorskip("torch")


def test_node_contract_ddp_all_reduce(tmp_path: Path, torch_available: None) -> None:
    _, status = emulated_run(tmp_path, DDP, port=29641)
    output = node_output(status)
    assert status.state is JobState.SUCCEEDED, status.summary() + "\n" + output
    for rank in range(4):
        assert f"[rank {rank}] rank {rank} node {rank // 2} sum 10.0" in output
    assert "sagemaker node 1 is corral node 1 of 2; rendezvous at 127.0.0.1:29641" in output


def test_node_contract_killed_rank_is_named_by_both(tmp_path: Path, torch_available: None,
                                                   fake_aws: None, emulator: MotoServer) -> None:
    plan, status = emulated_run(tmp_path, DIE, port=29642)
    # the local run (the gang of emulated nodes) names node 1, whose launcher names rank 2
    local = LocalBackend()
    said = status.summary() + "\n" + node_output(status)
    assert status.state is JobState.FAILED and status.failure is not None, said
    assert status.failure.node == 1, said  # the emulated node 1 failed first
    streams = {f"{plan.name}/algo-{n + 1}-1795980000":
               [t for _, t in local.logs(status.job_id, rank=n)] for n in range(2)}
    node1 = streams[f"{plan.name}/algo-2-1795980000"]
    (killed,) = [int(line.split()[1].rstrip("]")) for line in node1
                 if line.endswith("going down")]
    assert f"[node 1]   rank      : {killed} (local_rank: 0)" in node1, said
    # the same output as SageMaker would keep it, and a documented Failed answer
    logs = moto_client(emulator, "logs")
    seed_streams(logs, streams)
    backend = SageMakerBackend(options(region=REGION), sagemaker_client=stubbed_sagemaker(),
                               logs_client=logs)
    recorded(backend, spec(entrypoint={"kind": "script", "path": "job.py"}))
    watch(backend, [described("failed_algo2")])
    failure = backend.store.status(JOB_ID).failure
    assert failure is not None
    assert (failure.node, failure.rank, failure.returncode) == (1, killed, -9)
    assert "signal 9 (SIGKILL) on host algo-2" in failure.reason
    assert f"rank {killed} going down" in failure.last_lines
    ranks = {r.rank: r for r in backend.store.status(JOB_ID).ranks}
    assert (ranks[killed].state, ranks[killed].host) == (JobState.FAILED, "algo-2")


@pytest.fixture(autouse=True)
def _no_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing here may reach AWS: no profile or real credentials are read."""
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield
