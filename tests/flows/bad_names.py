"""Rule 9: reserved step names, and a step hiding a base class's method."""

from corral.flow import FlowSpec, step


class ReservedFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.input)

    @step
    def input(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class UnderscoreFlow(FlowSpec):
    @step
    def start(self):
        self.next(self._prepare)

    @step
    def _prepare(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class HelperBase(FlowSpec):
    def helper(self):
        return 1


class ShadowFlow(HelperBase):
    @step
    def start(self):
        self.next(self.helper)

    @step
    def helper(self):
        self.next(self.end)

    @step
    def end(self):
        pass
