"""Real runs on the local backend: torch DDP on gloo, torchrun, Open MPI."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from conftest import leftover_processes, read_rank_outputs, require
from corral.api import submit
from corral.backends.local import LocalBackend, LocalOptions
from corral.errors import SubmitError
from corral.spec import JobSpec, JobState

pytest.importorskip("torch")


def ddp_spec(programs: Path, out: Path, **fields: object) -> JobSpec:
    return JobSpec(
        name="ddp", entrypoint={"kind": "script", "path": str(programs / "ddp_allreduce.py")},
        args=[str(out)], **fields,
    )


def check_allreduce(out: Path, nodes: int, procs: int) -> dict[int, dict]:
    world = nodes * procs
    ranks = read_rank_outputs(out)
    assert sorted(ranks) == list(range(world))
    expected = float(sum(range(1, world + 1)))
    for rank, record in ranks.items():
        env = record["env"]
        assert record["sum"] == [expected] * 4
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == str(world)
        assert env["LOCAL_WORLD_SIZE"] == str(procs)
        # torchrun's own agent names the store host by its hostname ("localhost" here)
        assert env["MASTER_ADDR"] in ("127.0.0.1", "localhost")
        assert int(env["OMP_NUM_THREADS"]) >= 1
    nodes_seen = {r["env"]["NODE_RANK"] for r in ranks.values()}
    assert nodes_seen == {str(n) for n in range(nodes)}
    for record in ranks.values():
        node = int(record["env"]["NODE_RANK"])
        assert int(record["env"]["LOCAL_RANK"]) == record["rank"] - node * procs
    assert len({r["env"]["MASTER_PORT"] for r in ranks.values()}) == 1
    return ranks


@pytest.mark.parametrize(("nodes", "procs", "launcher"),
                         [(1, 2, "none"), (2, 2, "none"), (2, 1, "torchrun"), (2, 2, "torchrun")])
def test_ddp_allreduce_forked(programs: Path, tmp_path: Path, nodes: int, procs: int,
                              launcher: str) -> None:
    status = LocalBackend().run(ddp_spec(programs, tmp_path, nodes=nodes, procs_per_node=procs,
                                         launcher=launcher))
    assert status.state is JobState.SUCCEEDED, status.summary()
    assert not status.notes, status.notes  # no fallback to exec: forking was safe
    ranks = check_allreduce(tmp_path, nodes, procs)
    if launcher == "torchrun":
        assert {r["env"]["TORCHELASTIC_RUN_ID"] for r in ranks.values()} == {status.job_id}
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def test_two_emulated_nodes_with_real_torchrun_agents(programs: Path, tmp_path: Path) -> None:
    backend = LocalBackend(LocalOptions(fork=False))
    status = backend.run(ddp_spec(programs, tmp_path, nodes=2, procs_per_node=1,
                                  launcher="torchrun"))
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = check_allreduce(tmp_path, 2, 1)
    assert {r["env"]["GROUP_RANK"] for r in ranks.values()} == {"0", "1"}
    logs = Path(status.run_dir or "") / "logs"
    assert (logs / "rank-0.log").read_text().strip().endswith("rank 0/2 sum 3")
    assert "torch.distributed.run" in (Path(status.run_dir or "") / "plan.json").read_text()


def test_exec_mode_when_forking_is_off(programs: Path, tmp_path: Path) -> None:
    spec = ddp_spec(programs, tmp_path, nodes=2, procs_per_node=1, preload=[])
    status = LocalBackend().run(spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    check_allreduce(tmp_path, 2, 1)


def test_two_torchrun_jobs_at_once_do_not_collide(programs: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b"]
    handles = []
    for out in outs:
        out.mkdir()
        handles.append(submit(ddp_spec(programs, out, nodes=2, launcher="torchrun")))
    for handle, out in zip(handles, outs, strict=True):
        status = handle.wait(timeout=120)
        assert status.state is JobState.SUCCEEDED, status.summary()
        check_allreduce(out, 2, 1)
    ports = {h.status().job_id: read_rank_outputs(o)[0]["env"]["MASTER_PORT"]
             for h, o in zip(handles, outs, strict=True)}
    assert len(set(ports.values())) == 2


def test_open_mpi_2x2_allreduce(programs: Path, tmp_path: Path) -> None:
    require(shutil.which("mpirun") is not None, "Open MPI (openmpi-bin) not installed")
    require(importlib.util.find_spec("mpi4py") is not None, "mpi4py not installed")
    spec = JobSpec(name="mpi", entrypoint={"kind": "script", "path": str(programs /
                   "mpi_allreduce.py")}, args=[str(tmp_path)], nodes=2, procs_per_node=2,
                   launcher="mpirun")
    status = LocalBackend().run(spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(tmp_path)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, record in ranks.items():
        assert record["sum"] == 10 and record["mpi_size"] == 4
        env = record["env"]
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "4"
        assert env["NODE_RANK"] == str(rank // 2) and env["LOCAL_RANK"] == str(rank % 2)
    logs = Path(status.run_dir or "") / "logs"
    assert (logs / "rank-3.log").read_text().strip() == "mpi rank 3 sum 10"
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def test_deepspeed_launcher_two_emulated_nodes(programs: Path, tmp_path: Path) -> None:
    require(importlib.util.find_spec("deepspeed") is not None, "deepspeed not installed")
    spec = ddp_spec(programs, tmp_path, nodes=2, procs_per_node=1, launcher="deepspeed")
    status = LocalBackend().run(spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = check_allreduce(tmp_path, 2, 1)
    assert [r["argv"] for r in ranks.values()] == [["--local_rank=0", str(tmp_path)]] * 2
    assert leftover_processes(status.run_dir or "", status.job_id) == []


def test_mpich_hydra_2x2_allreduce(programs: Path, tmp_path: Path) -> None:
    """MPICH's hydra (Debian's mpich package) with mpi4py loading MPICH's library."""
    require(shutil.which("mpiexec.hydra") is not None, "MPICH (mpich) not installed")
    require(importlib.util.find_spec("mpi4py") is not None, "mpi4py not installed")
    libmpich = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")
    require(libmpich.exists(), f"{libmpich} not found")
    # Debian names MPICH's library libmpich.so.12; mpi4py's MPICH ABI looks for libmpi.so.12.
    libs = tmp_path / "lib"
    libs.mkdir()
    (libs / "libmpi.so.12").symlink_to(libmpich)
    out = tmp_path / "out"
    out.mkdir()
    spec = JobSpec(name="mpich", entrypoint={"kind": "script", "path": str(programs /
                   "mpi_allreduce.py")}, args=[str(out)], nodes=2, procs_per_node=2,
                   launcher="mpirun", mpi="mpich",
                   env={"MPI4PY_MPIABI": "mpich", "LD_LIBRARY_PATH": str(libs)})
    status = LocalBackend().run(spec)
    assert status.state is JobState.SUCCEEDED, status.summary()
    ranks = read_rank_outputs(out)
    assert sorted(ranks) == [0, 1, 2, 3]
    for rank, record in ranks.items():
        assert record["sum"] == 10 and record["mpi_size"] == 4
        assert record["env"]["RANK"] == str(rank) and record["env"]["NODE_RANK"] == str(rank // 2)
    assert "-f" in (Path(status.run_dir or "") / "plan.json").read_text()


def test_mpi_that_mpi4py_does_not_load_is_refused_before_starting(programs: Path) -> None:
    """mpi4py here loads Open MPI; MPICH's hydra would start 4 singletons of size 1."""
    require(shutil.which("mpiexec.hydra") is not None, "MPICH (mpich) not installed")
    require(importlib.util.find_spec("mpi4py") is not None, "mpi4py not installed")
    spec = JobSpec(name="mismatch", entrypoint={"kind": "script", "path": str(
        programs / "mpi_allreduce.py")}, args=["/nonexistent"], nodes=2, procs_per_node=2,
        launcher="mpirun", mpi="mpich")
    with pytest.raises(SubmitError, match=r"mpi4py loads Open MPI, but --mpi mpich"):
        LocalBackend().render(spec)
