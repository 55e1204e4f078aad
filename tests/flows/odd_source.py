"""A step whose source textwrap.dedent cannot dedent (a string at column 0)."""

from corral.flow import FlowSpec, step


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
