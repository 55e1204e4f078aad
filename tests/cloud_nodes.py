"""The node contract of a cloud batch service, for real: the service's rendered node command
runs on every emulated node of the local backend, as real processes, with the service's
environment and files faked for that node on loopback (the fake part: on the service, the
service provides them). The local backend gives the gang its semantics: one node failing
stops the others, and its summary names the failing node."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from corral.backends.local import LocalBackend
from corral.spec import Command, JobSpec
from corral.status import JobStatus

PROGRAMS = Path(__file__).parent / "programs"


def run_service_nodes(command: Sequence[str], node_env: dict[int, dict[str, str]],
                      folder: Path, name: str = "service-nodes",
                      timeout: float = 180) -> JobStatus:
    """Run ``command`` on len(node_env) emulated nodes, node N with ``node_env[N]`` (plus a
    run directory of its own), and return the local job's final status."""
    folder.mkdir(parents=True, exist_ok=True)
    envs = {str(n): {"CORRAL_NODE_RUN_DIR": str(folder / f"node-{n}-run"), **env}
            for n, env in node_env.items()}
    nodes_file = folder / "service-env.json"
    nodes_file.write_text(json.dumps(envs), encoding="utf-8")
    argv = [sys.executable, str(PROGRAMS / "as_service_node.py"), str(nodes_file), "--",
            *command]
    spec = JobSpec(name=name, entrypoint=Command(argv=tuple(argv)), nodes=len(node_env),
                   procs_per_node=1, launcher="none", workdir=str(folder),
                   time_limit=timeout)
    backend = LocalBackend()
    return backend.run(spec)


def node_output(status: JobStatus) -> str:
    """Every emulated node's output (what the service would keep as its log streams)."""
    lines = [text for _, text in LocalBackend().logs(status.job_id)]
    return "\n".join(lines)
