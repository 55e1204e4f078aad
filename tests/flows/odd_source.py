"""A step whose source textwrap.dedent cannot dedent (a string at column 0)."""

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


class OddSourceFlow(FlowSpec):
    @step
    def start(self):
        self.text = """
first line at column 0
"""
        self.next(self.end)

    @step
    def end(self):
        pass
