"""Several problems at once: all of them must be reported."""

from corral.flow import FlowSpec, step


class ManyProblemsFlow(FlowSpec):
    @step
    def start(self, inputs):
        self.next(self.trian)

    @step
    def train(self):
        self.next(self.end, self.run, foreach="items")

    @step
    def run(self):
        if True:
            self.next(self.end)

    @step
    def end(self):
        pass
