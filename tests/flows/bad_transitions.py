"""Rule 3: a missing, conditional, misplaced, repeated or malformed self.next."""

from corral.flow import FlowSpec, step


class NoNextFlow(FlowSpec):
    @step
    def start(self):
        self.x = 1

    @step
    def end(self):
        pass


class NextInIfFlow(FlowSpec):
    @step
    def start(self):
        if self.x:
            self.next(self.end)
        else:
            self.next(self.other)

    @step
    def other(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class NextInLoopFlow(FlowSpec):
    @step
    def start(self):
        for _ in range(2):
            self.next(self.end)

    @step
    def end(self):
        pass


class NextNotLastFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)
        self.after_next = True

    @step
    def end(self):
        pass


class NextTwiceFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.end)
        self.next(self.end)

    @step
    def end(self):
        pass


class NextNotAttributeFlow(FlowSpec):
    @step
    def start(self):
        self.next("end")

    @step
    def end(self):
        pass
