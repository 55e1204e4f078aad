"""corral.flow: steps, fan-out, gang steps, artifacts and resume.

>>> from corral.flow import FlowSpec, Parameter, step, current
>>> class Train(FlowSpec):
...     lr = Parameter("lr", default=0.1)
...     @step
...     def start(self):
...         self.next(self.train, num_parallel=2)
...     @step
...     def train(self):
...         current.launch("main.py", procs_per_node=2)
...         self.next(self.join)
...     @step
...     def join(self, inputs):
...         self.next(self.end)
...     @step
...     def end(self):
...         pass

``corral flow run train_flow.py --lr 0.2`` runs it; each step is a corral job, a gang
step one job of ``num_parallel`` nodes. ``Flow("Train").latest_run["train"].task.data``
reads the artifacts back.
"""

from corral.flow.current import current
from corral.flow.spec import (
    FlowSpec,
    Parameter,
    corral,
    environment,
    resources,
    retry,
    step,
    timeout,
)

__all__ = ["Flow", "FlowSpec", "Parameter", "corral", "current", "environment", "resources",
           "retry", "step", "timeout"]


def __getattr__(name: str) -> object:
    if name == "Flow":  # the client reads the store: imported when asked for
        from corral.flow.client import Flow

        return Flow
    raise AttributeError(name)
