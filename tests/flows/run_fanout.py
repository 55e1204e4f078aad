"""foreach, join, a static branch and merge_artifacts, with a typed parameter."""

from corral.flow import FlowSpec, Parameter, step


class FanoutFlow(FlowSpec):
    scale = Parameter("scale", default=2)

    @step
    def start(self):
        self.items = [1, 2, 3]
        self.shared = "same everywhere"
        self.next(self.square, foreach="items")

    @step
    def square(self):
        self.value = self.input * self.input * self.scale
        self.position = self.index
        self.next(self.gather)

    @step
    def gather(self, inputs):
        self.values = [i.value for i in inputs]
        self.positions = [i.position for i in inputs]
        self.merge_artifacts(inputs, exclude=["value", "position"])
        self.next(self.left, self.right)

    @step
    def left(self):
        self.side = "left"
        self.next(self.merge)

    @step
    def right(self):
        self.side = "right"
        self.next(self.merge)

    @step
    def merge(self, inputs):
        self.sides = sorted([inputs.left.side, inputs.right.side])
        self.merge_artifacts(inputs, exclude=["side"])
        self.next(self.end)

    @step
    def end(self):
        self.total = sum(self.values)
