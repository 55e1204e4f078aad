"""Gang steps: a fixed number of nodes, and a number given by an expression."""

from corral.flow import FlowSpec, step


class GangFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @step
    def train(self):
        self.next(self.train_join)

    @step
    def train_join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class GangExprFlow(FlowSpec):
    @step
    def start(self):
        self.nodes = 4
        self.next(self.train, num_parallel=self.nodes)

    @step
    def train(self):
        self.next(self.train_join)

    @step
    def train_join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
