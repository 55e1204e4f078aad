"""``python -m corral.runtime.frameworks {tensorflow|jax} PROGRAM...``: one rank of a
TensorFlow or JAX job.

It runs on every rank, after the backend has set corral's variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``CORRAL_HOSTS``, ``MASTER_ADDR``, ``MASTER_PORT``), which on
Slurm are known only at run time. From them it derives what the framework reads, then runs
the program:

* **tensorflow**: ``TF_CONFIG`` with every rank as a ``worker`` (``host:port``) and this
  rank's index; worker 0 is the chief, as ``MultiWorkerMirroredStrategy`` expects.
* **jax**: ``JAX_COORDINATOR_ADDRESS`` (``MASTER_ADDR:MASTER_PORT``, served by process 0),
  ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID`` and ``JAX_LOCAL_PROCESS_ID``. JAX itself reads only
  the first from the environment, so for a Python program this module also registers a JAX
  cluster environment that reads the others, then runs the program in this process:
  ``jax.distributed.initialize()`` with no arguments works.

Ports: a job owns the ports from ``MASTER_PORT`` up (a block of
:data:`corral.ports.PORT_BLOCK`); worker ``i`` of TensorFlow listens on
``MASTER_PORT + 1 + i``, where ``i`` is the rank when the job's nodes share one host
(emulated nodes) and the local rank otherwise.
Only the standard library and corral's own small modules are imported here (and jax, for a
JAX program, which imports it anyway).
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import sys
from collections.abc import Mapping, Sequence
from types import TracebackType

from corral.environment import JobEnvironment, read_environment
from corral.ports import PORT_BLOCK


class FrameworkSetupError(SystemExit):
    pass


def _host_of(here: JobEnvironment, rank: int) -> str:
    hosts = here.hosts or (here.master_addr,)
    node = rank // max(here.local_world_size, 1)
    return hosts[node] if node < len(hosts) else here.master_addr


def worker_port(here: JobEnvironment, rank: int) -> int:
    """The port TensorFlow's worker ``rank`` listens on."""
    shared_host = len(set(here.hosts)) <= 1
    index = rank if shared_host else rank % max(here.local_world_size, 1)
    if index + 1 >= PORT_BLOCK:
        raise FrameworkSetupError(
            f"corral: tensorflow: worker {rank} would need port MASTER_PORT+{index + 1}, "
            f"beyond the job's {PORT_BLOCK} ports; run at most {PORT_BLOCK - 1} ranks per "
            "host")
    return here.master_port + 1 + index


def tf_config(here: JobEnvironment) -> dict[str, object]:
    workers = [f"{_host_of(here, r)}:{worker_port(here, r)}" for r in range(here.world_size)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": here.rank}}


def jax_environment(here: JobEnvironment) -> dict[str, str]:
    return {
        "JAX_COORDINATOR_ADDRESS": f"{here.master_addr}:{here.master_port}",
        "JAX_NUM_PROCESSES": str(here.world_size),
        "JAX_PROCESS_ID": str(here.rank),
        "JAX_LOCAL_PROCESS_ID": str(here.local_rank),
    }


def jax_local_device(environ: Mapping[str, str]) -> int | None:
    """The one GPU a JAX process keeps (JAX's ``local_device_ids``), or None for all it sees.

    The local backend already gives each rank its own GPUs (``CUDA_VISIBLE_DEVICES``), and a
    rank alone on its node keeps all of the node's; otherwise (Slurm, Kubernetes: every rank
    of a node sees all of its GPUs) local rank ``i`` keeps GPU ``i``, as JAX does by itself
    under Slurm or Open MPI. JAX applies this to GPUs only."""
    here = read_environment(environ)
    if here.local_world_size <= 1 or here.backend == "local":
        return None
    return here.local_rank


def framework_environment(framework: str, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables ``framework`` reads, for the rank whose environment is ``environ``."""
    here = read_environment(environ)
    if framework == "tensorflow":
        return {"TF_CONFIG": json.dumps(tf_config(here), separators=(",", ":"))}
    if framework == "jax":
        return jax_environment(here)
    raise FrameworkSetupError(f"corral: unknown framework {framework!r}")


def register_jax_cluster() -> None:
    """Let ``jax.distributed.initialize()`` find corral's variables (tested with jax 0.10)."""
    from jax._src import clusters

    class CorralCluster(clusters.ClusterEnv):  # type: ignore[no-untyped-call]
        name = "corral"

        @classmethod
        def is_env_present(cls) -> bool:
            return "JAX_NUM_PROCESSES" in os.environ and "CORRAL_JOB_ID" in os.environ

        @classmethod
        def get_coordinator_address(cls, timeout_secs: int | None,
                                    override_coordinator_port: str | None = None) -> str:
            return os.environ["JAX_COORDINATOR_ADDRESS"]

        @classmethod
        def get_process_count(cls) -> int:
            return int(os.environ["JAX_NUM_PROCESSES"])

        @classmethod
        def get_process_id(cls) -> int:
            return int(os.environ["JAX_PROCESS_ID"])

        @classmethod
        def get_local_process_id(cls) -> int | None:
            return jax_local_device(os.environ)

    # Registered last by __init_subclass__; first, so that it wins over a Slurm allocation's
    # own variables (which describe srun's tasks, not necessarily the job's ranks).
    registry = clusters.ClusterEnv._cluster_types
    registry.remove(CorralCluster)
    registry.insert(0, CorralCluster)


def _python_program(argv: Sequence[str]) -> tuple[str, str] | None:
    """("path", script) or ("module", name) when argv runs Python on a script or module."""
    if len(argv) >= 2 and os.path.basename(argv[0]).startswith("python"):
        if argv[1] == "-m" and len(argv) >= 3:
            return "module", argv[2]
        if not argv[1].startswith("-"):
            return "path", argv[1]
    return None


def _exit_now(code: int) -> None:
    """End a JAX process whose program failed, without waiting for the others.

    JAX's own exit handler calls ``jax.distributed.shutdown()``, which waits until every
    other process shuts down too (up to its 300 s shutdown timeout), and so does the client
    when the interpreter tears it down: a failed process would stay, and corral would not
    see it fail, while the others wait for it in a collective. Every other exit handler of
    the program still runs."""
    from jax._src import api, distributed

    if distributed.global_state.client is None:
        sys.exit(code)  # not initialized: nothing to wait for
    atexit.unregister(api.clean_up)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_python(kind: str, target: str) -> None:
    """Run the program in this process; one that fails ends it at once (:func:`_exit_now`)."""
    try:
        if kind == "module":
            runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(target)))
            runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        if exc.code is None or exc.code == 0:
            raise
        if not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        _exit_now(exc.code if isinstance(exc.code, int) else 1)
    except Exception as exc:
        tb = _program_frames(exc.__traceback__)
        sys.excepthook(type(exc), exc.with_traceback(tb), tb)
        _exit_now(1)


def _program_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the program's first frame on (without this module's or runpy's)."""
    ours = (os.path.abspath(__file__), os.path.abspath(runpy.__file__), "<frozen runpy>")
    while tb is not None and tb.tb_next is not None and (
            tb.tb_frame.f_code.co_filename in ours):
        tb = tb.tb_next
    return tb


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] not in ("tensorflow", "jax"):
        raise FrameworkSetupError(
            "usage: python -m corral.runtime.frameworks {tensorflow|jax} PROGRAM [ARGS...]")
    framework, program = args[0], args[1:]
    os.environ.update(framework_environment(framework, os.environ))
    python = _python_program(program) if framework == "jax" else None
    if python is None:
        sys.stdout.flush()
        os.execvp(program[0], program)
    register_jax_cluster()
    kind, target = python
    rest = program[3:] if kind == "module" else program[2:]
    sys.argv = [target if kind == "path" else program[0], *rest]
    _run_python(kind, target)


if __name__ == "__main__":
    main()
