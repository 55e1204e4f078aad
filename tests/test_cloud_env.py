"""Where a cloud node stands (corral.runtime.cloud_env) and the job description every node
reads (corral.runtime.cloud_job): pure functions over each service's variables and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.errors import NodeStartError
from corral.runtime import cloud_env
from corral.runtime.cloud_env import NodePlaceError
from corral.runtime.cloud_job import NodeJob, NodeJobError


def aws(index: int, nodes: int = 3, main: int = 0, **more: str) -> dict[str, str]:
    return {"AWS_BATCH_JOB_NODE_INDEX": str(index), "AWS_BATCH_JOB_NUM_NODES": str(nodes),
            "AWS_BATCH_JOB_MAIN_NODE_INDEX": str(main), **more}


def test_aws_batch_children_dial_the_main_node_and_the_main_node_its_own_address() -> None:
    child = cloud_env.aws_batch(aws(2, AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS="10.0.0.5"))
    assert (child.node_rank, child.num_nodes, child.master_addr) == (2, 3, "10.0.0.5")
    assert child.hosts == ("10.0.0.5", "", "")
    main = cloud_env.aws_batch(aws(0, CORRAL_NODE_ADDRESS="10.0.0.5"))
    assert (main.node_rank, main.master_addr) == (0, "10.0.0.5")  # not localhost
    # a main node other than index 0 is still corral's node 0
    moved = [cloud_env.aws_batch(aws(i, main=1, CORRAL_NODE_ADDRESS="10.0.0.9",
                                     AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS="10.0.0.9"))
             for i in range(3)]
    assert [p.node_rank for p in moved] == [2, 0, 1]
    assert [p.service_index for p in moved] == [0, 1, 2]


@pytest.mark.parametrize(("env", "said"), [
    (aws(1), "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS is not set"),
    (aws(3), "expected a number below 3"),
    ({"AWS_BATCH_JOB_NUM_NODES": "2"}, "$AWS_BATCH_JOB_NODE_INDEX is ''"),
    (aws(0, main=5), "AWS_BATCH_JOB_MAIN_NODE_INDEX is 5"),
])
def test_aws_batch_says_what_is_missing(env: dict[str, str], said: str) -> None:
    with pytest.raises(NodePlaceError) as err:
        cloud_env.aws_batch(env)
    assert said in str(err.value)
    assert isinstance(err.value, NodeStartError)


def test_sagemaker_hosts_in_number_order(tmp_path: Path) -> None:
    hosts = [f"algo-{i}" for i in (10, 2, 1, 3, 4, 5, 6, 7, 8, 9)]
    place = cloud_env.sagemaker({"current_host": "algo-10", "hosts": hosts})
    assert (place.node_rank, place.num_nodes, place.master_addr) == (9, 10, "algo-1")
    assert place.hosts[:3] == ("algo-1", "algo-2", "algo-3")
    config = tmp_path / "resourceconfig.json"
    config.write_text(json.dumps({"current_host": "algo-2", "hosts": ["algo-1", "algo-2"]}))
    env = {"CORRAL_SAGEMAKER_RESOURCE_CONFIG": str(config)}
    assert cloud_env.place("sagemaker", env).node_rank == 1
    with pytest.raises(NodePlaceError, match="'algo-3' is not one of its hosts"):
        cloud_env.sagemaker({"current_host": "algo-3", "hosts": ["algo-1", "algo-2"]})
    with pytest.raises(NodePlaceError, match="cannot read SageMaker's"):
        cloud_env.read_sagemaker(str(tmp_path / "missing.json"))


def test_gcp_batch_hosts_file(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.128.0.7 vm-0\n10.128.0.8 vm-1\n\n")
    env = {"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "2", "BATCH_HOSTS_FILE": str(hosts)}
    place = cloud_env.place("gcp-batch", env)
    assert (place.node_rank, place.master_addr, place.hosts) == (
        1, "10.128.0.7", ("10.128.0.7", "10.128.0.8"))
    with pytest.raises(NodePlaceError, match="lists 2 host"):
        cloud_env.gcp_batch({**env, "BATCH_TASK_COUNT": "3"}, hosts.read_text())
    with pytest.raises(NodePlaceError, match="requireHostsFile"):
        cloud_env.place("gcp-batch", {"BATCH_TASK_INDEX": "0", "BATCH_TASK_COUNT": "1"})


def test_azure_batch_master_first_and_this_node_by_its_address() -> None:
    env = {"AZ_BATCH_HOST_LIST": "10.0.0.4,10.0.0.6,10.0.0.5",
           "AZ_BATCH_MASTER_NODE": "10.0.0.6:6000"}
    master = cloud_env.azure_batch({**env, "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true"})
    assert (master.node_rank, master.master_addr) == (0, "10.0.0.6")
    assert master.hosts == ("10.0.0.6", "10.0.0.4", "10.0.0.5")
    worker = cloud_env.azure_batch({**env, "AZ_BATCH_IS_CURRENT_NODE_MASTER": "false",
                                    "CORRAL_NODE_ADDRESS": "10.0.0.5"})
    assert (worker.node_rank, worker.service_index) == (2, 2)
    with pytest.raises(NodePlaceError, match="not in \\$AZ_BATCH_HOST_LIST"):
        cloud_env.azure_batch({**env, "CORRAL_NODE_ADDRESS": "10.9.9.9"})
    with pytest.raises(NodePlaceError, match="AZ_BATCH_MASTER_NODE"):
        cloud_env.azure_batch({**env, "AZ_BATCH_MASTER_NODE": "10.1.1.1:6000"})


def test_unknown_service() -> None:
    with pytest.raises(NodePlaceError, match="accepted: aws-batch, sagemaker"):
        cloud_env.place("slurm", {})


def test_job_description_round_trip_and_version() -> None:
    job = NodeJob(job_id="j-1", spec={"name": "j", "nodes": 2, "env": {"Q": "a'\"$(x)\n"}},
                  run_dir="/tmp/r", workdir="/w", master_port=29400)
    text = job.encode()
    assert text.startswith("z1:") and NodeJob.decode(text) == job
    assert NodeJob.decode(job.to_json()) == job  # a job.json file reads the same
    old = json.loads(job.to_json()) | {"version": 99}
    with pytest.raises(NodeJobError, match="install the same corral version"):
        NodeJob.decode(json.dumps(old))
    with pytest.raises(NodeJobError, match="cannot read the job description"):
        NodeJob.decode("z1:not-base64!")
    with pytest.raises(NodeJobError, match="incomplete"):
        NodeJob.decode(json.dumps({"version": 1, "job_id": "x"}))


def test_a_node_that_cannot_start_says_why_and_exits_2(
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from corral.runtime import cloud_node

    monkeypatch.delenv("CORRAL_JOB", raising=False)
    monkeypatch.delenv("CORRAL_JOB_URL", raising=False)
    out = io.StringIO()
    assert cloud_node.main(["aws-batch"], out=out) == 2
    assert "[corral] node cannot start: $CORRAL_JOB is not set" in out.getvalue()
    assert cloud_node.main(["nowhere"], out=out) == 2
    assert "usage:" in capsys.readouterr().err
