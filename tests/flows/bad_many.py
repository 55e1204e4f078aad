"""Several problems at once: all of them must be reported."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


class ManyProblemsFlow(FlowSpec):
    @step
    def start(self, inputs):
        self.next(self.trian)

    @step
    def train(self):
        self.next(self.end, self.run, foreach="items")

    @step
    def run(self):
        if True:
            self.next(self.end)

    @step
    def end(self):
        pass
