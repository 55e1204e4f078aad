"""A gang step: 2 nodes x 2 ranks of torchrun through current.launch; all_reduce checked.
With --fail-rank R (and the marker file OUT/fail present) rank R exits 1."""

import os
from pathlib import Path

from corral.flow import FlowSpec, Parameter, current, step

PROGRAM = str(Path(__file__).resolve().parent / "gang_rank.py")


class GangFlow(FlowSpec):
    out = Parameter("out", type=str, required=True)
    fail_rank = Parameter("fail_rank", default=-1)

    @step
    def start(self):
        self.started_pid = os.getpid()
        self.next(self.train, num_parallel=2)

    @step
    def train(self):
        lines = current.launch(PROGRAM, procs_per_node=2, launcher="torchrun",
                               args=[self.out, str(self.fail_rank)])
        self.sums = sorted(float(line.split()[-1]) for line in lines if " sum " in line)
        self.node = current.parallel.node_index
        self.num_nodes = current.parallel.num_nodes
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(i.node for i in inputs)
        self.sums = [s for i in inputs for s in i.sums]
        self.next(self.end)

    @step
    def end(self):
        pass
