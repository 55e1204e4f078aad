"""``mpirun``: one mpirun on the first node starts every rank from a hostfile.

Ranks are placed by slot (``--map-by slot``), so rank r runs on node r // procs_per_node
as local rank r % procs_per_node; the rank shim derives the torch-style variables from
that, on Open MPI and on MPICH alike.
"""

from __future__ import annotations

from corral.launchers.base import (
    NodeContext,
    NodeLaunch,
    ProcessLaunch,
    hostfile_text,
    job_env,
    program_argv,
    rank_shim,
)
from corral.spec import JobSpec

_DERIVE = {
    "openmpi": 'RANK="$OMPI_COMM_WORLD_RANK"; ',
    "mpich": 'RANK="$PMI_RANK"; ',
}
_COMMON = (
    'export RANK LOCAL_RANK="$((RANK % LOCAL_WORLD_SIZE))" '
    'NODE_RANK="$((RANK / LOCAL_WORLD_SIZE))" GROUP_RANK="$((RANK / LOCAL_WORLD_SIZE))"; '
)
# MPICH's hydra stops the other ranks when one dies by a signal, but waits for them when
# one merely exits non-zero. So under MPICH the shim stays the rank's parent: on a
# non-zero exit it reports the rank to hydra's output (fd 3) and kills itself, which
# makes hydra clean up. Open MPI stops the others on any non-zero exit by itself.
_MPICH_SAVE_STDERR = "exec 3>&2; "
_MPICH_TAIL = (
    '"$@"; rc=$?; if [ "$rc" -ne 0 ]; then '
    'echo "corral: rank $RANK exited with code $rc" >&3; kill -KILL $$; fi; exit 0'
)


class MpirunLauncher:
    name = "mpirun"

    def render_node(self, spec: JobSpec, ctx: NodeContext) -> NodeLaunch:
        flavor = spec.mpi
        files = {ctx.hostfile: hostfile_text(ctx.hosts, spec.procs_per_node, flavor)}
        if ctx.node_rank != 0:
            return NodeLaunch(ctx.node_rank, (), files=files)
        env = job_env(spec, ctx)
        names = sorted(env)
        if flavor == "mpich":
            head: tuple[str, ...] = (
                "mpiexec.hydra", "-n", str(spec.world_size), "-f", ctx.hostfile,
                "-envlist", ",".join(names),
            )
        else:
            exports = tuple(x for name in names for x in ("-x", name))
            head = (
                "mpirun", "-np", str(spec.world_size), "--hostfile", ctx.hostfile,
                "--map-by", "slot", *exports,
            )
        derive = _DERIVE[flavor] + _COMMON
        if flavor == "mpich":
            shim = rank_shim(ctx, derive + _MPICH_SAVE_STDERR)
            shim = (*shim[:2], shim[2].replace('exec "$@"', _MPICH_TAIL), *shim[3:])
        else:
            shim = rank_shim(ctx, derive)
        argv = (*head, *spec.launcher_args, *shim, *program_argv(spec, ctx))
        launch = ProcessLaunch(argv, env, log_name=f"node-{ctx.node_rank}.log")
        return NodeLaunch(0, (launch,), files=files, ranks=tuple(range(spec.world_size)))
