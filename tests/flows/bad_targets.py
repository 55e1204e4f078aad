"""Rule 4: a target that is not a step (a typo; a method without @step)."""

from corral.flow import FlowSpec, step


class TypoFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.trian)

    @step
    def train(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class NotAStepFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.prepare_data)

    def prepare_data(self):
        self.next(self.end)

    @step
    def end(self):
        pass
