"""A foreach fan-out over an attribute, closed by a join."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


class ForeachFlow(FlowSpec):
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
        self.next(self.end)

    @step
    def end(self):
        pass
