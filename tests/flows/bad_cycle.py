"""Rule 8: a loop a -> b -> a."""

from corral.flow import FlowSpec, step


class CycleFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a)

    @step
    def a(self, inputs):
        self.next(self.b)

    @step
    def b(self):
        self.next(self.a, self.end)

    @step
    def end(self):
        pass
