"""A straight line: start -> middle -> end (middle under a wrapping decorator)."""

import functools

from corral.flow import FlowSpec, step


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
