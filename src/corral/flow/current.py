"""``current``: what a running task knows about itself, and ``current.launch`` for gangs.

Inside a gang step (``self.next(self.train, num_parallel=N)``) the step is one corral job
of N nodes with one task process per node. ``current.parallel`` says which node this is;
``current.launch("main.py", procs_per_node=8)`` starts the program on this node with
corral's launcher (torchrun by default) wired to the other nodes' launches, and raises if
any rank fails, naming the first failing rank.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from corral.errors import CorralError


class LaunchFailed(CorralError):
    """A program started by ``current.launch`` failed on one of its ranks."""


@dataclass(frozen=True)
class Parallel:
    """This task's place in its gang."""

    node_index: int
    num_nodes: int
    main_ip: str
    main_port: int
    hosts: tuple[str, ...]

    @classmethod
    def of_this_node(cls) -> Parallel:
        """This node's place, from what corral gives every process of a job."""
        from corral.environment import env

        here = env()
        return cls(here.node_rank, here.num_nodes, here.master_addr, here.master_port,
                   here.hosts or (here.master_addr,))


class Current:
    """Set by the task runner before the step runs; read by the user's step code."""

    def __init__(self) -> None:
        self.flow_name: str | None = None
        self.run_id: str | None = None
        self.step_name: str | None = None
        self.task_id: str | None = None
        self.retry_count = 0
        self.parallel: Parallel | None = None
        self.parameters: dict[str, Any] = {}
        self.procs_per_node: int | None = None  # the step's @corral(...) defaults
        self.launcher: str | None = None

    def _set(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    @property
    def is_parallel(self) -> bool:
        return self.parallel is not None and self.parallel.num_nodes > 1

    def launch(self, program: str | Sequence[str], procs_per_node: int | None = None,
               args: Sequence[str] = (), launcher: str | None = None,
               env: dict[str, str] | None = None) -> list[str]:
        """Run ``program`` (a .py file, ``-m module``, or an argv) with ``procs_per_node``
        ranks on each node of this gang, through corral's ``launcher`` (defaults: the
        step's ``@corral(procs_per_node=, launcher=)``, else 1 and torchrun); the lines
        this node's ranks printed (they also go to the step's log)."""
        procs_per_node = procs_per_node or self.procs_per_node or 1
        launcher = launcher or self.launcher or "torchrun"
        from corral.environment import env as job_env
        from corral.launchers import NodeContext, get_launcher
        from corral.launchers.failures import first_failure
        from corral.spec import JobSpec

        here = job_env()
        parallel = self.parallel or Parallel(0, 1, "127.0.0.1", here.master_port,
                                             ("127.0.0.1",))
        if isinstance(program, str):
            entry: dict[str, Any] = ({"kind": "module", "module": program[3:].strip()}
                                     if program.startswith("-m ") else
                                     {"kind": "script", "path": program}
                                     if program.endswith(".py") else
                                     {"kind": "command", "argv": [program]})
        else:
            entry = {"kind": "command", "argv": list(program)}
        spec = JobSpec(name=f"{self.step_name or 'step'}-launch", entrypoint=entry,
                       args=tuple(args), nodes=parallel.num_nodes,
                       procs_per_node=procs_per_node, launcher=launcher, env=env or {})
        ctx = NodeContext(
            node_rank=parallel.node_index, hosts=parallel.hosts or (parallel.main_ip,),
            master_port=parallel.main_port, rdzv_id=f"{self.run_id}-{self.step_name}",
            run_dir=here.run_dir or ".", job_id=here.job_id or "flow",
            backend=here.backend or "local", python=sys.executable)
        import os

        processes = []
        for proc in get_launcher(launcher).render_node(spec, ctx).processes:
            processes.append(subprocess.Popen(
                list(proc.argv), env={**os.environ, **proc.env}, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        output: list[str] = []
        for process in processes:
            assert process.stdout is not None
            for line in process.stdout:
                sys.stdout.write(line)
                output.append(line)
            process.wait()
        sys.stdout.flush()
        codes = [p.returncode for p in processes]
        if any(codes):
            found = first_failure(launcher, "".join(output))
            where = (f"rank {found.rank} failed with exit code {found.returncode}" if found
                     else f"exit code {next(c for c in codes if c)}")
            print(f"corral: {launcher} on node {parallel.node_index}: {where}", flush=True)
            raise LaunchFailed(f"{launcher} on node {parallel.node_index}: {where}")
        return output


current = Current()
