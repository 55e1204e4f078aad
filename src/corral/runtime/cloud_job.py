"""The job as the nodes of a cloud batch service get it: one small, versioned description that
every node's container reads, whatever service started it.

The submitting machine cannot render the nodes' processes, because the rendezvous address
is known only on the nodes (AWS Batch tells children the main node's address when they
start; GCP and Azure write their host lists then). So it sends the job spec itself, and each
node renders its own processes with the launcher once it knows where it stands
(:mod:`corral.runtime.cloud_node`). The description travels in one environment variable
(``CORRAL_JOB``: compressed, base64) or, where the service allows only short values
(SageMaker), as a file beside the code package.
"""

from __future__ import annotations

import base64
import json
import zlib
from dataclasses import asdict, dataclass
from typing import Any

from corral.errors import NodeStartError

VERSION = 1
ENV_VAR = "CORRAL_JOB"
PREFIX = "z1:"


# Launchers a cloud node can run: they need the rendezvous address only, or every node's
# address where the service gives them all (SageMaker, GCP Batch, Azure Batch; AWS Batch tells
# a child the main node's address alone). mpirun and deepspeed start remote ranks through a
# remote shell, and Ray keeps a per-job token in a run directory the nodes share.
MASTER_ONLY_LAUNCHERS = ("none", "torchrun", "jax")
ALL_HOSTS_LAUNCHERS = (*MASTER_ONLY_LAUNCHERS, "tensorflow")


def launcher_problem(launcher: str, service: str, accepted: tuple[str, ...]
                     ) -> tuple[str, str, str] | None:
    """A spec problem (field, value, what is accepted) for a launcher ``service``'s nodes
    cannot run, or None."""
    if launcher in accepted:
        return None
    why = ["mpirun and deepspeed start remote ranks through a remote shell",
           "Ray needs a run directory the nodes share"]
    if "tensorflow" not in accepted:
        why.insert(0, f"tensorflow needs every node's address, and a node on {service} knows "
                   "only the rendezvous node's")
    return ("launcher", launcher, f"accepted on {service}: {', '.join(accepted)} "
            f"({'; '.join(why)})")


class NodeJobError(NodeStartError):
    """A job description that this corral cannot read."""


@dataclass(frozen=True)
class NodeJob:
    job_id: str
    spec: dict[str, Any]  # JobSpec JSON; a function's entrypoint is its runner (see for_spec)
    run_dir: str  # in the container
    workdir: str  # where the code is: the image's folder, or where the package unpacks
    master_port: int = 29500
    python: str = "python3"
    package_url: str | None = None  # code.tar.gz: s3://... (fsspec) or a path in the container
    payload_url: str | None = None  # a distributed function's pickle, likewise
    grace: float = 10.0  # seconds between SIGTERM and SIGKILL when the node is stopped
    version: int = VERSION

    def encode(self) -> str:
        data = json.dumps(asdict(self), separators=(",", ":"), sort_keys=True).encode()
        return PREFIX + base64.urlsafe_b64encode(zlib.compress(data, 9)).decode()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_data(cls, data: Any) -> NodeJob:
        if not isinstance(data, dict):
            raise NodeJobError(f"the job description is {type(data).__name__}, not an object")
        if data.get("version") != VERSION:
            raise NodeJobError(f"the job description is version {data.get('version')!r}; this "
                               f"corral reads version {VERSION}: install the same corral "
                               "version in the image as on the submitting machine")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise NodeJobError(f"the job description is incomplete: {exc}") from None

    @classmethod
    def decode(cls, text: str) -> NodeJob:
        text = text.strip()
        try:
            if text.startswith(PREFIX):
                raw = zlib.decompress(base64.urlsafe_b64decode(text[len(PREFIX):]))
                return cls.from_data(json.loads(raw))
            return cls.from_data(json.loads(text))
        except (ValueError, zlib.error) as exc:
            raise NodeJobError(f"cannot read the job description: {exc}") from None


def function_runner(python: str, run_dir: str) -> list[str]:
    """What a distributed function's rank runs: corral's caller on the shipped payload."""
    return [python, "-m", "corral.runtime.call", f"{run_dir}/function.pkl"]
