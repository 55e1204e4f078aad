"""The local backend's render: start mode, per-rank variables, threads and GPUs (pure)."""

from __future__ import annotations

import pytest

from corral.backends.local.preload import imported_roots
from corral.backends.local.render import LocalOptions, Machine, render
from corral.errors import SubmitError
from corral.spec import JobSpec


def plan_for(preload: tuple[str, ...] = ("torch",), machine: Machine | None = None,
             options: LocalOptions | None = None, **fields: object):
    spec = JobSpec(entrypoint={"kind": "script", "path": "train.py"}, **fields)
    return render(spec, job_id="j-1", run_dir="/runs/j-1", master_port=4242,
                  machine=machine or Machine(cpu_count=8, python="/py"), workdir="/work",
                  preload=preload, options=options)


def test_fork_mode_with_torchrun_variables() -> None:
    plan = plan_for(nodes=2, procs_per_node=2, launcher="torchrun")
    assert [n.mode for n in plan.nodes] == ["fork", "fork"]
    node1 = plan.nodes[1]
    assert node1.preload == ("torch",)
    assert dict(node1.target or {}) == {"kind": "script", "path": "train.py", "args": []}
    env = dict(node1.processes[1].env)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "WORLD_SIZE",
                                "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                                "TORCHELASTIC_RUN_ID", "OMP_NUM_THREADS")} == {
        "RANK": "3", "LOCAL_RANK": "1", "NODE_RANK": "1", "GROUP_RANK": "1",
        "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "4242", "TORCHELASTIC_RUN_ID": "j-1", "OMP_NUM_THREADS": "2"}
    assert "CUDA_VISIBLE_DEVICES" not in env
    text = plan.dry_run_text()
    assert "## node 1: fork" in text and "preload once: torch" in text


@pytest.mark.parametrize(
    ("fields", "preload", "options", "why"),
    [
        ({"launcher": "torchrun", "max_restarts": 2}, ("torch",), None, "restarts need torchrun"),
        ({"launcher": "mpirun"}, ("torch",), None, "mpirun starts the ranks"),
        ({}, (), None, "nothing heavy to preload"),
        ({}, ("torch",), LocalOptions(fork=False), "forking disabled"),
    ],
)
def test_exec_mode_and_why(fields: dict, preload: tuple[str, ...], options: LocalOptions | None,
                           why: str) -> None:
    plan = plan_for(preload=preload, options=options, **fields)
    assert plan.nodes[0].mode == "exec" and why in plan.nodes[0].why


def test_real_torchrun_agents_log_ranks_through_the_shim() -> None:
    plan = plan_for(nodes=2, launcher="torchrun", max_restarts=1)
    (agent,) = plan.nodes[1].processes
    assert agent.argv[:3] == ("/py", "-m", "torch.distributed.run")
    assert agent.env["CORRAL_LOG_DIR"] == "/runs/j-1/logs"
    assert "rank-$RANK.log" in agent.argv[agent.argv.index("-c") + 1]


def test_thread_cap_and_user_override() -> None:
    assert plan_for(procs_per_node=3).nodes[0].processes[0].env["OMP_NUM_THREADS"] == "2"
    assert plan_for(procs_per_node=16).nodes[0].processes[0].env["OMP_NUM_THREADS"] == "1"
    env = plan_for(env={"OMP_NUM_THREADS": "7"}).nodes[0].processes[0].env
    assert env["OMP_NUM_THREADS"] == "7"


def test_disjoint_gpus_per_node_and_rank() -> None:
    machine = Machine(cpu_count=8, gpus=("0", "1", "2", "3"), python="/py")
    plan = plan_for(machine=machine, nodes=2, procs_per_node=2, resources={"gpus": 2})
    per_rank = [p.env["CUDA_VISIBLE_DEVICES"] for n in plan.nodes for p in n.processes]
    assert per_rank == ["0", "1", "2", "3"]
    plan = plan_for(machine=machine, nodes=2, procs_per_node=2, resources={"gpus": 2},
                    launcher="torchrun", max_restarts=1)
    assert [n.processes[0].env["CUDA_VISIBLE_DEVICES"] for n in plan.nodes] == ["0,1", "2,3"]


def test_too_few_gpus_is_refused() -> None:
    machine = Machine(cpu_count=8, gpus=("0",), python="/py")
    with pytest.raises(SubmitError, match=r"2 GPU\(s\) per node on 2 node\(s\) = 4.*has 1"):
        plan_for(machine=machine, nodes=2, resources={"gpus": 2})


def test_preload_guess_reads_module_level_imports() -> None:
    source = (
        "import os\nimport torch.distributed as dist\nfrom numpy import array\n"
        "try:\n    import pandas\nexcept ImportError:\n    pass\n"
        "def f():\n    import scipy\n"
    )
    assert imported_roots(source) == {"os", "torch", "numpy", "pandas"}
    assert imported_roots("this is not python(") == set()
    conditional = ("import sys\nif '--gpu' in sys.argv:\n    import torch\n"
                   "if TYPE_CHECKING:\n    import numpy\nclass A:\n    import scipy\n")
    assert imported_roots(conditional) == {"sys"}  # never preload what may not be imported
