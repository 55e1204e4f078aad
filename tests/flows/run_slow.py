"""start -> slow (waits while the file MARKER exists, at most 60 s) -> end: a run to kill
while its middle step runs."""

import os
import time

from corral.flow import FlowSpec, Parameter, step


class SlowFlow(FlowSpec):
    marker = Parameter("marker", type=str, required=True)

    @step
    def start(self):
        self.start_pid = os.getpid()
        self.next(self.slow)

    @step
    def slow(self):
        deadline = time.time() + 60
        while os.path.exists(self.marker) and time.time() < deadline:
            time.sleep(0.1)
        self.waited = True
        self.next(self.end)

    @step
    def end(self):
        pass
