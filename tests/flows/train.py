"""Every kind of step: foreach, a join that branches again, a gang step, joins."""

from corral.flow import FlowSpec, step


class TrainFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2, 3]
        self.next(self.fan, foreach="items")

    @step
    def fan(self):
        self.value = self.input * 2
        self.next(self.join)

    @step
    def join(self, inputs):
        self.total = sum(i.value for i in inputs)
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.merge)

    @step
    def b(self):
        self.next(self.merge)

    @step
    def merge(self, inputs):
        self.merge_artifacts(inputs)
        self.next(self.train, num_parallel=2)

    @step
    def train(self):
        """Train on every node of the gang."""
        self.next(self.train_join)

    @step
    def train_join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
