"""A foreach inside one path of a branch; the outer join closes the branch."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


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
