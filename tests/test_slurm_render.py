"""Golden sbatch scripts: every launcher and option, hostile values quoted safely (pure)."""

from __future__ import annotations

import os
import subprocess

import pytest

from corral.backends.slurm import SlurmOptions
from corral.backends.slurm.client import expand_nodelist, parse_scontrol, parse_srun_failure
from corral.backends.slurm.options import slurm_time
from corral.backends.slurm.render import render
from corral.errors import SpecError
from corral.spec import JobSpec

HEADER = """\
#!/bin/bash
# corral job j-1: rendered by corral, submitted as is
#SBATCH --job-name=train
#SBATCH --comment=corral-job=j-1
#SBATCH --nodes=2
#SBATCH --ntasks-per-node={tasks}
#SBATCH --output=/shared/j-1/logs/batch-%j.log
#SBATCH --chdir=/shared/j-1/code
set -eu

export CORRAL_JOB_ID=j-1
export CORRAL_JOB_NAME=train
export CORRAL_BACKEND=slurm
export CORRAL_RUN_DIR=/shared/j-1
export CORRAL_NUM_NODES=2
{world}export LOCAL_WORLD_SIZE=2
export PYTHONUNBUFFERED=1
threads=$(( ${{SLURM_CPUS_ON_NODE:-1}} / 2 ))
export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))
export CORRAL_LOG_DIR=/shared/j-1/logs"${{SLURM_ARRAY_TASK_ID:+/array-$SLURM_ARRAY_TASK_ID}}"
mkdir -p "$CORRAL_LOG_DIR"
srun_logs="${{CORRAL_LOG_DIR//%/%%}}"
hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")
export MASTER_ADDR=$(printf "%s\\n" $hosts | head -n 1)
export MASTER_PORT=$(( 10000 + SLURM_JOB_ID % 625 * 32 ))
export CORRAL_HOSTS=$(printf "%s\\n" $hosts | paste -sd, -)
export CORRAL_HOSTFILE="$CORRAL_LOG_DIR/hostfile"
printf "%s slots=2\\n" $hosts > "$CORRAL_HOSTFILE"

"""
RANK_SHIM = ("'export RANK=\"$SLURM_PROCID\" LOCAL_RANK=\"$SLURM_LOCALID\" "
             "NODE_RANK=\"$SLURM_NODEID\" GROUP_RANK=\"$SLURM_NODEID\"; "
             "exec >>\"$CORRAL_LOG_DIR/rank-$RANK.log\" 2>&1; exec \"$@\"' corral-rank")


def spec(launcher: str = "none", **fields: object) -> JobSpec:
    base: dict[str, object] = {"name": "train", "entrypoint": {"kind": "script",
                               "path": "/home/me/proj/train.py"}, "args": ["--lr", "0.1"],
                               "nodes": 2, "procs_per_node": 2, "launcher": launcher}
    base.update(fields)
    return JobSpec(**base)


def script(s: JobSpec, **options: object) -> str:
    options.setdefault("profile_seconds", 0)  # the sampler's lines: their own test below
    return render(s, job_id="j-1", run_dir="/shared/j-1", workdir="/home/me/proj",
                  options=SlurmOptions(**options), python="/venv/bin/python").script


def test_none_launcher_one_task_per_rank() -> None:
    expected = HEADER.format(tasks=2, world="export WORLD_SIZE=4\n") + (
        "srun --kill-on-bad-exit=1 --ntasks-per-node=2 "
        "--output=\"${srun_logs}\"/node-%n.log sh -c " + RANK_SHIM +
        " /venv/bin/python /shared/j-1/code/train.py --lr 0.1\n")
    assert script(spec("none")) == expected


def test_torchrun_one_agent_per_node_with_rendezvous_on_first_host() -> None:
    text = script(spec("torchrun"))
    assert text.startswith(HEADER.format(tasks=1, world=""))
    assert text.splitlines()[-1] == (
        "srun --kill-on-bad-exit=1 --ntasks-per-node=1 --output=\"${srun_logs}\"/node-%n.log"
        " sh -c 'export NODE_RANK=\"$SLURM_NODEID\"; exec /venv/bin/python -m "
        "torch.distributed.run --nnodes 2 --nproc-per-node 2 --node-rank \"${SLURM_NODEID}\" "
        "--rdzv-backend c10d --rdzv-endpoint \"${MASTER_ADDR}\":\"${MASTER_PORT}\" --rdzv-id j-1"
        " --max-restarts 0 --no-python sh -c '\"'\"'export NODE_RANK=\"${GROUP_RANK:-$NODE_RANK}"
        "\"; exec >>\"$CORRAL_LOG_DIR/rank-$RANK.log\" 2>&1; exec \"$@\"'\"'\"' corral-rank "
        "/venv/bin/python /shared/j-1/code/train.py --lr 0.1' corral-node"
    )


def test_mpirun_through_srun_pmix_and_inside_the_allocation() -> None:
    last = script(spec("mpirun")).splitlines()[-1]
    assert last.startswith("srun --kill-on-bad-exit=1 --ntasks-per-node=2 ")
    assert " --mpi=pmix sh -c " + RANK_SHIM in last
    inside = script(spec("mpirun"), mpi_mode="mpirun").splitlines()[-1]
    assert inside.startswith('mpirun -np 4 --hostfile "${CORRAL_HOSTFILE}" --map-by slot -x ')
    assert inside.endswith('--lr 0.1 >>"$CORRAL_LOG_DIR/node-0.log" 2>&1')
    assert 'RANK="$OMPI_COMM_WORLD_RANK"' in inside


def test_deepspeed_per_node() -> None:
    last = script(spec("deepspeed")).splitlines()[-1]
    assert "--ntasks-per-node=1" in last
    assert ("-m deepspeed.launcher.launch --world_info=" in last and
            "--node_rank=\"${SLURM_NODEID}\" --master_addr=\"${MASTER_ADDR}\" "
            "--master_port=\"${MASTER_PORT}\" --module corral.runtime.rankshim --at 2 "
            "/venv/bin/python /shared/j-1/code/train.py --lr 0.1" in last)


def test_every_option_renders_its_sbatch_line() -> None:
    s = spec("none", time_limit="1h30m", resources={"cpus": 8, "memory": "16G", "gpus": 2},
             queue="gpu", priority=-5)
    text = script(s, account="proj1", qos="high", reservation="res1", constraint="a100&ib",
                  array="0-3%2", dependency="afterok:41", exclusive=True, requeue=True,
                  extra_sbatch=["--mail-type=END"])
    lines = [line.removeprefix("#SBATCH ") for line in text.splitlines() if "#SBATCH" in line]
    assert lines[6:] == [
        "--partition=gpu", "--account=proj1", "--qos=high", "--reservation=res1",
        "--constraint=a100&ib", "--array=0-3%2", "--dependency=afterok:41", "--time=01:30:00",
        "--cpus-per-task=4", "--mem=16384M", "--gpus-per-node=2", "--exclusive", "--requeue",
        "--nice=5",
        "--mail-type=END",
    ]
    assert lines[4] == "--output=/shared/j-1/logs/batch-%A_%a.log"
    assert "--gres=gpu:a100:2" in script(s, gres="gpu:a100:2")
    assert "--gpus-per-node" not in script(s, gres="gpu:a100:2")


def test_containers() -> None:
    pyxis = script(spec("none", image="nvcr.io/nvidia/pytorch:24.01"), container="pyxis",
                   container_mounts=["/data:/data"])
    assert ("--container-image=nvcr.io/nvidia/pytorch:24.01 --container-mounts=/data:/data sh"
            in pyxis)
    apptainer = script(spec("torchrun", image="/images/torch.sif"), container="apptainer")
    assert "node-%n.log apptainer exec /images/torch.sif sh -c" in apptainer
    with pytest.raises(SpecError, match="needs an image"):
        script(spec("none"), container="pyxis")


def test_snapshot_off_runs_in_place() -> None:
    text = script(spec("none"), snapshot=False)
    assert "#SBATCH --chdir=/home/me/proj" in text and "/home/me/proj/train.py" in text


@pytest.mark.parametrize(
    ("options", "field"),
    [({"partition": "a b"}, "slurm.partition"), ({"array": "1-x"}, "slurm.array"),
     ({"dependency": "after:ok"}, "slurm.dependency"), ({"mpi_mode": "ssh"}, "slurm.mpi_mode"),
     ({"extra_sbatch": ["--a\n#SBATCH --b"]}, "slurm.extra_sbatch"),
     ({"partiton": "x"}, "slurm.partiton")],
)
def test_bad_options_are_named(options: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        SlurmOptions(**options)
    assert info.value.problems[0][0].startswith(field)


HOSTILE = ["it's", "$(touch /tmp/pwned)", "`id`", "a\nb", "ünï 🚀", "--x", ""]


@pytest.mark.parametrize("launcher", ["none", "torchrun", "mpirun", "deepspeed"])
def test_hostile_values_render_safely(launcher: str, tmp_path: object) -> None:
    """The script parses as bash, and sets names, env and args without running them."""
    s = spec(launcher, name="we'ird\n$(name)", args=HOSTILE,
             env={f"V{i}": v for i, v in enumerate(HOSTILE)})
    text = script(s)
    assert "#SBATCH --job-name=we_ird_name" in text
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    exports = text.split("set -eu\n")[1].split("export CORRAL_LOG_DIR")[0]
    probe = exports + '\nprintf "%s\\0" "$V0" "$V1" "$V2" "$V3" "$V4" "$V5" "$V6"'
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split("\0")[:-1] == HOSTILE
    assert not os.path.exists("/tmp/pwned")


def test_slurm_time() -> None:
    assert slurm_time(59) == "00:01:00"
    assert slurm_time(5400) == "01:30:00"
    assert slurm_time(90061) == "1-01:02:00"


def test_parsers() -> None:
    line = ("JobId=42 JobName=train UserId=root(0) JobState=PENDING Reason=Resources "
            "Dependency=(null) ExitCode=0:0 NodeList=node[1-2] Command=/a b/job.sbatch")
    (record,) = parse_scontrol(line)
    assert record["JobState"] == "PENDING" and record["Reason"] == "Resources"
    assert record["NodeList"] == "node[1-2]" and record["Command"] == "/a b/job.sbatch"
    assert expand_nodelist("node[1-3,5],gpu07,n[08-09]") == [
        "node1", "node2", "node3", "node5", "gpu07", "n08", "n09"]
    text = "x\nsrun: error: node2: tasks 2-3: Exited with exit code 3\nsrun: error: node1: task 0"
    assert parse_srun_failure(text) == ("node2", 2, 3)
    assert parse_srun_failure("srun: error: node3: task 5: Killed") == ("node3", 5, -9)
    assert parse_srun_failure("all fine") is None


def test_cli_dry_run_prints_the_script_without_a_cluster(tmp_path: object) -> None:
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "slurm", "--dry-run",
         "-o", "partition=debug", "-o", "extra_sbatch=--mail-type=END", "--nodes", "2",
         "--launcher", "torchrun", "--time-limit", "5m", "train.py", "--", "--lr", "0.1"],
        capture_output=True, text=True, cwd=str(tmp_path),
        env={**os.environ, "PATH": "/usr/bin:/bin", "SLURM_CONF": "/nonexistent"},
    )
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --partition=debug" in done.stdout
    assert "#SBATCH --mail-type=END" in done.stdout and "#SBATCH --time=00:05:00" in done.stdout
    assert "torch.distributed.run --nnodes 2" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "corral.cli", "run", "--backend", "slurm", "--dry-run",
         "-o", "partiton=debug", "train.py"], capture_output=True, text=True, cwd=str(tmp_path))
    assert bad.returncode == 125
    assert "slurm.partiton: got 'debug'; unknown field; accepted: account" in bad.stderr


def test_snapshot_is_git_aware(tmp_path: object) -> None:
    from pathlib import Path

    from corral.snapshot import snapshot_files

    repo = Path(str(tmp_path))
    (repo / "pkg").mkdir()
    (repo / "train.py").write_text("print(1)\n")
    (repo / "pkg" / "model.py").write_text("x = 1\n")
    (repo / "new_untracked.py").write_text("y = 2\n")
    (repo / "outputs").mkdir()
    (repo / "outputs" / "big.ckpt").write_text("weights")
    (repo / ".gitignore").write_text("outputs/\n")
    plain = snapshot_files(str(repo)).files  # not a git work tree yet: everything but caches
    assert "outputs/big.ckpt" in plain and "train.py" in plain
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "add", "train.py", "pkg", ".gitignore"], check=True)
    assert snapshot_files(str(repo)).files == sorted(
        [".gitignore", "new_untracked.py", "pkg/model.py", "train.py"])


def test_jobs_of_one_engine_share_one_watcher_whatever_their_options() -> None:
    from corral.backends.slurm import SlurmBackend

    gpu = SlurmBackend(SlurmOptions(partition="gpu", poll_seconds=0.2)).poll_key
    slow = SlurmBackend(SlurmOptions(poll_seconds=5)).poll_key
    remote = SlurmBackend(SlurmOptions(ssh="login.example.org")).poll_key
    assert gpu == slow != remote


def test_an_engine_command_that_hangs_is_a_corral_error(tmp_path: object) -> None:
    import os
    from pathlib import Path

    from corral.backends.slurm.transport import LocalTransport
    from corral.errors import BackendError

    fake = Path(str(tmp_path)) / "scontrol"
    fake.write_text("#!/bin/sh\necho 'slurm_load_jobs error: Socket timed out' >&2\n"
                    "exec sleep 30\n")
    fake.chmod(0o755)
    transport = LocalTransport(env={"PATH": f"{fake.parent}:{os.environ['PATH']}"})
    with pytest.raises(BackendError, match=r"scontrol show job -o did not finish in 0\.5s; "
                                           r"it printed: slurm_load_jobs error"):
        transport.run(["scontrol", "show", "job", "-o"], timeout=0.5)


def test_time_limit_that_slurm_rounds_is_reported() -> None:
    from corral.backends.slurm.render import render

    plan = render(spec("none", time_limit="90s"), job_id="j-1", run_dir="/shared/j-1",
                  workdir="/work", options=SlurmOptions(), python="/venv/bin/python")
    assert "# note: time limit 90s becomes --time=00:02:00: Slurm counts whole minutes" in (
        plan.dry_run_text())
    whole = render(spec("none", time_limit="2m"), job_id="j-1", run_dir="/shared/j-1",
                   workdir="/work", options=SlurmOptions(), python="/venv/bin/python")
    assert whole.notes == ()


def test_a_users_thread_count_is_kept_on_slurm() -> None:
    text = script(spec("none", env={"OMP_NUM_THREADS": "3"}))
    assert "export OMP_NUM_THREADS=3\n" in text and "SLURM_CPUS_ON_NODE" not in text


@pytest.mark.parametrize("slurm_state", ["COMPLETING", "FAILED", "CANCELLED", "REQUEUED"])
def test_what_slurm_shows_as_it_requeues_is_the_new_attempt_waiting(slurm_state: str) -> None:
    from corral.backends.slurm import SlurmBackend
    from corral.spec import JobState
    from corral.store import JobRecord

    record = JobRecord(id="j-1", name="j", user="u", backend="slurm", poll_key="k",
                       state=JobState.RUNNING, reason="", attempt=1, created=0.0,
                       updated=0.0, engine_id="41", nodes=1, procs_per_node=1)
    [job] = parse_scontrol(f"JobId=41 JobName=j JobState={slurm_state} Reason=None "
                           "Requeue=1 Restarts=1 ExitCode=0:15 NodeList=node1")
    seen = SlurmBackend(SlurmOptions())._observe(record, [job])
    assert (seen.state, seen.engine_attempt) == (JobState.PENDING, 2)


def test_a_sampler_step_runs_beside_the_ranks_and_is_stopped_after_them() -> None:
    lines = script(spec("none"), profile_seconds=0.5).splitlines()
    start = lines.index("export CORRAL_PROFILE_SECONDS=0.5")
    assert lines[start + 1] == ("srun --overlap --ntasks-per-node=1 --output=/dev/null "
                                "/venv/bin/python -m corral.runtime.sampler &")
    assert lines[start + 2] == "sampler=$!"
    assert lines[start + 3].startswith("srun --kill-on-bad-exit=1 ")
    assert lines[start + 3].endswith(" && status=0 || status=$?")
    assert lines[-2:] == ['kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true',
                          'exit "$status"']
    # inside a container the host's interpreter may not have corral: no sampler there
    assert "corral.runtime.sampler" not in script(spec("none", image="img:1"),
                                                  container="pyxis", profile_seconds=1)
