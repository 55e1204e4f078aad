"""A foreach inside one path of a branch; the outer join closes the branch."""

from corral.flow import FlowSpec, step


class NestedFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.items = ["x", "y"]
        self.next(self.fan, foreach="items")

    @step
    def fan(self):
        self.next(self.fan_join)

    @step
    def fan_join(self, inputs):
        self.next(self.merge)

    @step
    def b(self):
        self.next(self.merge)

    @step
    def merge(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
