"""The founding document's flow: start -> train (a gang of 2 nodes, torchrun) -> end.

    corral flow run examples/flows/mingpt_flow.py --steps 200
    corral flow run examples/flows/mingpt_flow.py -o ... --backend slurm   # the same on Slurm

Each step is a corral job; ``train`` is one job of ``nodes`` nodes, each running torchrun
for its node through ``current.launch``. Rank 0's loss curve becomes the ``losses``
artifact: ``Flow("MinGPTFlow").latest_run["end"].task.data.losses``.
"""

import re
import tempfile
from pathlib import Path

from corral.flow import FlowSpec, Parameter, current, resources, step

TRAIN = str(Path(__file__).resolve().parents[1] / "mingpt" / "train.py")
LOSS_LINE = re.compile(r"step (\d+) loss ([0-9.]+) val ([0-9.]+)")


class MinGPTFlow(FlowSpec):
    steps = Parameter("steps", default=200, help="optimizer steps")
    nodes = Parameter("nodes", default=2, help="nodes of the training gang")
    procs_per_node = Parameter("procs_per_node", default=1, help="ranks per node")

    @step
    def start(self):
        self.checkpoints = tempfile.mkdtemp(prefix="mingpt-flow-")
        self.next(self.train, num_parallel=self.nodes)

    @resources(cpus=1)
    @step
    def train(self):
        lines = current.launch(TRAIN, procs_per_node=self.procs_per_node, args=[
            "--steps", str(self.steps), "--no-resume", "--eval-every", "50",
            "--checkpoint-dir", self.checkpoints])
        self.losses = [(int(m[1]), float(m[2]), float(m[3]))
                       for m in map(LOSS_LINE.search, lines) if m]
        self.node = current.parallel.node_index
        self.next(self.join)

    @step
    def join(self, inputs):
        self.losses = next(i.losses for i in inputs if i.losses)  # rank 0's node prints them
        self.nodes_done = sorted(i.node for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        first, last = self.losses[0], self.losses[-1]
        print(f"loss {first[1]:.4f} at step {first[0]} -> {last[1]:.4f} at step {last[0]}")
