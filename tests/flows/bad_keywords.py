"""Rule 5: foreach / num_parallel used wrongly."""

from corral.flow import FlowSpec, step


class ForeachTwoTargetsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b, foreach="items")

    @step
    def a(self):
        self.next(self.join)

    @step
    def b(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class ForeachNotStringFlow(FlowSpec):
    @step
    def start(self):
        self.items = [1, 2]
        self.next(self.fan, foreach=self.items)

    @step
    def fan(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class ForeachDottedFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fan, foreach="self.items")

    @step
    def fan(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class ParallelZeroFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=0)

    @step
    def train(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class ParallelFloatFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2.5)

    @step
    def train(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class UnknownKeywordFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fan, for_each="items")

    @step
    def fan(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class BothKeywordsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fan, foreach="items", num_parallel=2)

    @step
    def fan(self):
        self.next(self.join)

    @step
    def join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
