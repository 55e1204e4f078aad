"""A straight line: start -> middle -> end (middle under a wrapping decorator)."""

import functools

try:
    from corral.flow import FlowSpec, step
except ImportError:  # the runtime is written in parallel; the graph needs only this
    class FlowSpec:  # type: ignore[no-redef]
        pass

    def step(fn):  # type: ignore[no-redef]
        fn.__corral_step__ = True
        return fn


def logged(fn):
    @functools.wraps(fn)
    def wrapper(self, *args):
        return fn(self, *args)
    return wrapper


class LinearFlow(FlowSpec):
    @step
    def start(self):
        """Begin."""
        self.x = 1
        self.next(self.middle)

    @logged
    @step
    def middle(self):
        self.x += 1
        self.next(self.end)

    @step
    def end(self):
        pass
