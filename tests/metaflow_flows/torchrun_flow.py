"""The founding document's Metaflow demo, through corral: ``@torchrun`` on a ``num_parallel``
gang step (metaflow-torchrun), plus ``@corral``. Each node's torchrun starts two ranks, which
all_reduce across both nodes (tests/programs/ddp_allreduce.py writes what each rank saw)."""

import os

from metaflow import FlowSpec, Parameter, corral, current, step, torchrun

PROGRAM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "programs",
                       "ddp_allreduce.py")


class TorchrunFlow(FlowSpec):
    out_dir = Parameter("out_dir", required=True)

    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @corral
    @torchrun
    @step
    def train(self):
        current.torch.run(entrypoint=PROGRAM, entrypoint_args=[self.out_dir],
                          nproc_per_node=2)
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TorchrunFlow()
