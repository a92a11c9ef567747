"""The suite asserts no wall-clock bound: timings live in benchmarks/, hangs end in markers.

A test that asserts `elapsed < 3` fails whenever the machine is slow for a moment
(a 2-core VM moves by +-20 % from minute to minute), so the rule is kept by this
scan of tests/ rather than by memory.

The rule: an `assert` is refused when it holds an ordering comparison (<, <=, >, >=)
with a timed side. A side is timed when it
- calls a clock: time.monotonic, perf_counter, time, process_time (or their _ns forms),
  qualified or imported bare;
- is a name bound in the same function, or an attribute or string-keyed subscript
  (`self.began`, `result["worst"]`) bound anywhere in the module, from a timed value:
  by `=`, `+=`, `:=`, or `.append`/`.extend`/`.add`/`.insert` (so
  `start = time.monotonic()` makes `start` timed, and then `elapsed = ... - start`);
- is named as a duration: an identifier with the word elapsed, duration, took, latency
  or seconds in it (`ready_seconds`, `self.elapsed`);
- or is arithmetic, a conditional, a tuple or list, or a call of max, min, sum, abs,
  float, int, round, median, mean or fsum with a timed part (other calls are not).
Equality checks, comparisons outside asserts (a polling loop's deadline) and helpers
that wait with a timeout of their own are not refused: a hang guard is a
`@pytest.mark.timeout(N)` marker, or a wait far above any real time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import List, Optional, Set, Tuple, Union

import pytest

TESTS = Path(__file__).resolve().parent
CLOCKS = {
    "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns",
    "time", "time_ns", "process_time", "process_time_ns",
}  # fmt: skip
REDUCERS = {"max", "min", "sum", "abs", "float", "int", "round", "median", "mean", "fsum"}
DURATION_WORDS = re.compile(r"(^|_)(elapsed|duration|took|latency|seconds)(_|$)", re.I)
ORDERING = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)
ADDERS = {"append", "extend", "add", "insert"}
Scope = Union[ast.Module, ast.FunctionDef, ast.AsyncFunctionDef]


def _label(node: ast.AST) -> Optional[str]:
    """The identifier a value is known by: a name, an attribute, a constant string key."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        key = node.slice.value
        return key if isinstance(key, str) else None
    return None


class _Taint:
    """What is timed: local names per function, fields (attributes, string keys) per module."""

    def __init__(self, fields: Set[str]) -> None:
        self.fields = fields
        self.names: Set[str] = set()

    def has(self, node: ast.AST) -> bool:
        label = _label(node)
        if label is None:
            return False
        known = self.names if isinstance(node, ast.Name) else self.fields
        return label in known or bool(DURATION_WORDS.search(label))

    def add(self, target: ast.AST) -> bool:
        """Mark target (a name, field, or tuple of them) timed; whether anything was new."""
        if isinstance(target, (ast.Tuple, ast.List)):
            return any([self.add(part) for part in target.elts])
        if isinstance(target, ast.Starred):
            return self.add(target.value)
        label = _label(target)
        known = self.names if isinstance(target, ast.Name) else self.fields
        if label is None or label in known:
            return False
        known.add(label)
        return True

    def timed(self, node: ast.AST) -> bool:
        """Whether an expression's value is a clock reading or derived from one."""
        if isinstance(node, ast.Call):
            name = _label(node.func)
            if name in CLOCKS:
                return True
            return name in REDUCERS and any(self.timed(arg) for arg in node.args)
        if isinstance(node, (ast.Name, ast.Attribute)) or (
            isinstance(node, ast.Subscript) and _label(node) is not None
        ):
            return self.has(node)
        if isinstance(node, ast.Subscript):
            return self.timed(node.value)
        if isinstance(node, ast.BinOp):
            return self.timed(node.left) or self.timed(node.right)
        if isinstance(node, ast.UnaryOp):
            return self.timed(node.operand)
        if isinstance(node, ast.IfExp):
            return self.timed(node.body) or self.timed(node.orelse)
        if isinstance(node, (ast.Tuple, ast.List)):
            return any(self.timed(part) for part in node.elts)
        if isinstance(node, ast.NamedExpr):
            return self.timed(node.value)
        return False


def _own_nodes(scope: Scope) -> List[ast.AST]:
    """The nodes of a module or function, without those of the functions inside it."""
    found, todo = [], list(ast.iter_child_nodes(scope))
    while todo:
        node = todo.pop()
        found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return found


def _bindings(nodes: List[ast.AST]) -> List[Tuple[List[ast.AST], ast.AST]]:
    """(targets, value) of each `=`, `+=`, `:=` and `x.append(value)` among nodes."""
    out: List[Tuple[List[ast.AST], ast.AST]] = []
    for node in nodes:
        if isinstance(node, ast.Assign):
            out.append((node.targets, node.value))
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.NamedExpr)) and node.value:
            out.append(([node.target], node.value))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ADDERS:
                out.append(([node.func.value], ast.Tuple(node.args, ast.Load())))
    return out


def timed_asserts(source: str) -> List[Tuple[int, str]]:
    """(line, text) of each assert in source that compares a measured time."""
    tree = ast.parse(source)
    scopes: List[Scope] = [tree]
    scopes += [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    fields: Set[str] = set()  # shared: a field set in one function may be read in another
    taints = {id(scope): _Taint(fields) for scope in scopes}
    bindings = {id(scope): _bindings(_own_nodes(scope)) for scope in scopes}
    grew = True
    while grew:  # to a fixed point
        grew = False
        for scope in scopes:
            taint = taints[id(scope)]
            for targets, value in bindings[id(scope)]:
                if taint.timed(value):
                    grew |= any([taint.add(target) for target in targets])
    found = [
        (node.lineno, ast.get_source_segment(source, node) or "")
        for scope in scopes
        for node in _own_nodes(scope)
        if isinstance(node, ast.Assert) and _compares_time(node.test, taints[id(scope)])
    ]
    return sorted(found)


def _compares_time(test: ast.AST, taint: _Taint) -> bool:
    for compare in ast.walk(test):
        if isinstance(compare, ast.Compare) and any(isinstance(o, ORDERING) for o in compare.ops):
            if any(taint.timed(side) for side in [compare.left, *compare.comparators]):
                return True
    return False


def test_no_test_asserts_a_wall_clock_bound():
    found = [
        f"{path.relative_to(TESTS.parent)}:{line}: {text}"
        for path in sorted(TESTS.rglob("*.py"))
        for line, text in timed_asserts(path.read_text())
    ]
    assert not found, (
        "these asserts bound a measured time, which flakes on a busy machine; keep the "
        "behaviour check, guard hangs with @pytest.mark.timeout(N), and put the figure in "
        "a benchmarks/ script:\n" + "\n".join(found)
    )


PLANTED = {
    "clock difference": "s = time.monotonic()\nrun()\nassert time.monotonic() - s < 3\n",
    "bare clock, bound name": "t0 = perf_counter()\nt = perf_counter() - t0\nassert t < 15\n",
    "chained window": "began = time.time()\nrun()\nw = time.time() - began\nassert 1.4 < w < 3\n",
    "inside a conjunction": "b = time.monotonic()\nassert ok and time.monotonic() - b <= 120\n",
    "clock against a deadline": "assert time.monotonic() < deadline, logs\n",
    "dict key": "out['worst'] = max(out['worst'], time.perf_counter() - s)\n"
    "assert result['worst'] < 0.1\n",
    "duration name": "assert ready_seconds < 30\n",
    "duration attribute": "assert 0 <= self.elapsed\n",
    "list of times": "ts = []\nts.append(time.perf_counter_ns() - a)\nassert max(ts) < 10**6\n",
    "walrus": "assert (d := time.monotonic() - s) < 2, d\n",
    "in a function": "def f():\n    s = monotonic()\n    run()\n    assert monotonic() > s\n",
}
LEGIT = {
    "a count": "assert len(items) < 5\n",
    "a deadline in a polling loop": "deadline = time.monotonic() + 30\n"
    "while not ready() and time.monotonic() < deadline:\n    time.sleep(0.1)\nassert ready()\n",
    "a step count": "assert result['steps'] > 100\n",
    "a memory bound": "growth = rss() - before\nassert growth < 50 * 2**20\n",
    "a timeout setting": "assert client.timeout > 0\n",
    "equality with a timed value": "t = time.monotonic()\nassert t == t\n",
    "a duration name outside an assert": "elapsed = time.monotonic() - s\nprint(elapsed)\n",
    "a name timed in another function": "def a():\n    start = time.monotonic()\n"
    "def b(start):\n    assert start < 3\n",
    "a call of a timed value": "t = time.monotonic()\nassert len(log(t)) > 0\n",
}


@pytest.mark.parametrize("source", PLANTED.values(), ids=PLANTED.keys())
def test_the_scan_catches_a_planted_timed_assert(source):
    (line, text), *rest = timed_asserts(source)
    assert not rest and text.startswith("assert ")
    assert source.splitlines()[line - 1].lstrip().startswith("assert ")


@pytest.mark.parametrize("source", LEGIT.values(), ids=LEGIT.keys())
def test_the_scan_passes_comparisons_that_measure_no_time(source):
    assert timed_asserts(source) == []
