"""Rule 2: start takes inputs; end calls self.next."""

from corral.flow import FlowSpec, step


class StartInputsFlow(FlowSpec):
    @step
    def start(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class EndNextFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)

    @step
    def end(self):
        self.next(self.start)
