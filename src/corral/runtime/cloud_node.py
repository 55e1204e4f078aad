"""What every node of a cloud batch job runs: ``python3 -m corral.runtime.cloud_node SERVICE``.

The same command on every node of an AWS Batch multi-node parallel job, a SageMaker training
job, a GCP Batch task group or an Azure Batch multi-instance task. The node:

1. reads the job's description (:mod:`corral.runtime.cloud_job`) from ``$CORRAL_JOB``, or
   from the file or URL given by ``--job`` (SageMaker: a file of its input channel);
2. learns where it stands from the service (:mod:`corral.runtime.cloud_env`): its node rank,
   the number of nodes, the rendezvous address;
3. fetches and unpacks the code package and a function's payload, when shipped;
4. renders its own processes with the job's launcher (torchrun, jax, ray... with
   ``NODE_RANK`` and ``MASTER_ADDR`` from step 2), and runs them through corral's node agent,
   relaying every rank's lines to its output labelled ``[rank N]`` (the service keeps that
   output: CloudWatch, Cloud Logging, the task's stdout file);
5. when a rank fails, stops the node's other ranks and exits with that rank's code, after a
   ``[corral] rank N exited with code C at T`` line that the backend reads to name it.

``CORRAL_NODE_RUN_DIR`` and ``CORRAL_NODE_WORKDIR`` move this node's run directory and the
folder its code package unpacks into (emulated nodes on one machine each need their own; on a
service every container has its own file system).
"""

from __future__ import annotations

import os
import sys
from typing import IO

from corral.runtime import pod
from corral.runtime.cloud_env import SERVICES, NodePlace, NodePlaceError, place
from corral.runtime.cloud_job import ENV_VAR, NodeJob, NodeJobError


def read_job(source: str | None, env: dict[str, str]) -> NodeJob:
    """The description: ``--job PATH|URL``, else ``$CORRAL_JOB``, else the file at
    ``$CORRAL_JOB_URL`` (a description too large for an environment variable)."""
    if not source and not env.get(ENV_VAR):
        source = env.get(f"{ENV_VAR}_URL") or None
    if source:
        if "://" in source:
            import tempfile

            folder = tempfile.mkdtemp(prefix="corral-job-")
            source = pod.fetch(source, os.path.join(folder, "job.json"))
        try:
            with open(source, encoding="utf-8") as handle:
                return NodeJob.decode(handle.read())
        except OSError as exc:
            raise NodeJobError(f"cannot read the job description {source}: {exc}") from None
    text = env.get(ENV_VAR, "")
    if not text:
        raise NodeJobError(f"${ENV_VAR} is not set and no --job was given: this command is "
                           "started by corral's cloud backends, which set one of them")
    return NodeJob.decode(text)


def node_process_plan(job: NodeJob, where: NodePlace, run_dir: str) -> dict[str, object]:
    """This node's processes, rendered here with the job's launcher."""
    from corral.launchers import NodeContext
    from corral.launchers.nodeplan import node_entry
    from corral.runtime.cloud_job import function_runner
    from corral.spec import JobSpec

    data = dict(job.spec)
    if (data.get("entrypoint") or {}).get("kind") == "function":
        data["entrypoint"] = {"kind": "command",
                              "argv": function_runner(job.python, run_dir)}
    spec = JobSpec.model_validate(data)
    if spec.nodes != where.num_nodes:
        raise NodePlaceError(f"the job has {spec.nodes} node(s) but {where.service} started "
                             f"{where.num_nodes}")
    ctx = NodeContext(
        node_rank=where.node_rank, hosts=where.hosts, master_port=job.master_port,
        rdzv_id=job.job_id, run_dir=run_dir, job_id=job.job_id, backend=where.service,
        python=job.python, log_dir=None if spec.launcher == "none" else f"{run_dir}/logs")
    return node_entry(spec, ctx)


def fetched(url: str | None, folder: str, name: str) -> str | None:
    """A shipped file, local to this node: fetched (fsspec) when it is a URL."""
    if not url:
        return None
    if "://" in url and not url.startswith("file://"):
        return pod.fetch(url, os.path.join(folder, name))
    return url.removeprefix("file://")


def main(argv: list[str] | None = None, out: IO[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = out or sys.stdout
    if not args or args[0] not in SERVICES:
        sys.stderr.write(f"usage: python -m corral.runtime.cloud_node "
                         f"{{{','.join(SERVICES)}}} [--job PATH|URL]\n")
        return 2
    service, rest = args[0], args[1:]
    source = rest[1] if len(rest) >= 2 and rest[0] == "--job" else None
    env = dict(os.environ)
    try:
        job = read_job(source, env)
        where = place(service, env)
        run_dir = env.get("CORRAL_NODE_RUN_DIR") or job.run_dir
        log_dir = f"{run_dir}/logs"
        os.makedirs(run_dir, exist_ok=True)
        package = fetched(job.package_url, run_dir, "code.tar.gz")
        payload = fetched(job.payload_url, run_dir, "function.pkl")
        node = node_process_plan(job, where, run_dir)
    except (NodeJobError, NodePlaceError) as exc:
        pod.say(out, f"node cannot start: {exc}")
        return 2
    workdir = env.get("CORRAL_NODE_WORKDIR") or job.workdir
    pod.prepare(run_dir, log_dir, workdir, package, payload)
    pod.say(out, f"{service} node {where.service_index} is corral node {where.node_rank} of "
            f"{where.num_nodes}; rendezvous at {where.master_addr}:{job.master_port}")
    return pod.run_node(where.node_rank, where.num_nodes, node, run_dir=run_dir,
                        log_dir=log_dir, workdir=workdir, grace=job.grace, out=out)


if __name__ == "__main__":
    sys.exit(main())
