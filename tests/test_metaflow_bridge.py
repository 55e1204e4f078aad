"""The Metaflow bridge, with real Metaflow (the version pinned in the test extras) on its
local runtime, local datastore and local metadata: an unchanged Metaflow flow plus ``@corral``
runs its ``num_parallel`` gang step as one corral job on the local backend.

Flows run in a subprocess in a scratch directory (Metaflow's local datastore lives in the
working directory); what they recorded is read back with Metaflow's own client, also in a
subprocess, so that this process never imports Metaflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.errors import SpecError
from corral.jobstate import JobState
from corral.metaflow_bridge.cli import node_step_argv  # needs metaflow (in the test extras)
from corral.metaflow_bridge.node import gang_environment, node_command, with_options
from corral.metaflow_bridge.settings import gang_spec, step_settings
from corral.store import open_store

FLOWS = Path(__file__).parent / "metaflow_flows"
STEP_ARGV = ["/py", "-u", "/f/flow.py", "--quiet", "--datastore", "local", "step", "train",
             "--run-id", "17", "--task-id", "2", "--input-paths", "17/start/1",
             "--split-index", "0", "--ubf-context", "ubf_control", "--num-parallel", "3",
             "--retry-count", "0"]


def metaflow(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "USERNAME": "corral-test", "METAFLOW_HOME": str(workdir / "mfhome")}
    return subprocess.run([sys.executable, *args], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=timeout)


def read_back(workdir: Path, code: str) -> Any:
    """Run ``code`` (which sets ``out``) with Metaflow's client in ``workdir``."""
    script = ("import json\nfrom metaflow import Flow, Task, namespace\nnamespace(None)\n"
              + code + "\nprint(json.dumps(out))\n")
    done = metaflow(workdir, "-c", script)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the pure parts -----------------------------------------------------------------------

def test_node_zero_runs_the_control_task_unchanged_and_node_n_its_worker_task() -> None:
    assert node_command(STEP_ARGV, 0) == STEP_ARGV
    worker = node_command(STEP_ARGV, 2)
    assert worker[worker.index("--task-id") + 1] == "2_node_2"
    assert worker[worker.index("--split-index") + 1] == "2"
    assert worker[worker.index("--ubf-context") + 1] == "ubf_task"
    assert worker[worker.index("--input-paths") + 1] == "17/start/1"
    assert len(worker) == len(STEP_ARGV)
    assert with_options(["a", "--x", "1"], {"--y": "2"}) == ["a", "--x", "1", "--y", "2"]


def test_current_parallel_comes_from_what_corral_gives_each_node() -> None:
    env = gang_environment({"NODE_RANK": "1", "CORRAL_NUM_NODES": "3",
                            "MASTER_ADDR": "10.0.0.5"}, STEP_ARGV)
    assert env == {"METAFLOW_RUNTIME_ENVIRONMENT": "corral", "MF_PARALLEL_NODE_INDEX": "1",
                   "MF_PARALLEL_NUM_NODES": "3", "MF_PARALLEL_MAIN_IP": "10.0.0.5",
                   "MF_PARALLEL_CONTROL_TASK_ID": "2"}


def test_the_launcher_turns_its_own_command_into_the_plain_step_command() -> None:
    argv = ["flow.py", "--quiet", "corral", "step", "train", "--run-id", "17"]
    got = node_step_argv(argv, "train", ("--run-id", "17"))
    assert got[0] == sys.executable and got[2] == os.path.abspath("flow.py")
    assert got[3:] == ["--quiet", "step", "train", "--run-id", "17"]


class _Resources:
    name = "resources"
    attributes = {"cpu": "2", "gpu": None, "memory": "2048", "disk": None}


def test_settings_take_resources_from_the_resources_decorator_unless_corral_says() -> None:
    settings = step_settings({"backend": "local", "cpu": 3}, [_Resources()])
    assert settings.resources.cpus == 3 and settings.resources.memory_mb == 2048
    spec = gang_spec(settings, flow="Train", step="train", step_argv=STEP_ARGV, nodes=3,
                     workdir="/w")
    assert spec.nodes == 3 and spec.procs_per_node == 1 and spec.name == "mf-train-train"
    assert json.loads(spec.args[0]) == STEP_ARGV


@pytest.mark.parametrize(("attributes", "field", "hint"), [
    ({"backend": "nomad"}, "backend", "local"),
    ({"cpu": "lots"}, "cpus", "number"),
    ({"memory": "-3"}, "memory", "memory"),
    ({"options": {"partitionn": "x"}, "backend": "slurm"}, "slurm.partitionn", "partition"),
    ({"time_limit": "soon"}, "time_limit", "seconds"),
    ({"env": ["A=1"]}, "env", "dict"),
])
def test_bad_decorator_values_name_the_field(attributes: dict[str, Any], field: str,
                                             hint: str) -> None:
    with pytest.raises(SpecError) as caught:
        step_settings(attributes, [])
    assert field in str(caught.value) and hint in str(caught.value)


# --- real flows ---------------------------------------------------------------------------

def test_gang_step_runs_as_one_corral_job_and_keeps_each_workers_log(tmp_path: Path) -> None:
    done = metaflow(tmp_path, str(FLOWS / "gang_flow.py"), "--no-pylint", "run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[n1 r1] worker output from node 1 of 2" in done.stdout + done.stderr
    seen = read_back(tmp_path, """
run = Flow("GangFlow").latest_run
join = run["join"].task.data
tasks = {t.id: (t.successful, t.stdout) for t in run["train"].tasks()}
out = {"ok": run.successful, "nodes": join.nodes, "jobs": join.jobs, "pids": join.pids,
       "tasks": tasks}
""")
    assert seen["ok"] and seen["nodes"] == [0, 1] and len(seen["pids"]) == 2
    (job_id,) = seen["jobs"]  # both nodes ran in one corral job
    worker_ids = [t for t in seen["tasks"] if t.endswith("_node_1")]
    assert len(seen["tasks"]) == 2 and len(worker_ids) == 1
    ok, worker_log = seen["tasks"][worker_ids[0]]
    assert ok and "worker output from node 1 of 2" in worker_log
    assert "from node 0" not in worker_log
    record = open_store().get(job_id)
    assert record.state is JobState.SUCCEEDED and record.nodes == 2


def test_a_failed_worker_fails_the_step_names_the_rank_and_keeps_its_log(
        tmp_path: Path) -> None:
    done = metaflow(tmp_path, str(FLOWS / "gang_flow.py"), "--no-pylint", "run",
                    "--fail_node", "1")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "rank 1" in output, output
    assert "node 1 fails on purpose" in output, output
    assert "Step train (task-id" in output and "failed" in output
    seen = read_back(tmp_path, """
run = Flow("GangFlow").latest_run
out = {"ok": run.successful, "steps": [s.id for s in run],
       "tasks": {t.id: (t.successful, t.stdout) for t in run["train"].tasks()}}
""")
    assert not seen["ok"] and "join" not in seen["steps"]
    assert not any(ok for ok, _ in seen["tasks"].values())  # the control task did not pass
    worker_log = next(log for tid, (_, log) in seen["tasks"].items() if tid.endswith("_node_1"))
    assert "RuntimeError: node 1 fails on purpose" in worker_log
    (record,) = [r for r in open_store().jobs() if r.name == "mf-gangflow-train"]
    assert record.state is JobState.FAILED


def test_the_founding_documents_torchrun_step_all_reduces_across_the_gang(
        tmp_path: Path) -> None:
    out = tmp_path / "ranks"
    out.mkdir()
    done = metaflow(tmp_path, str(FLOWS / "torchrun_flow.py"), "--no-pylint", "run",
                    "--out_dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in out.glob("*.json")}
    assert sorted(ranks) == [0, 1, 2, 3]
    assert all(r["sum"] == [10.0] * 4 and r["world"] == 4 for r in ranks.values())
    assert [ranks[r]["env"]["NODE_RANK"] for r in range(4)] == ["0", "0", "1", "1"]
    assert len({r["env"]["CORRAL_JOB_ID"] for r in ranks.values()}) == 1


def test_retry_reruns_the_whole_gang_as_a_new_corral_job(tmp_path: Path) -> None:
    done = metaflow(tmp_path, str(FLOWS / "retry_flow.py"), "--no-pylint", "run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "first attempt fails" in done.stdout + done.stderr
    jobs = [r for r in open_store().jobs() if r.name == "mf-retryflow-train"]
    assert sorted(r.state.value for r in jobs) == ["FAILED", "SUCCEEDED"]
    seen = read_back(tmp_path, 'out = Flow("RetryFlow").latest_run["join"].task.data.nodes')
    assert seen == [0, 1]
