"""``--launcher ray``: a real Ray cluster (the pinned Ray of the test extras) on the job's
nodes, on 2 emulated nodes and on the Slurm test cluster: the driver's tasks reach every
node, the cluster is gone afterwards, a dead worker node fails the job by name, the driver's
exit code is the job's, and a distributed function runs as the driver."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

import corral
from conftest import PROGRAMS, leftover_processes
from corral.api import submit
from corral.backends.local import LocalBackend
from corral.environment import read_environment
from corral.errors import SpecError
from corral.launchers import get_launcher
from corral.launchers.base import NodeContext
from corral.runtime.ray_node import RayNodeError, node_ports, start_command
from corral.spec import JobSpec, JobState

DRIVER = PROGRAMS / "ray_driver.py"


def ray_job(out: Path, mode: str, **fields: object) -> JobSpec:
    fields.setdefault("nodes", 2)
    return JobSpec(name=f"ray-{mode}", entrypoint={"kind": "script", "path": str(DRIVER)},
                   args=[str(out), mode], launcher="ray", workdir=str(PROGRAMS),
                   resources={"cpus": 1}, **fields)


def ray_processes(job_id: str) -> list[psutil.Process]:
    """Ray's own processes (raylet, GCS, agents, workers) started for this job."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            if proc.environ().get("CORRAL_JOB_ID") == job_id and "ray" in " ".join(
                    proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


# --- pure parts --------------------------------------------------------------------------

def _here(node: int, hosts: str, port: int = 20000) -> object:
    return read_environment({"NODE_RANK": str(node), "CORRAL_HOSTS": hosts,
                             "MASTER_ADDR": hosts.split(",")[0], "MASTER_PORT": str(port),
                             "CORRAL_NUM_NODES": str(len(hosts.split(",")))})


def test_emulated_nodes_sharing_a_host_get_their_own_ports_in_the_jobs_block() -> None:
    shared = "127.0.0.1,127.0.0.1"
    zero, one = node_ports(_here(0, shared)), node_ports(_here(1, shared))  # type: ignore[arg-type]
    assert not set(zero.values()) & set(one.values())
    assert min(zero.values()) == 20001 and max(one.values()) == 20012
    distinct = node_ports(_here(1, "10.0.0.1,10.0.0.2"))  # type: ignore[arg-type]
    assert distinct == zero  # a host of its own: the same ports as node 0's
    node_ports(_here(4, ",".join(["127.0.0.1"] * 6)))  # type: ignore[arg-type]
    with pytest.raises(RayNodeError, match="at most 5 nodes can share one host"):
        node_ports(_here(5, ",".join(["127.0.0.1"] * 6)))  # type: ignore[arg-type]


def test_head_and_worker_commands() -> None:
    hosts = "10.0.0.1,10.0.0.2"
    head = start_command(_here(0, hosts), "/tmp/x")  # type: ignore[arg-type]
    worker = start_command(_here(1, hosts), "/tmp/x")  # type: ignore[arg-type]
    assert "--head" in head and head[head.index("--port") + 1] == "20000"
    assert head[head.index("--include-dashboard") + 1] == "false"
    assert worker[worker.index("--address") + 1] == "10.0.0.1:20000"
    assert worker[worker.index("--node-ip-address") + 1] == "10.0.0.2"
    assert json.loads(worker[worker.index("--resources") + 1]) == {"corral_node_1": 1}
    assert all(20000 <= int(head[head.index(f) + 1]) < 20032
               for f in ("--node-manager-port", "--ray-client-server-port"))


def test_ray_nodes_have_one_rank_each_and_take_resources_from_the_spec() -> None:
    with pytest.raises(SpecError, match="Ray starts its own worker processes"):
        JobSpec(entrypoint={"kind": "script", "path": "d.py"}, launcher="ray",
                procs_per_node=2)
    spec = JobSpec(entrypoint={"kind": "script", "path": "d.py"}, launcher="ray", nodes=2,
                   resources={"cpus": 3, "memory": "2G", "gpus": 1})
    ctx = NodeContext(node_rank=1, hosts=("a", "b"), master_port=20000, rdzv_id="j",
                      run_dir="/r", job_id="j", backend="local")
    (proc,) = get_launcher("ray").render_node(spec, ctx).processes
    assert proc.argv[1:5] == ("-m", "corral.runtime.ray_node", "python3", "d.py")
    assert proc.rank == 1
    assert proc.env["CORRAL_RAY_NUM_CPUS"] == "3" and proc.env["CORRAL_RAY_NUM_GPUS"] == "1"
    assert int(proc.env["CORRAL_RAY_OBJECT_STORE_BYTES"]) == int(2048 * 0.3) * 1024 * 1024


# --- real clusters -----------------------------------------------------------------------

def test_driver_tasks_reach_both_emulated_nodes_and_nothing_is_left(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    status = corral.run(ray_job(out, "tasks"), stream=False)
    assert status.state is JobState.SUCCEEDED, status.summary()
    seen = json.loads(out.read_text())
    assert [t["corral_node"] for t in seen["tasks"]] == [0, 1]
    assert len({t["ray_node"] for t in seen["tasks"]}) == 2  # two Ray nodes, one per node
    assert sorted(seen["nodes"].values()) == [["corral_node_0"], ["corral_node_1"]]
    for task in seen["tasks"]:  # each task ran on the Ray node of its corral node
        assert seen["nodes"][task["ray_node"]] == [f"corral_node_{task['corral_node']}"]
    assert not ray_processes(status.job_id)
    assert not leftover_processes(status.run_dir or "", status.job_id)
    assert (Path(status.run_dir or "") / "ray" / "node-1" / "raylet.out").exists()


def test_a_killed_worker_node_fails_the_job_by_name(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    backend = LocalBackend()
    job_id = submit(ray_job(out, "hold"), backend).job_id
    deadline = time.monotonic() + 120
    while not out.exists():
        assert time.monotonic() < deadline, backend.describe(job_id).summary()
        time.sleep(0.2)
    raylets = [p for p in ray_processes(job_id) if "raylet/raylet" in " ".join(p.cmdline())
               and p.environ().get("RANK") == "1"]
    assert len(raylets) == 1
    raylets[0].send_signal(signal.SIGKILL)
    status = backend.wait(job_id, timeout=120)
    assert status.state is JobState.FAILED, status.summary()
    assert status.failure is not None and status.failure.rank == 1, status.summary()
    assert "node 1" in status.summary()
    assert not ray_processes(job_id)


def test_the_drivers_exit_code_is_the_jobs(tmp_path: Path) -> None:
    status = corral.run(ray_job(tmp_path / "out.json", "exit"), stream=False)
    assert status.state is JobState.FAILED and status.returncode == 3, status.summary()
    assert status.failure is not None and status.failure.rank == 0
    assert not ray_processes(status.job_id)


def _cluster_size() -> tuple[int, str]:
    import ray

    ray.init()
    return len([n for n in ray.nodes() if n["Alive"]]), os.environ["RAY_ADDRESS"]


def test_a_distributed_function_runs_as_the_driver() -> None:
    run = corral.distributed(_cluster_size, nodes=2, launcher="ray", resources={"cpus": 1},
                             stream=False)
    count, address = run()
    assert count == 2 and address.startswith("127.0.0.1:")


def test_all_ranks_is_refused_for_ray_whose_function_runs_once() -> None:
    with pytest.raises(SpecError, match="all_ranks"):
        corral.distributed(_cluster_size, nodes=2, launcher="ray", all_ranks=True)


@pytest.mark.slurm
def test_driver_tasks_reach_both_slurm_nodes_and_nothing_is_left(cluster: object,
                                                                  tmp_path: Path) -> None:
    from corral.backends.slurm import SlurmBackend, SlurmOptions

    slurm = SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.1))
    out = tmp_path / "out.json"
    job_id = slurm.submit(ray_job(out, "tasks")).job_id
    status = slurm.wait(job_id, timeout=240)
    assert status.state is JobState.SUCCEEDED, status.summary()
    seen = json.loads(out.read_text())
    assert [t["corral_node"] for t in seen["tasks"]] == [0, 1]
    assert len({t["host"] for t in seen["tasks"]}) == 2  # two Slurm nodes, two hosts
    assert len({t["ray_node"] for t in seen["tasks"]}) == 2
    deadline = time.monotonic() + 30  # slurmstepd reaps what the step left
    while ray_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(job_id)
