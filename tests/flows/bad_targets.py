"""Rule 4: a target that is not a step (a typo; a method without @step)."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


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
