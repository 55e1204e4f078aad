"""Golden renders: the exact argv and env each launcher produces for each node."""

from __future__ import annotations

import base64
import json

import pytest

from corral.launchers import NodeContext, get_launcher
from corral.launchers.failures import parse_mpirun, parse_torchrun
from corral.spec import JobSpec

HOSTS = ("node-a", "node-b")
SHIM_LOG = 'exec >>"$CORRAL_LOG_DIR/rank-$RANK.log" 2>&1; exec "$@"'


def ctx(node: int, log_dir: str | None = None) -> NodeContext:
    return NodeContext(node_rank=node, hosts=HOSTS, master_port=29611, rdzv_id="job-1",
                       run_dir="/runs/job-1", job_id="job-1", backend="test",
                       python="/usr/bin/python3", log_dir=log_dir)


def spec(launcher: str, **fields: object) -> JobSpec:
    base: dict[str, object] = {
        "name": "train", "entrypoint": {"kind": "script", "path": "train.py"},
        "args": ["--lr", "0.1"], "nodes": 2, "procs_per_node": 2, "launcher": launcher,
        "env": {"MY_VAR": "1"},
    }
    base.update(fields)
    return JobSpec(**base)


def common_env(node: int) -> dict[str, str]:
    return {
        "CORRAL_JOB_ID": "job-1", "CORRAL_JOB_NAME": "train", "CORRAL_BACKEND": "test",
        "CORRAL_RUN_DIR": "/runs/job-1", "CORRAL_NUM_NODES": "2",
        "CORRAL_HOSTS": "node-a,node-b", "CORRAL_HOSTFILE": "/runs/job-1/hostfile",
        "NODE_RANK": str(node), "MASTER_ADDR": "node-a", "MASTER_PORT": "29611",
        "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "PYTHONUNBUFFERED": "1", "MY_VAR": "1",
    }


@pytest.mark.parametrize("node", [0, 1])
def test_torchrun_two_nodes(node: int) -> None:
    launch = get_launcher("torchrun").render_node(spec("torchrun"), ctx(node))
    (agent,) = launch.processes
    assert agent.argv == (
        "/usr/bin/python3", "-m", "torch.distributed.run",
        "--nnodes", "2", "--nproc-per-node", "2", "--node-rank", str(node),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", "node-a:29611", "--rdzv-id", "job-1",
        "--max-restarts", "0", "--no-python", "sh", "-c",
        'export NODE_RANK="${GROUP_RANK:-$NODE_RANK}"; exec "$@"', "corral-rank",
        "/usr/bin/python3", "train.py", "--lr", "0.1",
    )
    expected = common_env(node)
    del expected["WORLD_SIZE"]
    assert dict(agent.env) == expected
    assert agent.rank is None and agent.log_name == f"node-{node}.log"
    assert launch.ranks == ((0, 1) if node == 0 else (2, 3))


def test_torchrun_with_rank_logs_module_and_restarts() -> None:
    s = spec("torchrun", entrypoint={"kind": "module", "module": "pkg.train"}, max_restarts=3)
    (agent,) = get_launcher("torchrun").render_node(s, ctx(1, "/runs/job-1/logs")).processes
    assert agent.argv[agent.argv.index("--max-restarts") + 1] == "3"
    assert agent.argv[agent.argv.index("--max-restarts") + 2:] == (
        "--no-python", "sh", "-c", 'export NODE_RANK="${GROUP_RANK:-$NODE_RANK}"; ' + SHIM_LOG,
        "corral-rank", "/usr/bin/python3", "-m", "pkg.train", "--lr", "0.1",
    )
    assert agent.env["CORRAL_LOG_DIR"] == "/runs/job-1/logs"


def test_torchrun_command_uses_no_python() -> None:
    s = spec("torchrun", entrypoint={"kind": "command", "argv": ["./a.out"]}, args=[])
    (agent,) = get_launcher("torchrun").render_node(s, ctx(0)).processes
    assert agent.argv[-2:] == ("corral-rank", "./a.out")


def test_two_jobs_get_distinct_rendezvous() -> None:
    a = NodeContext(0, HOSTS, 29611, "job-1", "/r1", "job-1", "test")
    b = NodeContext(0, HOSTS, 29612, "job-2", "/r2", "job-2", "test")
    argv_a = get_launcher("torchrun").render_node(spec("torchrun"), a).processes[0].argv
    argv_b = get_launcher("torchrun").render_node(spec("torchrun"), b).processes[0].argv
    assert "node-a:29611" in argv_a and "job-1" in argv_a
    assert "node-a:29612" in argv_b and "job-2" in argv_b


def test_mpirun_openmpi_hostfile_and_argv() -> None:
    s = spec("mpirun")
    launch = get_launcher("mpirun").render_node(s, ctx(0, "/runs/job-1/logs"))
    assert dict(launch.files) == {"/runs/job-1/hostfile": "node-a slots=2\nnode-b slots=2\n"}
    (proc,) = launch.processes
    env = common_env(0) | {"CORRAL_LOG_DIR": "/runs/job-1/logs"}
    assert dict(proc.env) == env
    exports = tuple(x for name in sorted(env) for x in ("-x", name))
    assert proc.argv == (
        "mpirun", "-np", "4", "--hostfile", "/runs/job-1/hostfile", "--map-by", "slot",
        *exports, "sh", "-c",
        'RANK="$OMPI_COMM_WORLD_RANK"; export RANK LOCAL_RANK="$((RANK % LOCAL_WORLD_SIZE))" '
        'NODE_RANK="$((RANK / LOCAL_WORLD_SIZE))" GROUP_RANK="$((RANK / LOCAL_WORLD_SIZE))"; '
        + SHIM_LOG,
        "corral-rank", "/usr/bin/python3", "train.py", "--lr", "0.1",
    )
    assert launch.ranks == (0, 1, 2, 3)
    other = get_launcher("mpirun").render_node(s, ctx(1))
    assert other.processes == () and dict(other.files) == dict(launch.files)


def test_mpirun_mpich() -> None:
    launch = get_launcher("mpirun").render_node(spec("mpirun", mpi="mpich"), ctx(0))
    assert dict(launch.files) == {"/runs/job-1/hostfile": "node-a:2\nnode-b:2\n"}
    argv = launch.processes[0].argv
    assert argv[:5] == ("mpiexec.hydra", "-n", "4", "-f", "/runs/job-1/hostfile")
    assert argv[5] == "-envlist" and "MASTER_ADDR" in argv[6].split(",")
    script = argv[argv.index("-c") + 1]
    assert script.startswith('RANK="$PMI_RANK"; ')
    assert script.endswith('exec 3>&2; "$@"; rc=$?; if [ "$rc" -ne 0 ]; then '
                           'echo "corral: rank $RANK exited with code $rc" >&3; '
                           'kill -KILL $$; fi; exit 0')


@pytest.mark.parametrize("node", [0, 1])
def test_deepspeed_per_node_without_ssh(node: int) -> None:
    launch = get_launcher("deepspeed").render_node(spec("deepspeed"), ctx(node))
    (proc,) = launch.processes
    info = base64.urlsafe_b64encode(
        json.dumps({"node-a": [0, 1], "node-b": [0, 1]}).encode()).decode()
    assert proc.argv == (
        "/usr/bin/python3", "-m", "deepspeed.launcher.launch", f"--world_info={info}",
        f"--node_rank={node}", "--master_addr=node-a", "--master_port=29611",
        "train.py", "--lr", "0.1",
    )
    assert dict(launch.files) == {"/runs/job-1/hostfile": "node-a slots=2\nnode-b slots=2\n"}
    assert dict(proc.env) == common_env(node)


def test_deepspeed_duplicate_hosts_and_rank_logs_use_the_python_shim() -> None:
    c = NodeContext(1, ("127.0.0.1", "127.0.0.1"), 1, "j", "/r", "j", "local", "py", "/r/logs")
    argv = get_launcher("deepspeed").render_node(spec("deepspeed"), c).processes[0].argv
    info = json.loads(base64.urlsafe_b64decode(argv[3].split("=", 1)[1]))
    assert info == {"node0": [0, 1], "node1": [0, 1]}
    assert argv[7:] == ("--module", "corral.runtime.rankshim", "--at", "2",
                        "py", "train.py", "--lr", "0.1")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--local_rank=1", "--at", "2", "py", "t.py", "a"], ["py", "t.py", "--local_rank=1", "a"]),
        (["--local_rank=0", "--at", "3", "py", "-m", "m", "a"],
         ["py", "-m", "m", "--local_rank=0", "a"]),
        (["--at", "1", "./bin", "x"], ["./bin", "x"]),
    ],
)
def test_rankshim_puts_local_rank_after_the_script(argv: list[str], expected: list[str]) -> None:
    from corral.runtime.rankshim import split

    assert split(list(argv)) == expected


@pytest.mark.parametrize("node", [0, 1])
def test_none_once_per_rank(node: int) -> None:
    launch = get_launcher("none").render_node(spec("none"), ctx(node))
    assert [p.rank for p in launch.processes] == [2 * node, 2 * node + 1]
    for local_rank, proc in enumerate(launch.processes):
        assert proc.argv == ("/usr/bin/python3", "train.py", "--lr", "0.1")
        rank = 2 * node + local_rank
        assert dict(proc.env) == common_env(node) | {
            "RANK": str(rank), "LOCAL_RANK": str(local_rank), "GROUP_RANK": str(node)}
        assert proc.log_name == f"rank-{rank}.log"


def test_function_entrypoint_runs_the_call_module() -> None:
    s = JobSpec(entrypoint={"kind": "function", "fn": print}, nodes=2, launcher="none")
    proc = get_launcher("none").render_node(s, ctx(0)).processes[0]
    assert proc.argv == ("/usr/bin/python3", "-m", "corral.runtime.call",
                         "/runs/job-1/function.pkl")


TORCHRUN_FAILURE = """
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
train.py FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-27_21:52:01
  host      : box
  rank      : 3 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================
"""

MPIRUN_FAILURE = """
--------------------------------------------------------------------------
mpirun detected that one or more processes exited with non-zero status, thus causing
the job to be terminated. The first process to do so was:

  Process name: [[41583,1],2]
  Exit code:    3
--------------------------------------------------------------------------
"""


def test_failure_parsers() -> None:
    found = parse_torchrun(TORCHRUN_FAILURE)
    assert found is not None and (found.rank, found.returncode) == (3, -9)
    found = parse_mpirun(MPIRUN_FAILURE)
    assert found is not None and (found.rank, found.returncode) == (2, 3)
    sig = "mpirun noticed that process rank 1 with PID 77 on node box exited on signal 9 (Killed)."
    found = parse_mpirun(sig)
    assert found is not None and (found.rank, found.returncode) == (1, -9)
    found = parse_mpirun("noise\ncorral: rank 5 exited with code 42\n= BAD TERMINATION")
    assert found is not None and (found.rank, found.returncode) == (5, 42)
    assert parse_torchrun("nothing here") is None and parse_mpirun("") is None


def test_repeated_hosts_merge_into_one_hostfile_line() -> None:
    from corral.launchers.base import hostfile_text

    assert hostfile_text(("127.0.0.1", "127.0.0.1"), 2) == "127.0.0.1 slots=4\n"
    assert hostfile_text(("a", "b", "a"), 1, "mpich") == "a:2\nb:1\n"
