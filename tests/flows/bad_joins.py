"""Rule 7: splits and joins that do not balance."""

from corral.flow import FlowSpec, step


class MergeWithoutInputsFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.merge)

    @step
    def b(self):
        self.next(self.merge)

    @step
    def merge(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class JoinWithoutSplitFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.lonely)

    @step
    def lonely(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class PartialJoinFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b, self.c)

    @step
    def a(self):
        self.next(self.ab_join)

    @step
    def b(self):
        self.next(self.ab_join)

    @step
    def ab_join(self, inputs):
        self.next(self.last_join)

    @step
    def c(self):
        self.next(self.last_join)

    @step
    def last_join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class MixedJoinFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.a, self.b)

    @step
    def a(self):
        self.next(self.a1, self.a2)

    @step
    def a1(self):
        self.next(self.mixed)

    @step
    def a2(self):
        self.next(self.mixed)

    @step
    def b(self):
        self.next(self.mixed)

    @step
    def mixed(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class UnclosedForeachFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fan, foreach="items")

    @step
    def fan(self):
        self.next(self.end)

    @step
    def end(self):
        pass


class GangNotStraightFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.train, num_parallel=2)

    @step
    def train(self):
        self.next(self.evaluate)

    @step
    def evaluate(self):
        self.next(self.train_join)

    @step
    def train_join(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass


class JoinRightAfterSplitFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.early, foreach="items")

    @step
    def early(self, inputs):
        self.next(self.end)

    @step
    def end(self):
        pass
