"""The flow graph: each step's transitions, read from its source, and the checks on them.

A flow is checked before anything runs. :meth:`FlowGraph.from_class` reads every ``@step``
method's source with :mod:`ast`, finds its one ``self.next(...)`` call, and runs the lint
checks below; a problem raises :class:`FlowLintError`, whose message has one line per
problem, each starting with ``FILE:LINE:`` in the user's file and saying how to fix it.

The checks run in stages, each a small table of functions; a stage runs only when the
ones before it found nothing, because its checks assume them (a cycle check needs every
target to exist, the split/join check needs a graph without cycles):

1. what each step says on its own: ``start`` and ``end`` exist and have the right shape,
   names are not reserved, every step has one static ``self.next(...)`` to real steps
   with valid keywords (rules 1-5 and 9);
2. the graph's shape: every step is reachable from ``start``, nothing loops (rules 6, 8);
3. ``end`` is reachable from every step (rule 6, implied by stages 1-2 for parsed flows);
4. splits and joins balance (rule 7).

Nothing here imports or runs user code beyond reading the class it is given.
"""

from __future__ import annotations

import ast
import difflib
import enum
import inspect
import textwrap
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from corral.errors import CorralError

RESERVED_NAMES = frozenset({"next", "input", "index", "inputs", "merge_artifacts", "run",
                            "name", "foreach_stack"})
"""Names a step cannot take: FlowSpec uses them (names starting with ``_`` are reserved too)."""

NEXT_KEYWORDS = ("foreach", "num_parallel")


class StepKind(str, enum.Enum):
    """What a step does on its way out; a split kind wins over ``join`` and ``start`` (a
    join that fans out again is a ``branch`` with ``is_join`` set)."""

    START = "start"  # the first step, going to one step
    LINEAR = "linear"  # goes to one step
    BRANCH = "branch"  # a static split: goes to several steps, which run in parallel
    FOREACH = "foreach"  # a split: one task of its target per item of an attribute
    PARALLEL = "parallel"  # a gang split: its target runs as one job on num_parallel nodes
    JOIN = "join"  # takes ``inputs`` and goes to one step
    END = "end"  # the last step

    def is_split(self) -> bool:
        return self in (StepKind.BRANCH, StepKind.FOREACH, StepKind.PARALLEL)


@dataclass(frozen=True, slots=True)
class LintProblem:
    """One thing wrong with a flow, at a line of the user's file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class FlowLintError(CorralError):
    """The flow's graph is invalid: one line per problem, ``FILE:LINE: what and how``."""

    def __init__(self, problems: Iterable[LintProblem]) -> None:
        self.problems = tuple(sorted(set(problems), key=lambda p: (p.file, p.line, p.message)))
        super().__init__("\n".join(str(p) for p in self.problems))


class UnknownStep(CorralError, KeyError):
    """A step name that is not in the flow (with the closest one, when there is one)."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else "unknown step"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepNode:
    """One step: where it goes, from its ``self.next(...)``, and where it sits in the graph.

    ``inputs``, ``split_parents``, ``matching_join`` and ``closes`` are computed by
    :meth:`FlowGraph.from_class` once the flow passed its checks."""

    name: str
    next: tuple[str, ...] = ()
    foreach: str | None = None  # the attribute a foreach split fans out over
    num_parallel: int | str | None = None  # a gang's nodes: a number, or an expression's text
    is_join: bool = False  # the method takes a second parameter (``inputs``)
    file: str
    line: int  # the ``def`` line
    next_line: int = 0  # the line of ``self.next(...)``; 0 when the step has none
    doc: str = ""
    inputs: tuple[str, ...] = ()  # the steps that lead here, in the graph's order
    split_parents: tuple[str, ...] = ()  # the splits this step runs inside, outermost first
    matching_join: str | None = None  # for a split: the join that closes it
    closes: str | None = None  # for a join: the split it closes

    @property
    def kind(self) -> StepKind:
        if self.name == "end":
            return StepKind.END
        if len(self.next) > 1:
            return StepKind.BRANCH
        if self.foreach is not None:
            return StepKind.FOREACH
        if self.num_parallel is not None:
            return StepKind.PARALLEL
        if self.is_join:
            return StepKind.JOIN
        return StepKind.START if self.name == "start" else StepKind.LINEAR

    @property
    def is_split(self) -> bool:
        return self.kind.is_split()

    @property
    def split_parent(self) -> str | None:
        """The innermost split this step runs inside (``None`` at the top level)."""
        return self.split_parents[-1] if self.split_parents else None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind.value, "next": list(self.next),
                "foreach": self.foreach, "num_parallel": self.num_parallel,
                "is_join": self.is_join, "inputs": list(self.inputs),
                "split_parents": list(self.split_parents),
                "matching_join": self.matching_join, "closes": self.closes,
                "file": self.file, "line": self.line, "next_line": self.next_line,
                "doc": self.doc}


@dataclass(frozen=True)
class FlowGraph:
    """A flow's steps, in a stable topological order from ``start``."""

    name: str  # the FlowSpec subclass's name
    file: str
    line: int  # the ``class`` line
    nodes: Mapping[str, StepNode] = field(default_factory=dict)

    @classmethod
    def from_class(cls, flow: type) -> FlowGraph:
        """Parse and check the flow ``flow``; raise :class:`FlowLintError` if it is invalid."""
        file, line = _class_location(flow)
        parsed: list[StepNode] = []
        problems: list[LintProblem] = []
        for name, fn in _step_functions(flow):
            node, found = parse_step(name, fn)
            parsed.append(node)
            problems += found
            problems += _shadowed_members(flow, node)
        parsed.sort(key=lambda n: (n.file, n.line))
        graph = cls(flow.__name__, file or (parsed[0].file if parsed else "<unknown>"), line,
                    types.MappingProxyType({n.name: n for n in parsed}))
        problems += check(graph, stop_early=bool(problems))
        if problems:
            raise FlowLintError(problems)
        return _completed(graph)

    def node(self, name: str) -> StepNode:
        """The step ``name``; :class:`UnknownStep` (with a suggestion) if there is none."""
        try:
            return self.nodes[name]
        except KeyError:
            raise UnknownStep(f"{self.name} has no step {name!r}"
                              f"{_suggestion(name, self.nodes)}") from None

    def successors(self, name: str) -> tuple[str, ...]:
        return self.node(name).next

    def predecessors(self, name: str) -> tuple[str, ...]:
        return self.node(name).inputs

    def join_of(self, split: str) -> str:
        """The join that closes the split step ``split``."""
        join = self.node(split).matching_join
        if join is None:
            raise UnknownStep(f"step {split!r} of {self.name} is not a split")
        return join

    def split_of(self, join: str) -> str:
        """The split step that the join ``join`` closes."""
        split = self.node(join).closes
        if split is None:
            raise UnknownStep(f"step {join!r} of {self.name} is not a join")
        return split

    def is_gang(self, name: str) -> bool:
        """Whether ``name`` runs as one gang job: the target of a ``num_parallel`` split."""
        parent = self.node(name).split_parent
        return parent is not None and self.nodes[parent].kind is StepKind.PARALLEL

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``corral flow show``: the flow and its steps in order."""
        return {"name": self.name, "file": self.file, "line": self.line,
                "steps": [node.to_json() for node in self.nodes.values()]}


# -- reading the class and each step's source ----------------------------------------------


def _class_location(flow: type) -> tuple[str, int]:
    try:
        file = inspect.getsourcefile(flow) or inspect.getfile(flow)
    except TypeError:  # a class whose module is gone (exec, a notebook cell)
        file = ""
    try:
        line = inspect.getsourcelines(flow)[1]
    except (OSError, TypeError):
        line = 1
    return file, line


def _step_functions(flow: type) -> list[tuple[str, Any]]:
    """The flow's steps, inherited ones included (a subclass's definition wins)."""
    found: dict[str, Any] = {}
    for klass in flow.__mro__:
        for name, member in vars(klass).items():
            if name not in found and getattr(member, "__corral_step__", False):
                found[name] = member
    return list(found.items())


def _shadowed_members(flow: type, node: StepNode) -> list[LintProblem]:
    """Rule 9, for the class: a step must not hide a non-step member of a base class."""
    if node.name in RESERVED_NAMES or node.name.startswith("_"):
        return []  # check_reserved_names says it
    for klass in flow.__mro__[1:]:
        member = vars(klass).get(node.name)
        if member is not None and not getattr(member, "__corral_step__", False):
            return [LintProblem(node.file, node.line,
                                f"step {node.name!r} hides {klass.__name__}.{node.name}, "
                                "which corral needs; rename the step")]
    return []


def parse_step(name: str, member: Any) -> tuple[StepNode, list[LintProblem]]:
    """Read one step's source: its ``def`` line, whether it is a join, and its transition."""
    fn = inspect.unwrap(member)
    code = getattr(fn, "__code__", None)
    file = code.co_filename if code else "<unknown>"
    line = code.co_firstlineno if code else 1
    if not inspect.isfunction(fn):
        return StepNode(name=name, file=file, line=line, next_line=line), [LintProblem(
            file, line, f"step {name!r} is not a function; @step marks a method "
            f"`def {name}(self): ...`")]
    try:
        lines, first = inspect.getsourcelines(fn)
        file = inspect.getsourcefile(fn) or file
        tree, offset = _parse_source("".join(lines))
    except (OSError, TypeError, SyntaxError) as e:
        return StepNode(name=name, file=file, line=line, next_line=line), [LintProblem(
            file, line, f"cannot read the source of step {name!r} ({e}); corral reads each "
            "step's source to find its self.next(...): define the flow in a .py file")]
    fdef = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef))
    at = _LineMap(file, first - 1 - offset)
    params = [*fdef.args.posonlyargs, *fdef.args.args]
    problems = []
    if (len(params) not in (1, 2) or fdef.args.vararg or fdef.args.kwarg
            or fdef.args.kwonlyargs):
        problems.append(at(fdef, f"step {name!r} must take (self) or, for a join, "
                                 f"(self, inputs); define it as `def {name}(self):`"))
    self_name = params[0].arg if params else "self"
    node = StepNode(name=name, is_join=len(params) == 2, file=file, line=at.line(fdef),
                    doc=inspect.getdoc(fn) or "")
    transition, found = _parse_transition(name, fdef, self_name, at)
    return replace(node, **transition), problems + found


def _parse_source(text: str) -> tuple[ast.Module, int]:
    """The method's tree, and how many lines were added in front to make it parse."""
    try:
        return ast.parse(textwrap.dedent(text)), 0
    except SyntaxError:  # a multi-line string less indented than the method defeats dedent
        return ast.parse("if 1:\n" + text), 1


class _LineMap:
    """Turns a node of the parsed method into a problem at its line in the user's file."""

    def __init__(self, file: str, shift: int) -> None:
        self.file, self.shift = file, shift

    def line(self, node: ast.AST) -> int:
        return int(getattr(node, "lineno", 1)) + self.shift

    def __call__(self, node: ast.AST, message: str) -> LintProblem:
        return LintProblem(self.file, self.line(node), message)


_COMPOUND = {"If": "an `if`", "For": "a `for` loop", "AsyncFor": "a `for` loop",
             "While": "a `while` loop", "Try": "a `try`", "TryStar": "a `try`",
             "With": "a `with`", "AsyncWith": "a `with`", "Match": "a `match`"}


def _parse_transition(name: str, fdef: ast.FunctionDef | ast.AsyncFunctionDef,
                      self_name: str, at: _LineMap) -> tuple[dict[str, Any], list[LintProblem]]:
    """Rules 3 and 5 (the syntax): one ``self.next(...)``, the method's last statement,
    whose arguments are ``self.<step>`` and whose keywords are literals or expressions."""

    def is_next(node: ast.AST) -> TypeGuard[ast.Call]:
        return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "next" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == self_name)

    calls = [(node, stmt) for stmt in fdef.body for node in ast.walk(stmt) if is_next(node)]
    if not calls:
        return {}, []
    last = fdef.body[-1]
    problems = []
    chosen: ast.Call | None = None
    for call, stmt in calls:
        if stmt is last and isinstance(stmt, ast.Expr) and stmt.value is call:
            chosen = call
        elif isinstance(stmt, ast.Expr) and stmt.value is call:
            problems.append(at(call, f"self.next(...) must be the last statement of step "
                                     f"{name!r}, and its only one; move the code after it "
                                     "above it"))
        elif type(stmt).__name__ in _COMPOUND:
            where = _COMPOUND[type(stmt).__name__]
            problems.append(at(call, f"transitions must be static: step {name!r} calls "
                                     f"self.next(...) inside {where}; end the step with one "
                                     "unconditional self.next(...) (to choose at run time, "
                                     "branch to all the steps and decide inside them)"))
        else:
            problems.append(at(call, f"self.next(...) in step {name!r} must be a statement "
                                     "of its own, the last one of the method"))
    if chosen is None:
        return {"next_line": at.line(calls[0][0])}, problems
    targets: list[str] = []
    for arg in chosen.args:
        if (isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name)
                and arg.value.id == self_name):
            targets.append(arg.attr)
        else:
            problems.append(at(arg, f"self.next(...) in step {name!r} takes steps written as "
                                    f"self.<step>, got `{ast.unparse(arg)}`"))
    found: dict[str, Any] = {"next": tuple(targets), "next_line": at.line(chosen)}
    for kw in chosen.keywords:
        if kw.arg == "foreach":
            if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                found["foreach"] = kw.value.value
            else:
                text = ast.unparse(kw.value)
                hint = text.removeprefix(f"{self_name}.") if isinstance(
                    kw.value, ast.Attribute) else "items"
                problems.append(at(kw.value, f"foreach= takes the name of an attribute as a "
                                             f"string, got `{text}`; write foreach={hint!r}"))
        elif kw.arg == "num_parallel":
            value, problem = _num_parallel(kw.value)
            if problem:
                problems.append(at(kw.value, f"num_parallel= in step {name!r} {problem}"))
            else:
                found["num_parallel"] = value
        else:
            got = f"{kw.arg}=" if kw.arg else "**"
            hint = _suggestion(kw.arg or "", NEXT_KEYWORDS, "; did you mean {}=?")
            problems.append(at(kw.value if kw.arg else chosen,
                               f"self.next(...) in step {name!r} takes no `{got}`; its "
                               f"keywords are foreach= and num_parallel={hint}"))
    return found, problems


def _num_parallel(node: ast.expr) -> tuple[int | str | None, str | None]:
    """An int literal stays an int; any other expression is kept as its source text."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node), None  # an expression, such as self.nodes
    if isinstance(value, int) and not isinstance(value, bool):
        return value, None
    return None, (f"takes a whole number of nodes (>= 1) or an expression such as "
                  f"self.nodes, got `{ast.unparse(node)}`")


def _suggestion(name: str, choices: Iterable[str], form: str = "; did you mean {!r}?") -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return form.format(close[0]) if close else ""


# -- the checks ------------------------------------------------------------------------------

Check = Callable[[FlowGraph], Iterable[LintProblem]]


def _at_def(node: StepNode, message: str) -> LintProblem:
    return LintProblem(node.file, node.line, message)


def _at_next(node: StepNode, message: str) -> LintProblem:
    return LintProblem(node.file, node.next_line or node.line, message)


def check_start_and_end(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 1: a flow begins at a step named ``start`` and finishes at one named ``end``."""
    for name, role in (("start", "begins"), ("end", "finishes")):
        if name not in graph.nodes:
            yield LintProblem(graph.file, graph.line,
                              f"{graph.name} has no {name!r} step: a flow {role} at a step "
                              f"named {name}; add `@step def {name}(self): ...`")


def check_start_end_shape(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 2: ``start`` takes no ``inputs`` (nothing comes before it); ``end`` goes nowhere."""
    start, end = graph.nodes.get("start"), graph.nodes.get("end")
    if start and start.is_join:
        yield _at_def(start, "start takes inputs, but nothing comes before start; "
                             "define it as `def start(self):`")
    if end and (end.next or end.next_line):
        yield _at_next(end, "end must not call self.next(...): end is the last step "
                            "of the flow; remove the call")


def check_has_transition(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 3: every step but ``end`` ends with ``self.next(...)`` (the parser reports a
    call that is there but misplaced)."""
    for node in graph.nodes.values():
        if node.name != "end" and not node.next and not node.next_line:
            yield _at_def(node, f"step {node.name!r} never calls self.next(...); end "
                                "it with self.next(self.<step>) (or self.next(self.end))")


def check_targets_exist(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 4: every target of ``self.next`` is a step of this flow."""
    for node in graph.nodes.values():
        for target in node.next:
            if target not in graph.nodes:
                hint = _suggestion(target, graph.nodes, "; did you mean self.{}?") or (
                    f"; its steps are {', '.join(graph.nodes)} (a method needs @step)")
                yield _at_next(node, f"self.{target} in step {node.name!r} is not a "
                                     f"step of {graph.name}{hint}")


def check_transition_keywords(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 5: ``foreach`` and ``num_parallel`` fan out to exactly one step (a branch takes
    no keywords); ``foreach`` names an attribute; ``num_parallel`` is at least 1."""
    for node in graph.nodes.values():
        if node.foreach is not None and node.num_parallel is not None:
            yield _at_next(node, f"step {node.name!r} gives both foreach= and "
                                 "num_parallel=; a transition takes one of them")
        for keyword in NEXT_KEYWORDS:
            if getattr(node, keyword) is not None and len(node.next) != 1:
                yield _at_next(node, f"{keyword}= in step {node.name!r} fans out to "
                                     f"exactly one step, got {len(node.next)}; write "
                                     f"self.next(self.<step>, {keyword}=...)")
        if node.foreach is not None and not node.foreach.isidentifier():
            fix = node.foreach.removeprefix("self.")
            hint = f"; write foreach={fix!r}" if fix.isidentifier() else ""
            yield _at_next(node, f"foreach={node.foreach!r} in step {node.name!r} is "
                                 f"not an attribute name{hint}")
        if isinstance(node.num_parallel, int) and node.num_parallel < 1:
            yield _at_next(node, f"num_parallel={node.num_parallel} in step "
                                 f"{node.name!r}: a gang needs at least 1 node")
        if len(set(node.next)) != len(node.next):
            yield _at_next(node, f"self.next(...) in step {node.name!r} names a step "
                                 "twice; each branch goes to a different step")


def check_reserved_names(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 9: a step's name must not clash with what FlowSpec itself uses."""
    for node in graph.nodes.values():
        if node.name.startswith("_"):
            yield _at_def(node, f"step {node.name!r}: names starting with `_` are "
                                "reserved for corral; rename the step")
        elif node.name in RESERVED_NAMES:
            yield _at_def(node, f"step {node.name!r}: the name is reserved (FlowSpec "
                                f"uses self.{node.name}); rename the step")


def check_reachable(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 6: every step can be reached from ``start``."""
    seen = _reach(["start"], lambda n: graph.nodes[n].next)
    for node in graph.nodes.values():
        if node.name not in seen:
            yield _at_def(node, f"step {node.name!r} cannot be reached from start: no "
                                f"reachable step calls self.next(self.{node.name}); "
                                "remove it or add it to a transition")


def check_no_cycles(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 8: no step leads back to itself."""
    state: dict[str, bool] = {}  # False: on the current path; True: finished
    for root in graph.nodes:
        if root in state:
            continue
        path = [root]
        stack = [iter(graph.nodes[root].next)]
        state[root] = False
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = True
                stack.pop()
            elif child not in state:
                state[child] = False
                path.append(child)
                stack.append(iter(graph.nodes[child].next))
            elif state[child] is False:
                loop = " -> ".join([*path[path.index(child):], child])
                yield _at_next(graph.nodes[path[-1]],
                               f"step {path[-1]!r} goes back to {child!r} ({loop}); a flow "
                               "cannot loop: repeat work with foreach= instead")


def check_end_reachable(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 6: ``end`` can be reached from every step."""
    preds = _predecessors(graph)
    reaches = _reach(["end"], lambda n: preds[n])
    for node in graph.nodes.values():
        if node.name not in reaches:
            yield _at_def(node, f"end cannot be reached from step {node.name!r}; every "
                                "path must lead to end")


def check_splits_and_joins(graph: FlowGraph) -> Iterable[LintProblem]:
    """Rule 7: a join closes one split, reached from all its branches; a step that is not
    a join has one step before it; a gang step goes straight to its join; every split is
    closed by a join before ``end`` (splits nest)."""
    return _analyse_splits(graph).problems


CHECK_STAGES: tuple[tuple[Check, ...], ...] = (
    (check_start_and_end, check_start_end_shape, check_has_transition, check_targets_exist,
     check_transition_keywords, check_reserved_names),
    (check_reachable, check_no_cycles),
    (check_end_reachable,),
    (check_splits_and_joins,),
)


def check(graph: FlowGraph, *, stop_early: bool = False) -> list[LintProblem]:
    """Every problem of the first stage that finds some (see the module's docstring);
    ``stop_early``: the caller already has problems, so run the first stage only."""
    for stage in CHECK_STAGES[:1] if stop_early else CHECK_STAGES:
        problems = [p for rule in stage for p in rule(graph)]
        if problems:
            return problems
    return []


def lint(graph: FlowGraph) -> None:
    """Raise :class:`FlowLintError` with every problem of ``graph``'s first failing stage."""
    problems = check(graph)
    if problems:
        raise FlowLintError(problems)


# -- the graph's structure -------------------------------------------------------------------


def _reach(roots: Sequence[str], neighbours: Callable[[str], Iterable[str]]) -> set[str]:
    seen, todo = set(roots), list(roots)
    while todo:
        for other in neighbours(todo.pop()):
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def _predecessors(graph: FlowGraph) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for node in graph.nodes.values():
        for target in node.next:
            found[target].append(node.name)
    return found


def _topological_order(graph: FlowGraph) -> list[str]:
    """Reverse post-order from ``start``, children taken last to first, so that each
    branch's steps stay together in the order of the ``self.next(...)`` call."""
    done: list[str] = []
    seen = {"start"}
    stack = [("start", iter(reversed(graph.nodes["start"].next)))]
    while stack:
        name, children = stack[-1]
        child = next(children, None)
        if child is None:
            done.append(name)
            stack.pop()
        elif child not in seen:
            seen.add(child)
            stack.append((child, iter(reversed(graph.nodes[child].next))))
    return done[::-1]


Stack = tuple[tuple[str, str], ...]  # the open splits, outermost first: (split, branch taken)


@dataclass
class _Splits:
    stacks: dict[str, Stack] = field(default_factory=dict)
    closes: dict[str, str] = field(default_factory=dict)  # join -> the split it closes
    problems: list[LintProblem] = field(default_factory=list)


def _analyse_splits(graph: FlowGraph) -> _Splits:
    """Walk the graph in order, carrying each step's open splits; a step after a problem is
    skipped (its splits are unknown), so that one mistake is reported once."""
    result, nodes, preds = _Splits(), graph.nodes, _predecessors(graph)

    def leaving(parent: str, child: str) -> Stack:
        stack = result.stacks[parent]
        return (*stack, (parent, child)) if nodes[parent].is_split else stack

    def problem(node: StepNode, message: str, at_next: bool = False) -> None:
        result.problems.append((_at_next if at_next else _at_def)(node, message))

    for name in _topological_order(graph):
        node, before = nodes[name], preds[name]
        if not before or any(p not in result.stacks for p in before):
            if not before:
                result.stacks[name] = ()
            continue
        arriving = [leaving(p, name) for p in before]
        if not node.is_join:
            if len(before) > 1:
                problem(node, f"step {name!r} follows {_names(before)} but takes no inputs; "
                              f"a step reached from several steps is a join: define it as "
                              f"`def {name}(self, inputs):`")
                continue
            result.stacks[name] = arriving[0]
            continue
        if any(nodes[p].is_split for p in before):
            problem(node, f"step {name!r} comes right after a split, so it runs once per "
                          "branch and cannot be a join; remove its inputs parameter")
            continue
        if any(not stack for stack in arriving):
            problem(node, f"step {name!r} takes inputs, but no split comes before it; "
                          f"remove the inputs parameter, or fan out before it")
            continue
        splits = {stack[-1][0] for stack in arriving}
        if len(splits) > 1:
            origin = ", ".join(f"{p!r} (split in {s[-1][0]!r})"
                               for p, s in zip(before, arriving, strict=True))
            problem(node, f"join {name!r} takes inputs from different splits: {origin}; "
                          f"close the inner split with its own join first")
            continue
        split = splits.pop()
        missing = [b for b in nodes[split].next if b not in {s[-1][1] for s in arriving}]
        if missing:
            problem(node, f"join {name!r} closes the split in {split!r}, but its branch "
                          f"{_names(missing)} does not lead here; every branch of a split "
                          "must end in the same join")
            continue
        gang = nodes[split].next[0]
        if nodes[split].kind is StepKind.PARALLEL and before != [gang]:
            problem(nodes[gang], f"gang step {gang!r} (num_parallel= in {split!r}) must go "
                                 f"straight to its join {name!r}: a gang runs as one job",
                    at_next=True)
            continue
        result.closes[name] = split
        result.stacks[name] = arriving[0][:-1]
    end = result.stacks.get("end")
    for split, _ in end or ():
        problem(nodes[split], f"the {nodes[split].kind.value} split in step {split!r} is "
                              "never closed: add a join (a step that takes inputs) after its "
                              "branches, before end", at_next=True)
    return result


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _completed(graph: FlowGraph) -> FlowGraph:
    """The checked graph in topological order, with each step's computed fields filled."""
    order = _topological_order(graph)
    position = {name: i for i, name in enumerate(order)}
    preds = _predecessors(graph)
    splits = _analyse_splits(graph)
    joins = {split: join for join, split in splits.closes.items()}
    nodes = {name: replace(graph.nodes[name],
                           inputs=tuple(sorted(preds[name], key=position.__getitem__)),
                           split_parents=tuple(s for s, _ in splits.stacks[name]),
                           matching_join=joins.get(name), closes=splits.closes.get(name))
             for name in order}
    return replace(graph, nodes=types.MappingProxyType(nodes))
