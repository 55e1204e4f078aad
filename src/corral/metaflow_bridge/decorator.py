"""``@corral``: a Metaflow step decorator that runs the step as a corral job.

It works at three moments, in three processes:

* in the Metaflow runtime, :meth:`CorralDecorator.runtime_step_cli` turns the task's command
  into ``flow.py corral step ...`` (:mod:`corral.metaflow_bridge.cli`), which runs the job;
* in each node's task, :meth:`CorralDecorator.task_pre_step` tells Metaflow which tasks make
  up the gang, sets ``current.corral`` and, for ``@torchrun``, ``current.torch``
  (:mod:`corral.metaflow_bridge.gang`);
* in the control task, :meth:`CorralDecorator.task_decorate` waits for every worker task to
  succeed, so that a gang step is never recorded as successful when one of its workers
  failed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from metaflow.decorators import StepDecorator
from metaflow.exception import MetaflowException
from metaflow.unbounded_foreach import UBF_CONTROL

from corral.metaflow_bridge.node import worker_task_id

WORKER_POLL_SECONDS = 0.2
GANG_STOP_GRACE = 60.0  # for corral to stop the gang after a worker failed


class CorralBridgeError(MetaflowException):  # type: ignore[misc]
    headline = "corral"


def under_corral() -> bool:
    """True inside a node of a bridged step (set by :mod:`corral.metaflow_bridge.node`)."""
    return os.environ.get("METAFLOW_RUNTIME_ENVIRONMENT") == "corral" and \
        "CORRAL_JOB_ID" in os.environ


class CorralDecorator(StepDecorator):  # type: ignore[misc]
    """Run this step as a corral job; a ``num_parallel`` step as one gang of N nodes.

    ``backend``: a corral backend (``local``, ``slurm``, ``kubernetes``); ``options``: that
    backend's options (as ``corral run -o``); ``cpu``, ``memory`` (MB) and ``gpu`` per node
    (default: a ``@resources`` decorator's values, if the step has one); ``time_limit`` in
    seconds; ``env``: extra environment variables for the step's processes;
    ``procs_per_node`` and ``launcher``: the defaults of ``current.corral.launch(...)``.
    """

    name = "corral"
    defaults: dict[str, Any] = {
        "backend": "local",
        "options": None,
        "cpu": None,
        "memory": None,
        "gpu": None,
        "time_limit": None,
        "env": None,
        "procs_per_node": None,
        "launcher": None,
    }

    def step_init(self, flow: Any, graph: Any, step_name: str, decorators: list[Any],
                  environment: Any, flow_datastore: Any, logger: Any) -> None:
        from corral.errors import CorralError
        from corral.metaflow_bridge.settings import step_settings

        self.flow_datastore = flow_datastore
        self.step_decorators = decorators
        try:  # a bad value fails here, before anything runs
            step_settings(self.attributes, decorators)
        except CorralError as exc:
            raise CorralBridgeError(f"@corral on step {step_name}: {exc}") from None

    def runtime_step_cli(self, cli_args: Any, retry_count: int, max_user_code_retries: int,
                         ubf_context: str | None) -> None:
        if retry_count <= max_user_code_retries:  # a @catch fallback runs here, not in a job
            cli_args.commands = ["corral", "step"]

    def task_pre_step(self, step_name: str, task_datastore: Any, metadata: Any, run_id: str,
                      task_id: str, flow: Any, graph: Any, retry_count: int,
                      max_user_code_retries: int, ubf_context: str | None,
                      inputs: Any) -> None:
        self.retry_count = retry_count
        if not under_corral():
            return
        from metaflow import current

        from corral.metaflow_bridge.gang import gang_current

        gang = gang_current(run_id, step_name, task_id, retry_count,
                            self.attributes.get("procs_per_node"),
                            self.attributes.get("launcher"))
        current._update_env({"corral": gang})
        for deco in self.step_decorators:
            adapt_gang_decorator(deco, gang)
        nodes = int(os.environ.get("MF_PARALLEL_NUM_NODES", "1"))
        if ubf_context == UBF_CONTROL and nodes > 1:
            flow._control_mapper_tasks = [
                f"{run_id}/{step_name}/{tid}"
                for tid in [task_id, *(worker_task_id(task_id, n) for n in range(1, nodes))]]
            flow._control_task_is_mapper_zero = True

    def task_decorate(self, step_func: Callable[[], None], flow: Any, graph: Any,
                      retry_count: int, max_user_code_retries: int,
                      ubf_context: str | None) -> Callable[[], None]:
        nodes = int(os.environ.get("MF_PARALLEL_NUM_NODES", "1"))
        if not (under_corral() and ubf_context == UBF_CONTROL and nodes > 1):
            return step_func
        from metaflow import current

        def control_step() -> None:
            step_func()
            self._wait_for_workers(current.run_id, current.step_name, current.task_id, nodes)

        return control_step

    def _wait_for_workers(self, run_id: str, step_name: str, task_id: str,
                          nodes: int) -> None:
        """Return once every worker task has succeeded.

        A worker that fails (or dies) fails corral's job, which stops this process too, and
        corral's summary names the worker's rank; so a failed worker is waited on for
        :data:`GANG_STOP_GRACE` seconds before this task fails by itself.
        """
        waiting = {n: worker_task_id(task_id, n) for n in range(1, nodes)}
        while waiting:
            for node, worker in list(waiting.items()):
                outcome = _task_outcome(self.flow_datastore, run_id, step_name, worker,
                                        self.retry_count)
                if outcome is None:
                    continue
                if not outcome:
                    time.sleep(GANG_STOP_GRACE)
                    raise CorralBridgeError(
                        f"worker task {worker} (node {node} of the gang) failed, so step "
                        f"{step_name} fails")
                del waiting[node]
            if waiting:
                time.sleep(WORKER_POLL_SECONDS)


def adapt_gang_decorator(deco: Any, gang: Any) -> None:
    """Under corral, a ``@torchrun`` step's ``current.torch`` runs through corral's
    torchrun launcher (see :mod:`corral.metaflow_bridge.gang` for why)."""
    if getattr(deco, "name", None) != "torchrun":
        return
    from corral.metaflow_bridge.gang import TorchrunThroughCorral

    def setup_distributed_env(flow: Any) -> None:
        from metaflow import current

        nproc = int(deco.attributes.get("nproc_per_node") or 1)
        current._update_env({"torch": TorchrunThroughCorral(gang, nproc)})

    deco.setup_distributed_env = setup_distributed_env


def _task_outcome(flow_datastore: Any, run_id: str, step_name: str, task_id: str,
                  attempt: int) -> bool | None:
    """True/False once the task's attempt is done (its ``_success``); None before."""
    try:
        task = flow_datastore.get_task_datastore(run_id, step_name, task_id, attempt=attempt,
                                                 allow_not_done=True)
    except Exception:  # not created yet
        return None
    if not task.has_metadata(task.METADATA_DONE_SUFFIX):
        return None
    return bool(task["_success"]) if "_success" in task else False

