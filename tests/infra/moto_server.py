"""moto's server on 127.0.0.1: an EMULATOR of AWS's APIs (Batch, SageMaker, S3, CloudWatch
Logs), started by the tests, never AWS itself.

What it is good for here: the round trip of real boto3 requests (create, describe, list,
terminate), S3 uploads and CloudWatch Logs paging. What it is not evidence of: how a service
runs a job. Without docker, moto's Batch jobs go straight to SUCCEEDED (multi-node jobs have
no ``#N`` children), so per-node states come from fixtures written from AWS's documentation
(botocore's Stubber), not from moto.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# moto's server reads these when it starts; fake credentials (nothing reaches AWS)
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MotoServer:
    def __init__(self, folder: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        moto = Path(sys.executable).with_name("moto_server")
        self.log = open(folder / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, **FAKE_CREDENTIALS}
        self.proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start (see {folder}/moto.log)"
                                       ) from None
                time.sleep(0.1)
        # Batch without docker: jobs do not run, they go to SUCCEEDED (an emulator's choice)
        self.configure({"batch": {"use_docker": False}})

    def configure(self, config: dict[str, object]) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/config", method="POST",
                                         data=json.dumps(config).encode(),
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=5).close()

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=5).close()
        self.configure({"batch": {"use_docker": False}})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def batch_queue(server: MotoServer, name: str = "gpu-queue") -> str:
    """An AWS Batch job queue in the emulator, on a managed compute environment (with the
    IAM role, instance profile, VPC, subnet and security group moto asks for)."""
    import boto3

    iam = boto3.client("iam", endpoint_url=server.url)
    role = iam.create_role(RoleName="batch", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    profile = iam.create_instance_profile(InstanceProfileName="batch")["InstanceProfile"]["Arn"]
    ec2 = boto3.client("ec2", endpoint_url=server.url)
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="g", Description="g", VpcId=vpc)["GroupId"]
    batch = boto3.client("batch", endpoint_url=server.url)
    env = batch.create_compute_environment(
        computeEnvironmentName="corral-ce", type="MANAGED", state="ENABLED", serviceRole=role,
        computeResources={"type": "EC2", "minvCpus": 0, "maxvCpus": 64, "desiredvCpus": 0,
                          "instanceTypes": ["optimal"], "subnets": [subnet],
                          "securityGroupIds": [group], "instanceRole": profile})
    batch.create_job_queue(jobQueueName=name, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment":
                                                     env["computeEnvironmentArn"]}])
    return name


@pytest.fixture(scope="session")
def moto_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def moto(moto_session: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """A clean emulator for one test, and fake credentials for boto3."""
    for key, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    moto_session.reset()
    return moto_session
