"""Rule 8: a loop a -> b -> a."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


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
