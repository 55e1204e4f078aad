"""Rule 2: start takes inputs; end calls self.next."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


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
