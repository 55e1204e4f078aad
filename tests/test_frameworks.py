"""The tensorflow and jax launchers: what corral.runtime.frameworks gives each rank (pure),
how the backends start it (renders, dry runs), and real runs on 2 emulated nodes and on the
Slurm test cluster: MultiWorkerMirroredStrategy training, jax.distributed with a psum, and a
worker that fails named by rank and node."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PROGRAMS, leftover_processes, read_rank_outputs, require
from corral.backends.local import LocalBackend
from corral.errors import MissingDependency, SpecError
from corral.launchers import NodeContext, get_launcher
from corral.ports import PORT_BLOCK
from corral.runtime.frameworks import (
    FrameworkSetupError,
    _python_program,
    framework_environment,
    jax_local_device,
)
from corral.spec import JobSpec, JobState
from corral.status import JobStatus

SHIM = "-m corral.runtime.frameworks"


def rank_env(rank: int, hosts: str, local_world: int, world: int, port: int = 20000,
             master: str | None = None) -> dict[str, str]:
    """A rank's environment as the backends set it (launchers.base.job_env)."""
    return {"RANK": str(rank), "LOCAL_RANK": str(rank % local_world),
            "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(local_world),
            "NODE_RANK": str(rank // local_world), "CORRAL_HOSTS": hosts,
            "MASTER_ADDR": master or hosts.split(",")[0], "MASTER_PORT": str(port),
            "CORRAL_JOB_ID": "j-1"}


def tf_config(env: dict[str, str]) -> dict[str, object]:
    return json.loads(framework_environment("tensorflow", env)["TF_CONFIG"])


# -- what each rank gets (pure) -----------------------------------------------------------------


def test_tf_config_on_emulated_nodes_gives_each_rank_its_own_port() -> None:
    hosts = "127.0.0.1,127.0.0.1"  # 2 emulated nodes x 2 ranks share this machine
    workers = [f"127.0.0.1:{20001 + r}" for r in range(4)]
    for rank in range(4):
        assert tf_config(rank_env(rank, hosts, 2, 4)) == {
            "cluster": {"worker": workers}, "task": {"type": "worker", "index": rank}}


def test_tf_config_on_distinct_hosts_counts_ports_by_local_rank() -> None:
    config = tf_config(rank_env(3, "node1,node2", 2, 4, port=10064))
    assert config == {"cluster": {"worker": ["node1:10065", "node1:10066",
                                             "node2:10065", "node2:10066"]},
                      "task": {"type": "worker", "index": 3}}


def test_more_workers_per_host_than_the_port_block_are_refused() -> None:
    most = PORT_BLOCK - 1
    config = tf_config(rank_env(0, ",".join(["a"] * 2), most // 2 + 1, most))
    assert config["cluster"]["worker"][-1] == f"a:{20000 + most}"  # type: ignore[index]
    with pytest.raises(FrameworkSetupError, match=rf"worker {most} would need port "
                                                  rf"MASTER_PORT\+{most + 1}.* at most {most}"):
        tf_config(rank_env(0, "a,a", 16, most + 1))
    # on distinct hosts, 31 per host and many hosts are fine; 32 on one host are not
    assert len(tf_config(rank_env(0, "a,b,c", most, 3 * most))["cluster"]["worker"]) == 93  # type: ignore[index]
    with pytest.raises(FrameworkSetupError):
        tf_config(rank_env(0, "a,b", most + 1, 2 * (most + 1)))
    # and before anything starts: the launcher refuses such a job on any backend
    spec = JobSpec(entrypoint={"kind": "script", "path": "t.py"}, nodes=2, procs_per_node=16,
                   launcher="tensorflow")
    local = NodeContext(0, ("127.0.0.1",) * 2, 20000, "j", "/r", "j", "local")
    with pytest.raises(SpecError, match=r"at most 31 workers per host .* not 32 \(2 node"):
        get_launcher("tensorflow").render_node(spec, local)
    hosts = NodeContext(0, ("a", "b"), 20000, "j", "/r", "j", "slurm")
    assert len(get_launcher("tensorflow").render_node(spec, hosts).processes) == 16
    with pytest.raises(SpecError, match=r"not 32 \(32 per node\)"):
        get_launcher("tensorflow").render_node(spec.replace(procs_per_node=32), hosts)


def test_jax_variables() -> None:
    env = rank_env(3, "node1,node2", 2, 4, port=10064)
    assert framework_environment("jax", env) == {
        "JAX_COORDINATOR_ADDRESS": "node1:10064", "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3", "JAX_LOCAL_PROCESS_ID": "1"}


@pytest.mark.parametrize(("backend", "local_world", "expected"), [
    ("slurm", 2, 1), ("kubernetes", 2, 1),  # every rank of a node sees all of its GPUs
    ("slurm", 1, None),  # alone on its node: all of them
    ("local", 2, None),  # the local backend gave each rank its own already
])
def test_which_gpu_a_jax_process_keeps(backend: str, local_world: int,
                                       expected: int | None) -> None:
    env = rank_env(local_world + 1, "node1,node2", local_world, 2 * local_world)
    assert jax_local_device(env | {"CORRAL_BACKEND": backend}) == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["/venv/bin/python3", "train.py", "--x"], ("path", "train.py")),
    (["python", "-m", "pkg.train", "--x"], ("module", "pkg.train")),
    (["/usr/bin/python3.11", "-u", "train.py"], None),  # interpreter options: run as given
    (["python", "-c", "print(1)"], None),
    (["./train.sh", "a"], None),
    (["python"], None),
])
def test_which_programs_run_in_the_shim(argv: list[str],
                                        expected: tuple[str, str] | None) -> None:
    assert _python_program(argv) == expected


def shim(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "corral.runtime.frameworks", *argv],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_shim_execs_any_command_with_the_variables() -> None:
    env = rank_env(1, "127.0.0.1,127.0.0.1", 1, 2)
    done = shim("tensorflow", "sh", "-c", 'printf %s "$TF_CONFIG"; exit 7', env=env)
    assert done.returncode == 7
    assert json.loads(done.stdout)["task"] == {"type": "worker", "index": 1}
    done = shim("jax", "sh", "-c", 'echo "$JAX_COORDINATOR_ADDRESS $JAX_PROCESS_ID"', env=env)
    assert done.stdout == "127.0.0.1:20000 1\n"
    assert shim("pytorch", "true", env=env).returncode == 1
    assert "usage:" in shim("jax", env=env).stderr


def test_jax_program_finds_corrals_cluster_first(tmp_path: Path) -> None:
    """Run in the shim, a script's jax.distributed.initialize() (not called here: it would
    wait for the other process) gets corral's values, even inside a Slurm allocation whose
    own variables describe something else; the script runs as __main__ with its argv."""
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys\n"
        "from jax._src import clusters\n"
        "found = clusters.ClusterEnv.auto_detect_unset_distributed_params(\n"
        "    None, None, None, None, None, None)\n"
        "print(__name__, sys.argv[1:], found)\n"
        "sys.exit(5)\n")
    slurm = {"SLURM_JOB_ID": "9", "SLURM_NTASKS": "8", "SLURM_PROCID": "6",
             "SLURM_STEP_NODELIST": "x1", "SLURM_JOB_NODELIST": "x1", "SLURM_LOCALID": "0"}
    env = rank_env(3, "node1,node2", 2, 4, port=10064) | slurm | {"CORRAL_BACKEND": "slurm"}
    done = shim("jax", sys.executable, str(script), "a b", env=env)
    assert done.returncode == 5, done.stderr
    assert done.stdout.strip() == "__main__ ['a b'] ('node1:10064', 4, 3, [1])"


def test_a_failing_jax_program_shows_only_its_own_frames(tmp_path: Path) -> None:
    script = tmp_path / "fails.py"
    script.write_text("def f():\n    raise ValueError('no good')\n\nf()\n")
    done = shim("jax", sys.executable, str(script), env=rank_env(0, "127.0.0.1", 1, 1))
    assert done.returncode == 1
    trace = done.stderr.splitlines()
    assert trace[0] == "Traceback (most recent call last):"
    assert str(script) in trace[1] and trace[-1] == "ValueError: no good"
    assert "frameworks.py" not in done.stderr and "runpy" not in done.stderr


# -- how the backends start it --------------------------------------------------------------


def script_spec(script: str, *args: str, **fields: object) -> JobSpec:
    fields.setdefault("name", script.removesuffix(".py"))
    return JobSpec(entrypoint={"kind": "script", "path": str(PROGRAMS / script)},
                   args=list(args), workdir=str(PROGRAMS), **fields)


@pytest.mark.parametrize("launcher", ["tensorflow", "jax"])
def test_dry_run_shows_the_shim(launcher: str) -> None:
    def dry_run(*backend: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "corral.cli", "run", *backend, "--dry-run", "--nodes", "2",
             "--procs-per-node", "2", "--launcher", launcher, str(PROGRAMS / "echo_args.py"),
             "--", "x"], capture_output=True, text=True, timeout=60, check=True)
        return done.stdout

    local = dry_run()
    assert f"each rank starts through corral's {launcher} setup" in local
    ranks = [line for line in local.splitlines() if " RANK=" in line]
    assert len(ranks) == 4
    assert all(line.endswith(f"{SHIM} {launcher} {sys.executable} "
                             f"{PROGRAMS / 'echo_args.py'} x") for line in ranks)
    (srun,) = [line for line in dry_run("--backend", "slurm").splitlines()
               if line.startswith("srun --kill-on-bad-exit=1 --ntasks-per-node=2 ")]
    assert f"corral-rank {sys.executable} {SHIM} {launcher} {sys.executable} " in srun
    assert srun.removesuffix(" && status=0 || status=$?").endswith("echo_args.py x")


def test_slurm_gives_each_job_a_block_of_ports() -> None:
    from corral.backends.slurm import SlurmOptions
    from corral.backends.slurm.render import render

    text = render(JobSpec(entrypoint={"kind": "command", "argv": ["true"]}, nodes=2),
                  job_id="j", run_dir="/r", workdir="/w", options=SlurmOptions(),
                  python="py").script
    (line,) = [x for x in text.splitlines() if x.startswith("export MASTER_PORT=")]
    ports = {}
    for job in (1, 2, 624, 625, 626, 99999, 123456789):
        done = subprocess.run(["bash", "-c", f"{line}; echo $MASTER_PORT"], check=True,
                              env={"SLURM_JOB_ID": str(job)}, capture_output=True, text=True)
        ports[job] = int(done.stdout)
    assert all(10000 <= p < p + PORT_BLOCK - 1 < 32768 and p % PORT_BLOCK == 10000 % 32
               for p in ports.values())
    assert ports[2] - ports[1] == PORT_BLOCK  # consecutive jobs: adjacent blocks
    assert ports[625] == ports[1] - PORT_BLOCK == 10000 and ports[626] == ports[1]


@pytest.mark.parametrize(("launcher", "module"), [("tensorflow", "tensorflow"), ("jax", "jax")])
def test_missing_framework_names_the_extra(monkeypatch: pytest.MonkeyPatch, launcher: str,
                                           module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, package=None: None if name == module else real(name, package))
    with pytest.raises(MissingDependency, match=rf"'{module}' is not installed \(needed by "
                                                rf"launcher {launcher}\); run: pip install "
                                                rf"'corral\[{launcher}\]'"):
        LocalBackend().render(script_spec("echo_args.py", nodes=2, launcher=launcher))


@pytest.mark.parametrize("launcher", ["tensorflow", "jax"])
def test_each_rank_gets_its_share_of_the_nodes_gpus(launcher: str) -> None:
    from corral.backends.local.render import Machine, render

    spec = script_spec("echo_args.py", nodes=2, procs_per_node=2, launcher=launcher,
                       resources={"gpus": 2})
    plan = render(spec, job_id="j", run_dir="/r", master_port=20000, workdir="/w",
                  machine=Machine(cpu_count=4, gpus=("0", "1", "2", "3")))
    seen = {p.rank: p.env["CUDA_VISIBLE_DEVICES"] for n in plan.nodes for p in n.processes}
    assert seen == {0: "0", 1: "1", 2: "2", 3: "3"}


# -- real runs on 2 emulated nodes ------------------------------------------------------------


def tf_spec(out: Path, *args: str, **fields: object) -> JobSpec:
    # Keras 3 cannot fit() under MultiWorkerMirroredStrategy: tf-keras, as TF's guide says
    return script_spec("tf_mwms.py", str(out), *args, launcher="tensorflow",
                       env={"TF_USE_LEGACY_KERAS": "1"}, **fields)


def require_frameworks() -> None:
    for module, pin in (("tensorflow", "tensorflow-cpu"), ("tf_keras", "tf-keras"),
                        ("jax", "jax[cpu]")):
        require(importlib.util.find_spec(module) is not None,
                f"{module} is not installed: pip install -e '.[test]' ({pin})")


def reference_weights(initial: list[list[float]], steps: int) -> list[float]:
    """The weights after ``steps`` SGD steps with the gradients of both workers averaged,
    computed here with numpy: each worker takes 4 rows of its own data a step."""
    import numpy as np

    w = np.array(initial[0], dtype="float64").reshape(4, 1)
    b = np.array(initial[1], dtype="float64")
    data = []
    for index in range(2):  # the program's data, worker by worker
        x = np.random.default_rng(index).normal(size=(64, 4)).astype("float32")
        y = x @ np.array([[1.0], [-2.0], [3.0], [0.5]], dtype="float32")
        data.append((x.astype("float64"), y.astype("float64")))
    for step in range(steps):
        grad_w, grad_b = np.zeros_like(w), np.zeros_like(b)
        for x, y in data:
            xs, ys = x[4 * step:4 * step + 4], y[4 * step:4 * step + 4]
            residual = xs @ w + b - ys
            grad_w += (2 / len(xs)) * xs.T @ residual / 2
            grad_b += (2 / len(xs)) * residual.sum(axis=0) / 2
        w, b = w - 0.05 * grad_w, b - 0.05 * grad_b
    return [*w.ravel().tolist(), *b.tolist()]


def check_tf(out: Path, hosts: set[str] | None = None) -> dict[int, dict]:
    ranks = read_rank_outputs(out)
    assert sorted(ranks) == [0, 1]
    first, second = ranks[0], ranks[1]
    assert [r["index"] for r in (first, second)] == [0, 1]
    assert first["replicas"] == second["replicas"] == 2
    assert first["keras"].startswith("tf_keras")
    assert first["tf_config"]["cluster"] == second["tf_config"]["cluster"]
    workers = first["tf_config"]["cluster"]["worker"]
    assert len(workers) == 2 and len(set(workers)) == 2
    if hosts is not None:
        assert {w.split(":")[0] for w in workers} == hosts
    assert first["initial"] == second["initial"]  # the chief's, given to every worker
    assert first["weights"] == second["weights"]  # equal after training on different data
    flat = [v for part in first["weights"] for v in part]
    assert flat == pytest.approx(reference_weights(first["initial"], 4), abs=1e-5)
    assert flat != [v for part in first["initial"] for v in part]
    return ranks


def check_jax(out: Path, world: int, procs: int) -> dict[int, dict]:
    ranks = read_rank_outputs(out)
    assert sorted(ranks) == list(range(world))
    total = float(sum(range(1, world + 1)))
    for rank, record in ranks.items():
        assert record["process_index"] == rank and record["process_count"] == world
        assert record["devices"] == world and record["local_devices"] == 1
        assert record["allgather"] == [float(r + 1) for r in range(world)]
        assert record["psum"] == [total]
        env = record["env"]
        assert env["JAX_PROCESS_ID"] == str(rank) and env["JAX_NUM_PROCESSES"] == str(world)
        assert env["JAX_LOCAL_PROCESS_ID"] == str(rank % procs)
        assert env["JAX_COORDINATOR_ADDRESS"] == f"{env['MASTER_ADDR']}:{env['MASTER_PORT']}"
    return ranks


def test_tensorflow_multi_worker_on_two_emulated_nodes(tmp_path: Path) -> None:
    require_frameworks()
    status = LocalBackend().run(tf_spec(tmp_path, nodes=2))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = check_tf(tmp_path, hosts={"127.0.0.1"})
    port = int(ranks[0]["tf_config"]["cluster"]["worker"][0].split(":")[1])
    assert ranks[0]["tf_config"]["cluster"]["worker"] == [f"127.0.0.1:{port}",
                                                          f"127.0.0.1:{port + 1}"]
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def test_jax_distributed_on_two_emulated_nodes(tmp_path: Path) -> None:
    require_frameworks()
    status = LocalBackend().run(script_spec("jax_psum.py", str(tmp_path), nodes=2,
                                            procs_per_node=2, launcher="jax"))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = check_jax(tmp_path, 4, 2)
    assert {r["env"]["MASTER_ADDR"] for r in ranks.values()} == {"127.0.0.1"}
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def check_failed(status: JobStatus, rank: int, node: int, said: str) -> None:
    assert status.state is JobState.FAILED, status.summary()
    failure = status.failure
    assert failure is not None, status.summary()
    assert (failure.rank, failure.node, failure.returncode) == (rank, node, 3), status.summary()
    summary = status.summary()
    assert f"rank {rank} on node {node} failed: exit code 3" in summary
    assert said in summary


@pytest.mark.parametrize("launcher", ["tensorflow", "jax"])
def test_failing_worker_is_named_on_emulated_nodes(tmp_path: Path, launcher: str) -> None:
    require_frameworks()
    spec = (tf_spec(tmp_path, "--fail-rank", "1", nodes=2) if launcher == "tensorflow" else
            script_spec("jax_psum.py", str(tmp_path), "--fail-rank", "1", nodes=2,
                        launcher="jax"))
    status = LocalBackend().run(spec)
    check_failed(status, 1, 1, "failing on purpose")
    # the other worker, waiting for it in a collective, was stopped: not left to time out
    assert status.duration is not None and status.duration < 30, status.summary()
    assert leftover_processes(status.run_dir or "", status.job_id) == []


# -- real runs on the Slurm test cluster ------------------------------------------------------


@pytest.fixture
def slurm(cluster: object) -> object:
    from corral.backends.slurm import SlurmBackend, SlurmOptions

    return SlurmBackend(SlurmOptions(python=sys.executable, poll_seconds=0.1))


def run_on_slurm(slurm: object, spec: JobSpec, timeout: float = 240) -> JobStatus:
    ref = slurm.submit(spec)  # type: ignore[attr-defined]
    status: JobStatus = slurm.wait(ref.job_id, timeout=timeout)  # type: ignore[attr-defined]
    assert status.state.is_terminal(), status.summary()
    return status


@pytest.mark.slurm
def test_tensorflow_multi_worker_on_slurm(slurm: object, tmp_path: Path) -> None:
    require_frameworks()
    status = run_on_slurm(slurm, tf_spec(tmp_path, nodes=2))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = check_tf(tmp_path)
    workers = ranks[0]["tf_config"]["cluster"]["worker"]
    hosts = [w.split(":")[0] for w in workers]
    assert hosts == [ranks[0]["host"], ranks[1]["host"]] and len(set(hosts)) == 2
    assert len({w.split(":")[1] for w in workers}) == 1  # local rank 0 on each host


@pytest.mark.slurm
def test_jax_distributed_on_slurm(slurm: object, tmp_path: Path) -> None:
    require_frameworks()
    status = run_on_slurm(slurm, script_spec("jax_psum.py", str(tmp_path), nodes=2,
                                             procs_per_node=2, launcher="jax"))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = check_jax(tmp_path, 4, 2)
    hosts = {r["host"] for r in ranks.values()}
    assert len(hosts) == 2 and hosts <= {"node1", "node2", "node3"}
    assert {r["env"]["MASTER_ADDR"] for r in ranks.values()} == {ranks[0]["host"]}
    assert {int(r["env"]["MASTER_PORT"]) % PORT_BLOCK for r in ranks.values()} == {
        10000 % PORT_BLOCK}


@pytest.mark.slurm
@pytest.mark.parametrize("launcher", ["tensorflow", "jax"])
def test_failing_worker_is_named_on_slurm(slurm: object, tmp_path: Path,
                                          launcher: str) -> None:
    require_frameworks()
    if launcher == "tensorflow":
        spec = tf_spec(tmp_path, "--fail-rank", "1", nodes=2)
        rank, node = 1, 1
    else:
        spec = script_spec("jax_psum.py", str(tmp_path), "--fail-rank", "3", nodes=2,
                           procs_per_node=2, launcher="jax")
        rank, node = 3, 1
    status = run_on_slurm(slurm, spec)
    check_failed(status, rank, node, "failing on purpose")
    host = status.failure.reason.rsplit(" ", 1)[-1]  # type: ignore[union-attr]
    assert host in {"node1", "node2", "node3"}
    assert f"exit code 3 on host {host}" in status.summary()
