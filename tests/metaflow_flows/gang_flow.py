"""A Metaflow flow whose gang step runs through corral: the test of corral's Metaflow bridge.

Plain Metaflow, plus ``@corral`` on the ``num_parallel`` step. Node ``fail_node`` (if >= 0)
raises after printing, to check that a failed worker fails the step.
"""

import os

from metaflow import FlowSpec, Parameter, corral, current, parallel, step


class GangFlow(FlowSpec):
    fail_node = Parameter("fail_node", default=-1, type=int)

    @step
    def start(self):
        self.greeting = "hello"
        self.next(self.train, num_parallel=2)

    @corral
    @parallel
    @step
    def train(self):
        node = current.parallel.node_index
        self.node = node
        self.num_nodes = current.parallel.num_nodes
        self.corral_job = os.environ.get("CORRAL_JOB_ID")
        self.pid = os.getpid()
        print(f"worker output from node {node} of {self.num_nodes}", flush=True)
        if node == self.fail_node:
            raise RuntimeError(f"node {node} fails on purpose")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(inp.node for inp in inputs)
        self.jobs = sorted({inp.corral_job for inp in inputs})
        self.pids = sorted({inp.pid for inp in inputs})
        self.next(self.end)

    @step
    def end(self):
        print("nodes", self.nodes)


if __name__ == "__main__":
    GangFlow()
