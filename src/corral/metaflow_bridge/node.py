"""One node of a bridged Metaflow gang: ``python -m corral.metaflow_bridge.node ARGV_JSON``.

Started by corral on every node of the job, it turns the launcher's own command line (Metaflow's
``step`` command for the control task) into this node's task and replaces itself with it:
node 0 runs the control task, node N the worker task ``<control>_node_N``, as Metaflow's local
runtime names them. Standard library only; it must start fast on every node.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

WORKER_CONTEXT = "ubf_task"  # metaflow.unbounded_foreach.UBF_TASK
RUNTIME_NAME = "corral"  # METAFLOW_RUNTIME_ENVIRONMENT: not "local", so @parallel forks nothing


def worker_task_id(control_task_id: str, node: int) -> str:
    return f"{control_task_id}_node_{node}"


def option(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` in ``argv`` (the last one given), or None."""
    found = None
    for index, word in enumerate(argv[:-1]):
        if word == name:
            found = argv[index + 1]
    return found


def with_options(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """``argv`` with each ``--name VALUE`` of ``values`` replaced (or added at the end)."""
    out = list(argv)
    missing = dict(values)
    for index, word in enumerate(out[:-1]):
        if word in values:
            out[index + 1] = values[word]
            missing.pop(word, None)
    for name, value in missing.items():
        out += [name, value]
    return out


def node_command(step_argv: Sequence[str], node: int) -> list[str]:
    """Metaflow's ``step`` command for this node of the gang (node 0: unchanged)."""
    if node == 0:
        return list(step_argv)
    control = option(step_argv, "--task-id")
    if control is None:
        raise SystemExit("corral: the step command has no --task-id")
    return with_options(step_argv, {
        "--task-id": worker_task_id(control, node),
        "--split-index": str(node),
        "--ubf-context": WORKER_CONTEXT,
    })


def gang_environment(env: Mapping[str, str], step_argv: Sequence[str]) -> dict[str, str]:
    """What Metaflow's ``current.parallel`` reads, from what corral gives every node."""
    node = int(env.get("NODE_RANK", "0"))
    return {
        "METAFLOW_RUNTIME_ENVIRONMENT": RUNTIME_NAME,
        "MF_PARALLEL_NODE_INDEX": str(node),
        "MF_PARALLEL_NUM_NODES": env.get("CORRAL_NUM_NODES", "1"),
        "MF_PARALLEL_MAIN_IP": env.get("MASTER_ADDR", "127.0.0.1"),
        "MF_PARALLEL_CONTROL_TASK_ID": option(step_argv, "--task-id") or "",
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1:
        raise SystemExit("usage: python -m corral.metaflow_bridge.node ARGV_JSON")
    step_argv = json.loads(args[0])
    os.environ.update(gang_environment(os.environ, step_argv))
    command = node_command(step_argv, int(os.environ["MF_PARALLEL_NODE_INDEX"]))
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
