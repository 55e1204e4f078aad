"""corral.flow.graph: the flow graph read from the steps' source, and the lint checks.

The flows are in tests/flows/; an expected line is found by searching the flow file for
the offending text, so these tests stay right when a flow file changes."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from corral.errors import CorralError
from corral.flow.graph import (
    FlowGraph,
    FlowLintError,
    StepKind,
    StepNode,
    UnknownStep,
    check,
    lint,
)

FLOWS = Path(__file__).parent / "flows"


def load(file: str) -> types.ModuleType:
    """Import tests/flows/<file> (registered in sys.modules, as an imported module is)."""
    path = FLOWS / file
    name = f"corral_test_flows_{path.stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def flow(file: str, name: str) -> Any:
    return getattr(load(file), name)


def line_of(file: str, text: str, after: str | None = None) -> int:
    """The line of ``text`` in tests/flows/<file> (the first one after the line holding
    ``after``, when given); there must be exactly one such line."""
    lines = (FLOWS / file).read_text().splitlines()
    start = line_of(file, after) if after else 0
    found = [i + 1 for i, line in enumerate(lines) if text in line and i + 1 > start]
    assert found, f"{text!r} not in {file}"
    if after is None:
        assert len(found) == 1, f"{text!r} is on several lines of {file}: {found}"
    return found[0]


def problems_of(file: str, name: str) -> list[str]:
    with pytest.raises(FlowLintError) as caught:
        FlowGraph.from_class(flow(file, name))
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.problems)
    return lines


def assert_problem(file: str, name: str, line: int, *fragments: str) -> None:
    """The flow has exactly one problem, at ``file:line``, whose message has ``fragments``."""
    lines = problems_of(file, name)
    assert len(lines) == 1, lines
    prefix = f"{FLOWS / file}:{line}: "
    assert lines[0].startswith(prefix), (lines[0], prefix)
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


# -- valid flows ----------------------------------------------------------------------------


def test_linear_flow() -> None:
    graph = FlowGraph.from_class(flow("linear.py", "LinearFlow"))
    assert graph.name == "LinearFlow"
    assert graph.file == str(FLOWS / "linear.py")
    assert graph.line == line_of("linear.py", "class LinearFlow")
    assert list(graph.nodes) == ["start", "middle", "end"]
    start, middle, end = graph.nodes.values()
    assert (start.kind, middle.kind, end.kind) == (StepKind.START, StepKind.LINEAR, StepKind.END)
    assert graph.successors("start") == ("middle",)
    assert graph.predecessors("end") == ("middle",)
    assert start.line == line_of("linear.py", "def start(self)")
    assert start.next_line == line_of("linear.py", "self.next(self.middle)")
    assert start.doc == "Begin."
    # middle is wrapped by a functools.wraps decorator: its own def line is found
    assert middle.line == line_of("linear.py", "def middle(self)")
    assert middle.next_line == line_of("linear.py", "self.next(self.end)")
    assert end.next == () and end.next_line == 0
    assert not any(node.is_join or node.is_split for node in graph.nodes.values())
    assert graph.nodes["middle"].file == str(FLOWS / "linear.py")


def test_branch_and_join() -> None:
    graph = FlowGraph.from_class(flow("branch.py", "BranchFlow"))
    assert list(graph.nodes) == ["start", "a", "b", "b2", "join", "end"]
    start, join = graph.nodes["start"], graph.nodes["join"]
    assert start.kind is StepKind.BRANCH and start.next == ("a", "b")
    assert join.kind is StepKind.JOIN and join.is_join
    assert join.inputs == ("a", "b2")
    assert graph.join_of("start") == "join" and graph.split_of("join") == "start"
    assert graph.nodes["b2"].split_parents == ("start",)
    assert graph.nodes["b2"].split_parent == "start"
    assert join.split_parents == () and graph.nodes["end"].split_parent is None
    assert not graph.is_gang("a")


def test_foreach_and_join() -> None:
    graph = FlowGraph.from_class(flow("foreach.py", "ForeachFlow"))
    start = graph.nodes["start"]
    assert start.kind is StepKind.FOREACH
    assert (start.foreach, start.next, start.num_parallel) == ("items", ("fan",), None)
    assert start.next_line == line_of("foreach.py", 'foreach="items"')
    assert graph.join_of("start") == "join"
    assert graph.nodes["fan"].split_parents == ("start",)
    assert graph.nodes["join"].inputs == ("fan",)
    assert not graph.is_gang("fan")


def test_gang_step_and_join() -> None:
    graph = FlowGraph.from_class(flow("gang.py", "GangFlow"))
    start = graph.nodes["start"]
    assert start.kind is StepKind.PARALLEL and start.num_parallel == 2
    assert graph.is_gang("train") and not graph.is_gang("start")
    assert not graph.is_gang("train_join")
    assert graph.join_of("start") == "train_join"
    expr = FlowGraph.from_class(flow("gang.py", "GangExprFlow"))
    assert expr.nodes["start"].num_parallel == "self.nodes"  # the expression's text


def test_nested_foreach_inside_a_branch() -> None:
    graph = FlowGraph.from_class(flow("nested.py", "NestedFlow"))
    assert list(graph.nodes) == ["start", "a", "fan", "fan_join", "b", "merge", "end"]
    assert graph.nodes["a"].kind is StepKind.FOREACH
    assert graph.nodes["fan"].split_parents == ("start", "a")
    assert graph.nodes["fan_join"].split_parents == ("start",)
    assert graph.join_of("a") == "fan_join" and graph.join_of("start") == "merge"
    assert graph.nodes["merge"].inputs == ("fan_join", "b")


def test_every_kind_of_step() -> None:
    """The flow of the user-facing example: a join that branches again, a gang after it."""
    graph = FlowGraph.from_class(flow("train.py", "TrainFlow"))
    assert list(graph.nodes) == ["start", "fan", "join", "a", "b", "merge", "train",
                                 "train_join", "end"]
    join = graph.nodes["join"]
    assert join.kind is StepKind.BRANCH and join.is_join  # a split kind wins over join
    assert join.closes == "start" and join.matching_join == "merge"
    assert graph.nodes["merge"].kind is StepKind.PARALLEL and graph.join_of("merge") == (
        "train_join")
    assert graph.is_gang("train")
    assert graph.nodes["train"].doc == "Train on every node of the gang."


def test_source_that_dedent_cannot_dedent() -> None:
    graph = FlowGraph.from_class(flow("odd_source.py", "OddSourceFlow"))
    assert graph.nodes["start"].line == line_of("odd_source.py", "def start(self)")
    assert graph.nodes["start"].next_line == line_of("odd_source.py", "self.next(self.end)")


def test_to_json_shape() -> None:
    graph = FlowGraph.from_class(flow("foreach.py", "ForeachFlow"))
    data = graph.to_json()
    assert json.loads(json.dumps(data)) == data  # plain data
    assert set(data) == {"name", "file", "line", "steps"}
    assert [s["name"] for s in data["steps"]] == ["start", "fan", "join", "end"]
    start = data["steps"][0]
    assert start == {
        "name": "start", "kind": "foreach", "next": ["fan"], "foreach": "items",
        "num_parallel": None, "is_join": False, "inputs": [], "split_parents": [],
        "matching_join": "join", "closes": None, "file": str(FLOWS / "foreach.py"),
        "line": line_of("foreach.py", "def start(self)"),
        "next_line": line_of("foreach.py", 'foreach="items"'), "doc": ""}
    assert data["steps"][2]["closes"] == "start"
    assert data["steps"][2]["inputs"] == ["fan"]


def test_unknown_step_names_suggest_the_closest() -> None:
    graph = FlowGraph.from_class(flow("gang.py", "GangFlow"))
    with pytest.raises(UnknownStep, match="GangFlow has no step 'trian'; did you mean 'train'"):
        graph.successors("trian")
    with pytest.raises(UnknownStep, match="not a split"):
        graph.join_of("train")
    with pytest.raises(UnknownStep, match="not a join"):
        graph.split_of("train")


def test_lint_error_is_a_corral_error() -> None:
    with pytest.raises(CorralError):
        FlowGraph.from_class(flow("bad_reach.py", "UnreachableFlow"))


# -- one test per lint rule -------------------------------------------------------------------


def test_rule_1_start_and_end_exist() -> None:
    assert_problem("bad_start_end.py", "NoStartFlow", line_of("bad_start_end.py",
                   "class NoStartFlow"), "NoStartFlow has no 'start' step",
                   "add `@step def start(self): ...`")
    lines = problems_of("bad_start_end.py", "NoEndFlow")
    assert lines[0] == (f"{FLOWS / 'bad_start_end.py'}:"
                        f"{line_of('bad_start_end.py', 'class NoEndFlow')}: NoEndFlow has no "
                        "'end' step: a flow finishes at a step named end; add "
                        "`@step def end(self): ...`")


def test_rule_2_start_takes_no_inputs_and_end_goes_nowhere() -> None:
    assert_problem("bad_start_shape.py", "StartInputsFlow",
                   line_of("bad_start_shape.py", "def start(self, inputs)"),
                   "start takes inputs", "`def start(self):`")
    assert_problem("bad_start_shape.py", "EndNextFlow",
                   line_of("bad_start_shape.py", "self.next(self.start)"),
                   "end must not call self.next(...)")


def test_rule_3_one_static_next_as_the_last_statement() -> None:
    file = "bad_transitions.py"
    assert_problem(file, "NoNextFlow", line_of(file, "def start", after="class NoNextFlow"),
                   "step 'start' never calls self.next(...)")
    lines = problems_of(file, "NextInIfFlow")  # both calls are reported
    assert [line.split(": ", 1)[0] for line in lines] == [
        f"{FLOWS / file}:{line_of(file, 'self.next(self.end)', after='if self.x')}",
        f"{FLOWS / file}:{line_of(file, 'self.next(self.other)')}"]
    assert all("transitions must be static" in line and "inside an `if`" in line
               for line in lines)
    assert_problem(file, "NextInLoopFlow", line_of(file, "self.next", after="for _ in"),
                   "transitions must be static", "inside a `for` loop")
    assert_problem(file, "NextNotLastFlow",
                   line_of(file, "self.next", after="class NextNotLastFlow"),
                   "must be the last statement of step 'start'")
    assert_problem(file, "NextTwiceFlow",
                   line_of(file, "self.next", after="class NextTwiceFlow"),
                   "must be the last statement of step 'start', and its only one")
    assert_problem(file, "NextNotAttributeFlow", line_of(file, 'self.next("end")'),
                   "takes steps written as self.<step>, got `'end'`")


def test_rule_4_targets_are_steps() -> None:
    assert_problem("bad_targets.py", "TypoFlow", line_of("bad_targets.py", "self.trian"),
                   "self.trian in step 'start' is not a step of TypoFlow; "
                   "did you mean self.train?")
    assert_problem("bad_targets.py", "NotAStepFlow",
                   line_of("bad_targets.py", "self.next(self.prepare_data)"),
                   "its steps are start, end (a method needs @step)")


@pytest.mark.parametrize(("name", "text", "fragment"), [
    ("ForeachTwoTargetsFlow", 'self.next(self.a, self.b, foreach="items")',
     "foreach= in step 'start' fans out to exactly one step, got 2"),
    ("ForeachNotStringFlow", "foreach=self.items",
     "foreach= takes the name of an attribute as a string, got `self.items`; "
     "write foreach='items'"),
    ("ForeachDottedFlow", 'foreach="self.items"',
     "foreach='self.items' in step 'start' is not an attribute name; write foreach='items'"),
    ("ParallelZeroFlow", "num_parallel=0", "a gang needs at least 1 node"),
    ("ParallelFloatFlow", "num_parallel=2.5", "a whole number of nodes (>= 1) or an "
     "expression such as self.nodes, got `2.5`"),
    ("UnknownKeywordFlow", "for_each=", "takes no `for_each=`; its keywords are foreach= and "
     "num_parallel=; did you mean foreach=?"),
    ("BothKeywordsFlow", 'foreach="items", num_parallel=2', "gives both foreach= and "
     "num_parallel="),
])
def test_rule_5_foreach_and_num_parallel(name: str, text: str, fragment: str) -> None:
    assert_problem("bad_keywords.py", name, line_of("bad_keywords.py", text), fragment)


def test_rule_6_every_step_reachable() -> None:
    assert_problem("bad_reach.py", "UnreachableFlow", line_of("bad_reach.py", "def orphan"),
                   "step 'orphan' cannot be reached from start")


def test_rule_6_end_reachable_from_every_step() -> None:
    """Parsed flows meet this through rules 3, 4 and 8; a graph built by hand may not."""
    nodes = {"start": StepNode(name="start", next=("dead", "end"), file="f.py", line=1,
                               next_line=2),
             "dead": StepNode(name="dead", file="f.py", line=3, next_line=4),
             "end": StepNode(name="end", file="f.py", line=5)}
    start_only = {"start": StepNode(name="start", next=("end",), file="f.py", line=1,
                                    next_line=2), "end": nodes["end"]}
    lint(FlowGraph("Hand", "f.py", 1, start_only))
    hand = FlowGraph("Hand", "f.py", 1, nodes)
    assert [str(p) for p in check(hand)] == [
        "f.py:3: end cannot be reached from step 'dead'; every path must lead to end"]
    with pytest.raises(FlowLintError, match=r"^f\.py:3: end cannot be reached"):
        lint(hand)


@pytest.mark.parametrize(("name", "text", "after", "fragment"), [
    ("MergeWithoutInputsFlow", "def merge(self)", None,
     "step 'merge' follows 'a', 'b' but takes no inputs; a step reached from several steps "
     "is a join: define it as `def merge(self, inputs):`"),
    ("JoinWithoutSplitFlow", "def lonely(self, inputs)", None,
     "step 'lonely' takes inputs, but no split comes before it"),
    ("PartialJoinFlow", "def ab_join", None,
     "join 'ab_join' closes the split in 'start', but its branch 'c' does not lead here"),
    ("MixedJoinFlow", "def mixed", None,
     "join 'mixed' takes inputs from different splits: 'a1' (split in 'a'), 'a2' (split in "
     "'a'), 'b' (split in 'start')"),
    ("UnclosedForeachFlow", "self.next(self.fan", "class UnclosedForeachFlow",
     "the foreach split in step 'start' is never closed"),
    ("GangNotStraightFlow", "self.next(self.evaluate)", None,
     "gang step 'train' (num_parallel= in 'start') must go straight to its join 'train_join'"),
    ("JoinRightAfterSplitFlow", "def early", None,
     "step 'early' comes right after a split, so it runs once per branch and cannot be a "
     "join"),
])
def test_rule_7_splits_and_joins_balance(name: str, text: str, after: str | None,
                                         fragment: str) -> None:
    assert_problem("bad_joins.py", name, line_of("bad_joins.py", text, after=after), fragment)


def test_rule_8_no_cycles() -> None:
    assert_problem("bad_cycle.py", "CycleFlow", line_of("bad_cycle.py", "self.next(self.a, "),
                   "step 'b' goes back to 'a' (a -> b -> a); a flow cannot loop")


def test_rule_9_reserved_names() -> None:
    assert_problem("bad_names.py", "ReservedFlow", line_of("bad_names.py", "def input(self)"),
                   "step 'input': the name is reserved")
    assert_problem("bad_names.py", "UnderscoreFlow",
                   line_of("bad_names.py", "def _prepare(self)"),
                   "names starting with `_` are reserved for corral")
    assert_problem("bad_names.py", "ShadowFlow",
                   line_of("bad_names.py", "def helper(self)", after="class ShadowFlow"),
                   "step 'helper' hides HelperBase.helper")


def test_several_problems_are_all_reported() -> None:
    file = "bad_many.py"
    lines = problems_of(file, "ManyProblemsFlow")
    where = [line.split(": ", 1)[0] for line in lines]
    assert where == [f"{FLOWS / file}:{line}" for line in (
        line_of(file, "def start(self, inputs)"), line_of(file, "self.trian"),
        line_of(file, "self.next(self.end, self.run"), line_of(file, "def run(self)"),
        line_of(file, "self.next(self.end)", after="if True:"))]
    assert "start takes inputs" in lines[0]
    assert "did you mean self.train?" in lines[1]
    assert "foreach= in step 'train' fans out to exactly one step" in lines[2]
    assert "step 'run': the name is reserved" in lines[3]
    assert "transitions must be static" in lines[4]
