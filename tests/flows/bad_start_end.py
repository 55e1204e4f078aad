"""Rule 1: no start step; no end step."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


class NoStartFlow(FlowSpec):
    @step
    def begin(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class NoEndFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.finish)

    @step
    def finish(self):
        pass
