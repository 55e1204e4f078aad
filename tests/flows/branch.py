"""A static branch of two paths, one of them two steps long, closed by a join."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


class BranchFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.join)

    @step
    def b(self):
        self.next(self.b2)

    @step
    def b2(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
