"""A gang step whose node 1 fails on its first attempt only: @retry reruns the whole gang
as a new corral job."""

from metaflow import FlowSpec, corral, current, parallel, retry, step


class RetryFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @corral
    @retry(times=1, minutes_between_retries=0)
    @parallel
    @step
    def train(self):
        self.node = current.parallel.node_index
        if self.node == 1 and current.retry_count == 0:
            raise RuntimeError("first attempt fails")
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes = sorted(i.node for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        print("nodes", self.nodes)

if __name__ == "__main__":
    RetryFlow()
