"""Render a job as one sbatch script. Pure: no cluster is asked anything.

The script exports the job's variables, finds the first host of the allocation
(``MASTER_ADDR``) and a per-job port, writes the hostfile, and starts the launcher:

* ``torchrun`` / ``deepspeed``: ``srun`` one task per node, each running the launcher's
  per-node command with its node rank taken from ``SLURM_NODEID``;
* ``none``, ``tensorflow``, ``jax`` and ``mpirun`` (``mpi_mode="srun"``): ``srun`` one task
  per rank (``--mpi=pmix`` for MPI), each deriving ``RANK``/``LOCAL_RANK``/``NODE_RANK`` from
  Slurm's task ids (``tensorflow`` and ``jax`` through :mod:`corral.runtime.frameworks`);
* ``mpirun`` with ``mpi_mode="mpirun"``: Open MPI's ``mpirun`` inside the allocation.

Every rank appends its output to ``<run dir>/logs/rank-<RANK>.log`` on the shared
filesystem; each node's launcher output goes to ``logs/node-<N>.log``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from corral import shell
from corral.errors import SpecError
from corral.launchers import NodeContext, get_launcher
from corral.launchers.base import SHIM_NAME
from corral.ports import PORT_BLOCK
from corral.spec import JobSpec

from .options import SlurmOptions, slurm_time

NODE_ID = shell.ref("SLURM_NODEID")
MASTER_ADDR = shell.ref("MASTER_ADDR")
MASTER_PORT = shell.ref("MASTER_PORT")
LOG_DIR = shell.ref("CORRAL_LOG_DIR")
SRUN_LOG_DIR = shell.ref("srun_logs")  # the same, with % doubled: srun reads %n, %j ...
# MASTER_PORT = PORT_BASE + (job id % blocks) * PORT_BLOCK: each job owns the PORT_BLOCK ports
# from it (TensorFlow's workers listen on those after MASTER_PORT); two running jobs share a
# block only when their ids differ by a multiple of PORT_BLOCKS (625); all lie below Linux's
# default ephemeral range (32768-60999), so an outgoing connection never holds one.
PORT_BASE = 10000
PORT_SPAN = 20000
PORT_BLOCKS = PORT_SPAN // PORT_BLOCK

_RANK_FROM_SLURM = (
    'export RANK="$SLURM_PROCID" LOCAL_RANK="$SLURM_LOCALID" NODE_RANK="$SLURM_NODEID" '
    'GROUP_RANK="$SLURM_NODEID"; exec >>"$CORRAL_LOG_DIR/rank-$RANK.log" 2>&1; exec "$@"'
)
_NODE_FROM_SLURM = 'export NODE_RANK="$SLURM_NODEID"; exec "$@"'


@dataclass(frozen=True)
class SlurmPlan:
    job_id: str
    run_dir: str
    workdir: str  # on the submitting machine; snapshotted to code_dir at submit
    code_dir: str
    script: str
    entry_rewrites: dict[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what the user should know before it runs


    @property
    def script_path(self) -> str:
        return f"{self.run_dir}/job.sbatch"

    def dry_run_text(self) -> str:
        return (f"# sbatch --parsable {self.script_path}\n"
                f"# code: {self.workdir} -> {self.code_dir}\n"
                + "".join(f"# note: {note}\n" for note in self.notes) + self.script)


def job_name(name: str) -> str:
    """Slurm's --job-name: printable, no spaces or quotes (the full name is in the env)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name).strip("_")[:100] or "job"


QUEUE_NAME = r"^[A-Za-z0-9_.+-]+$"  # what Slurm accepts as a partition name


def sbatch_path(path: str, what: str) -> str:
    """A path that an ``#SBATCH`` line can carry; one sbatch cannot take is refused before
    anything is submitted."""
    bad = [c for c in ('"', "\\", "\n", "\r") if c in path]
    if bad:
        raise SpecError([(what, path, f"a path with {bad[0]!r} cannot be given to sbatch; "
                          "choose a run root or working directory without it")])
    return path


def sbatch_value(value: str) -> str:
    """Double-quoted when it holds spaces (sbatch reads quotes in #SBATCH lines)."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


COMMENT_PREFIX = "corral-job="  # --comment carries corral's id: a lost submission is found


def _sbatch_lines(spec: JobSpec, options: SlurmOptions, tasks_per_node: int,
                  log_dir: str, code_dir: str, job_id: str) -> list[str]:
    pattern = "batch-%j.log" if not options.array else "batch-%A_%a.log"
    lines = [
        f"--job-name={job_name(spec.name)}",
        f"--comment={COMMENT_PREFIX}{job_id}",
        f"--nodes={spec.nodes}",
        f"--ntasks-per-node={tasks_per_node}",
        # In --output, % starts a filename pattern (%j): a literal one is written %%.
        "--output=" + sbatch_value(sbatch_path(log_dir, "run directory").replace("%", "%%")
                                   + "/" + pattern),
        "--chdir=" + sbatch_value(sbatch_path(code_dir, "working directory")),
    ]
    if spec.queue and not re.match(QUEUE_NAME, spec.queue):
        raise SpecError([("queue", spec.queue, "accepted on Slurm: a partition name of "
                          "letters, digits and _.+- (e.g. gpu)")])
    partition = options.partition or spec.queue
    if partition:
        lines.append(f"--partition={partition}")
    for name in ("account", "qos", "reservation", "constraint", "array", "dependency", "gres"):
        value = getattr(options, name)
        if value:
            lines.append(f"--{name}={value}")
    if spec.time_limit:
        lines.append(f"--time={slurm_time(spec.time_limit)}")
    cpus = options.cpus_per_task
    if cpus is None and spec.resources.cpus:
        cpus = max(1, math.ceil(spec.resources.cpus / tasks_per_node))
    if cpus:
        lines.append(f"--cpus-per-task={cpus}")
    if spec.resources.memory_mb:
        lines.append(f"--mem={spec.resources.memory_mb}M")
    gpus = (options.gpus_per_node if options.gpus_per_node is not None
            else spec.resources.whole_gpus("slurm"))
    if gpus and not options.gres:
        lines.append(f"--gpus-per-node={gpus}")
    if options.exclusive:
        lines.append("--exclusive")
    if options.requeue is not None:
        lines.append("--requeue" if options.requeue else "--no-requeue")
    if spec.priority < 0:
        lines.append(f"--nice={-spec.priority}")
    lines.extend(options.extra_sbatch)
    for line in lines:
        if "\n" in line or "\r" in line:
            raise SpecError([("slurm", line, "#SBATCH values must not contain newlines")])
    return lines


def _container(spec: JobSpec, options: SlurmOptions) -> tuple[list[str], list[str]]:
    """(srun flags, command prefix) for the container runtime."""
    if options.container == "none":
        return [], []
    if not spec.image:
        raise SpecError([("image", None, f"container={options.container!r} needs an image")])
    if options.container == "pyxis":
        flags = [f"--container-image={spec.image}"]
        if options.container_mounts:
            flags.append("--container-mounts=" + ",".join(options.container_mounts))
        return flags, []
    prefix = ["apptainer", "exec"]
    for mount in options.container_mounts:
        prefix += ["--bind", mount]
    return [], [*prefix, spec.image]


def render(spec: JobSpec, *, job_id: str, run_dir: str, workdir: str,
           options: SlurmOptions, python: str) -> SlurmPlan:
    code_dir = f"{run_dir}/code" if options.snapshot else workdir
    spec, rewrites = _entry_in_snapshot(spec, workdir, code_dir, options.snapshot)
    per_node = spec.launcher in ("torchrun", "deepspeed")
    in_allocation_mpirun = spec.launcher == "mpirun" and options.mpi_mode == "mpirun"
    tasks_per_node = 1 if per_node else spec.procs_per_node
    log_dir = f"{run_dir}/logs"
    ctx = NodeContext(
        node_rank=0, hosts=tuple(f"node{i}" for i in range(spec.nodes)), master_port=0,
        rdzv_id=job_id, run_dir=run_dir, job_id=job_id, backend="slurm", python=python,
        log_dir=LOG_DIR, node_rank_ref=NODE_ID, master_addr_ref=MASTER_ADDR,
        master_port_ref=MASTER_PORT,
    )
    launch = get_launcher("none" if spec.launcher == "mpirun" and not in_allocation_mpirun
                          else spec.launcher).render_node(spec, ctx)
    env: dict[str, Any] = dict(launch.processes[0].env) if launch.processes else {}
    for runtime in ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                    "MASTER_PORT", "CORRAL_HOSTS", "CORRAL_LOG_DIR", "CORRAL_HOSTFILE"):
        env.pop(runtime, None)
    env["CORRAL_BACKEND"] = "slurm"

    out = ["#!/bin/bash", f"# corral job {job_id}: rendered by corral, submitted as is"]
    lines = _sbatch_lines(spec, options, tasks_per_node, log_dir, code_dir, job_id)
    out += [f"#SBATCH {line}" for line in lines]
    out += ["set -eu", ""]
    out += [f"export {key}={shell.quote(str(value))}" for key, value in env.items()]
    if "OMP_NUM_THREADS" not in spec.env:  # the thread cap of the local backend, here too
        out.append(f"threads=$(( ${{SLURM_CPUS_ON_NODE:-1}} / {spec.procs_per_node} ))")
        out.append("export OMP_NUM_THREADS=$(( threads > 0 ? threads : 1 ))")
    if in_allocation_mpirun:  # as the local backend allows it: mpirun refuses root otherwise
        out.append("export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1")
    out += [
        f"export CORRAL_LOG_DIR={shell.quote(log_dir)}"
        '"${SLURM_ARRAY_TASK_ID:+/array-$SLURM_ARRAY_TASK_ID}"',
        'mkdir -p "$CORRAL_LOG_DIR"',
        'srun_logs="${CORRAL_LOG_DIR//%/%%}"',
        'hosts=$(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'export MASTER_ADDR=$(printf "%s\\n" $hosts | head -n 1)',
        f"export MASTER_PORT=$(( {PORT_BASE} + SLURM_JOB_ID % {PORT_BLOCKS} * {PORT_BLOCK} ))",
        'export CORRAL_HOSTS=$(printf "%s\\n" $hosts | paste -sd, -)',
        'export CORRAL_HOSTFILE="$CORRAL_LOG_DIR/hostfile"',
        f'printf "%s slots={spec.procs_per_node}\\n" $hosts > "$CORRAL_HOSTFILE"',
        "",
    ]
    srun_flags, prefix = _container(spec, options)
    sampling = options.profile_seconds > 0 and options.container == "none"
    if sampling:  # each node's share of the job, sampled beside it (runtime/sampler.py)
        out += [f"export CORRAL_PROFILE_SECONDS={options.profile_seconds:g}",
                shell.join(["srun", "--overlap", "--ntasks-per-node=1", "--output=/dev/null",
                            python, "-m", "corral.runtime.sampler"]) + " &",
                "sampler=$!"]
    srun = ["srun", "--kill-on-bad-exit=1", f"--ntasks-per-node={tasks_per_node}",
            f"--output={SRUN_LOG_DIR}/node-%n.log", *srun_flags]
    if in_allocation_mpirun:
        (proc,) = launch.processes
        argv = [a.replace(ctx.hostfile, "\x00CORRAL_HOSTFILE\x00") for a in proc.argv]
        out.append(shell.join([*prefix, *argv]) + ' >>"$CORRAL_LOG_DIR/node-0.log" 2>&1')
    elif per_node:
        (proc,) = launch.processes
        node_cmd = shell.join(proc.argv)
        out.append(shell.join([*srun, *prefix, "sh", "-c",
                               _NODE_FROM_SLURM.replace('"$@"', node_cmd), "corral-node"]))
    else:
        if spec.launcher == "mpirun":
            srun.append(f"--mpi={options.srun_mpi}")
        program = launch.processes[0].argv  # the same for every rank, shim included
        out.append(shell.join([*srun, *prefix, "sh", "-c", _RANK_FROM_SLURM, SHIM_NAME,
                               *program]))
    if sampling:
        out[-1] += " && status=0 || status=$?"
        out += ['kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true',
                'exit "$status"']
    notes = []
    if spec.time_limit and spec.time_limit % 60:
        notes.append(f"time limit {spec.time_limit:g}s becomes --time="
                     f"{slurm_time(spec.time_limit)}: Slurm counts whole minutes")
    return SlurmPlan(job_id=job_id, run_dir=run_dir, workdir=workdir, code_dir=code_dir,
                     script="\n".join(out) + "\n", entry_rewrites=rewrites,
                     notes=tuple(notes))


def _entry_in_snapshot(spec: JobSpec, workdir: str, code_dir: str,
                       snapshot: bool) -> tuple[JobSpec, dict[str, str]]:
    """A script given by an absolute path inside the working directory runs from the copy."""
    from corral.spec import Script

    entry = spec.entrypoint
    if not snapshot or not isinstance(entry, Script) or not entry.path.startswith("/"):
        return spec, {}
    prefix = workdir.rstrip("/") + "/"
    if not entry.path.startswith(prefix):
        return spec, {}
    moved = code_dir + "/" + entry.path[len(prefix):]
    return spec.replace(entrypoint=Script(path=moved)), {entry.path: moved}
