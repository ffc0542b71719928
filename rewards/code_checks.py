"""Cut ``code_exec``'s snippet tests in two, so the model's program never evaluates a comparison.

The cut is an ``ast`` rewrite done here, on the trusted side. In ``assert abs(f(2.0) - 1.414) < 1e-3``:

- the *leaves*, the maximal call/attribute/subscript chains rooted at a name of the program's
  (``f(2.0)``, ``s.two_sum([2, 7], 9)``, ``CONST``, ``f(3)[0]``), with the arguments written inside
  them, go to phase 1, which runs them after the program and sends back their values as plain data;
- the rest, ``assert abs(_rlkit_v(0) - 1.414) < 1e-3``, goes to phase 2, which decodes a value when
  evaluation reaches its lookup (so ``and``/``or``/``if`` still skip what they skipped).

A name is the program's when the tests have not bound it (by assignment, import, def, class) and
it is not a builtin, or when a statement run on the program's side bound it. Each statement of the
set-up and of the tests, in order, is one of:

- *test-side*: it touches no name of the program's. It runs in phase 2, and in phase 1 too when it
  is an import or a later leaf uses a name it binds (or, binding nothing, one it reads:
  ``nums.append(4)``), so values the tests only compare against stay out of the program's process;
- *program-side*: one leaf assigned to names (``s = Solution()``, ``res = f(3)``), a leaf as a
  statement (``s.push(3)``), a value of the tests' own put into the program's object
  (``s.size = 3``, ``s.count += 1``) or a ``del`` of it. It runs in phase 1 only; phase 2 re-raises
  what it raised; the names it binds become the program's;
- *rewritten*: anything else, with each leaf replaced by its lookup. Names it binds exist in
  phase 2 only. A leaf that needs a name phase 1 does not have (a loop or comprehension variable,
  a parameter of a function the test defines, a name the checker computed from a value) cannot be
  cut out: the statement becomes a call that fails its test with that reason.

A test-side name bound by an assignment and passed into a leaf becomes the program's afterwards,
since the call may have changed it in place (``nums = [3, 1]; sort_in_place(nums); assert nums == [1, 3]``).
"""

from __future__ import annotations

import ast
import builtins
import copy
import functools
import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

BUILTINS = frozenset(dir(builtins))
VALUE, EFFECT, REFUSE = "_rlkit_v", "_rlkit_do", "_rlkit_refuse"  # the lookups phase 2 defines
_CHAINS = (ast.Call, ast.Attribute, ast.Subscript)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp,
           ast.DictComp, ast.GeneratorExp)
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)
_STAR_IMPORT_REFUSED = frozenset({"antigravity", "this"})  # standard modules whose import does something


@dataclass(frozen=True)
class Step:
    """One thing phase 1 does after the program, in order."""

    kind: str  # "run": a test-side statement later leaves need; "value": evaluate, send the value;
    #            "exec": run a statement (or an expression for its effect), send whether it raised
    index: int  # the value's index for "value"/"exec"; -1 for "run"
    source: str


@dataclass(frozen=True)
class SplitSuite:
    """What each phase runs: ``steps`` in phase 1; ``setup`` and ``tests`` (rewritten) in phase 2."""

    steps: tuple[Step, ...]
    labels: tuple[str, ...]  # per value index: the leaf's source, for reasons
    setup: str
    tests: tuple[str, ...]


@functools.lru_cache(maxsize=256)  # the completions of a group share their row's tests
def split_suite(setup: str, snippets: tuple[str, ...]) -> SplitSuite:
    """Split the set-up and the snippet tests (each any Python statements), in the order they run."""
    splitter = _Splitter()
    setup_out = splitter.block(setup)
    tests_out = tuple(splitter.block(snippet) for snippet in snippets)
    return SplitSuite(splitter.steps(), tuple(splitter.labels), setup_out, tests_out)


class _Refusal(Exception):
    """A statement that cannot be cut apart; the message says why."""


@dataclass
class _Planned:
    kind: str  # as Step.kind
    index: int
    source: str
    uses: frozenset[str]  # test-side names it loads
    binds: frozenset[str] = frozenset()  # "run" entries: the names they bind
    imports: bool = False  # "run" entries: an import (always run: a program may rely on it, it holds no answer)
    included: bool = True  # "run" entries: decided by _Splitter.steps


class _Splitter:
    def __init__(self) -> None:
        self.kinds: dict[str, str] = {}  # "test" | "checker" (phase 2 only) | "program"; unknown: see is_program
        self.data: set[str] = set()  # test-side names bound by assignment: a call may change them in place
        self.plan: list[_Planned] = []
        self.labels: list[str] = []
        self.opaque = ""  # a star import whose names are unknown: no later name can be told apart

    def block(self, source: str) -> str:
        """Phase 2's version of a block of statements; its phase-1 part goes to the plan."""
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return source  # phase 2 compiles it and reports the error as the test's failure
        return "\n".join(self.statement(node) for node in tree.body)

    def statement(self, node: ast.stmt) -> str:
        local = _statement_locals(node)
        bound = _module_bound(node)
        if isinstance(node, ast.ImportFrom) and any(alias.name == "*" for alias in node.names):
            names = _star_names(node)
            if names is None:
                self.opaque = ast.unparse(node)
                return _refuse(f"`{self.opaque}`: which names it binds is not known here; import them by name")
            bound |= names
        if not self.touches(node, local):
            return self.test_side(node, local, bound)
        if self.opaque:  # a name the program would own may be one the import binds
            return _refuse(f"cannot check apart from the program after `{self.opaque}`")
        marks = len(self.plan), len(self.labels)
        try:
            if self.program_side(node, local):
                return self.on_program_side(node, local, bound)
            return self.rewrite(node, local, bound)
        except _Refusal as why:
            del self.plan[marks[0]:], self.labels[marks[1]:]
            self.bind(bound, "checker")
            return _refuse(f"cannot check apart from the program: {why}")

    def test_side(self, node: ast.stmt, local: set[str], bound: set[str]) -> str:
        loads = {name for name in _names(node) if name not in local}
        if any(self.kinds.get(name) == "checker" for name in loads):
            self.bind(bound, "checker")
        else:
            uses = frozenset(name for name in loads if self.kinds.get(name) == "test")
            imports = isinstance(node, (ast.Import, ast.ImportFrom))
            self.plan.append(_Planned("run", -1, ast.unparse(node), uses, frozenset(bound), imports, included=False))
            self.bind(bound, "test")
            if not isinstance(node, _DEFINITIONS):
                self.data |= bound
        return ast.unparse(node)

    def program_side(self, node: ast.stmt, local: set[str]) -> bool:
        """Whether the whole statement runs in phase 1 (see the module docstring for the forms)."""
        if isinstance(node, ast.Expr):
            return self.is_leaf(node.value, local)
        if isinstance(node, ast.Delete):
            return all(self.is_program_target(target, local) for target in node.targets)
        if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) or node.value is None:
            return False
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not all(isinstance(t, ast.Name) or self.is_program_target(t, local) for t in targets):
            return False
        into_program = any(self.is_program_target(t, local) for t in targets)
        own_value = not self.touches(node.value, local)
        if isinstance(node, ast.AugAssign):
            return into_program and (own_value or self.is_leaf(node.value, local))
        return self.is_leaf(node.value, local) or (into_program and own_value)

    def on_program_side(self, node: ast.stmt, local: set[str], bound: set[str]) -> str:
        source = ast.unparse(node)
        uses = self.phase1_uses(node, source, outside=set(), inside=local)
        index = self.add("exec", source, uses)
        self.taint(uses)
        self.bind(bound, "program")
        return f"{EFFECT}({index})"

    def rewrite(self, node: ast.stmt, local: set[str], bound: set[str]) -> str:
        rewriter = _Rewriter(self, local)
        tree = rewriter.visit(copy.deepcopy(node))
        self.taint(rewriter.uses)
        self.bind(bound, "checker")
        # a test-side object changed by a checker-only statement is stale in phase 1
        self.bind({root.id for root in _store_roots(node) if self.kinds.get(root.id) == "test"}, "checker")
        return ast.unparse(tree)

    def phase1_uses(self, node: ast.AST, source: str, outside: set[str], inside: set[str]) -> frozenset[str]:
        """The test-side names phase 1 needs to evaluate ``node``; a _Refusal when it needs one that
        only the test's own statement binds (``outside``) or that only the checker has."""
        needed = set()
        for name in set(_names(node)) - inside:
            if name in outside:
                raise _Refusal(f"`{source}` uses `{name}`, which the test binds itself (a loop or comprehension "
                               "variable, a parameter)")
            if self.kinds.get(name) == "checker":
                raise _Refusal(f"`{source}` uses `{name}`, which the checker computes from the program's values")
            if self.kinds.get(name) == "test":
                needed.add(name)
        return frozenset(needed)

    def add(self, kind: str, source: str, uses: frozenset[str]) -> int:
        index = len(self.labels)
        self.labels.append(source)
        self.plan.append(_Planned(kind, index, source, uses))
        return index

    def taint(self, names: frozenset[str] | set[str]) -> None:
        """Data passed into the program's calls is the program's from now on (it may have changed it)."""
        self.bind({name for name in names if name in self.data}, "program")

    def bind(self, names: set[str], kind: str) -> None:
        for name in names:
            self.kinds[name] = kind
            if kind != "test":
                self.data.discard(name)

    def is_program(self, name: str, local: set[str]) -> bool:
        if name in local:
            return False
        kind = self.kinds.get(name)
        return kind == "program" if kind else name not in BUILTINS

    def touches(self, node: ast.AST, local: set[str]) -> bool:
        return any(self.is_program(name, local) for name in _names(node))

    def is_leaf(self, node: ast.AST, local: set[str]) -> bool:
        if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)) or not isinstance(node, (ast.Name, *_CHAINS)):
            return False
        root = _chain_root(node)
        return root is not None and self.is_program(root.id, local)

    def is_program_target(self, target: ast.expr, local: set[str]) -> bool:
        """A chain into the program's object (``s.size``, ``s.items[0]``) or a name already the program's."""
        if isinstance(target, ast.Name):
            return self.kinds.get(target.id) == "program" and target.id not in local
        root = _chain_root(target)
        return isinstance(target, _CHAINS) and root is not None and self.is_program(root.id, local)

    def steps(self) -> tuple[Step, ...]:
        """Phase 1's steps. A test-side statement is among them when it is an import, when a later
        step needs a name it binds, or when, binding nothing, it reads one (``nums.append(4)`` may
        change it); one that binds other names from a needed one (``expected = sorted(nums)``) and
        a definition nothing needs (a reference solution) stay out."""
        needed: set[str] = set()
        for entry in reversed(self.plan):
            if entry.kind != "run":
                needed |= entry.uses
            elif entry.binds & needed or (not entry.binds and entry.uses & needed) or entry.imports:
                entry.included = True
                needed |= entry.uses
        return tuple(Step(e.kind, e.index, e.source) for e in self.plan if e.included)


class _Rewriter(ast.NodeTransformer):
    """Replaces each leaf of a statement with its lookup and plans its evaluation in phase 1."""

    def __init__(self, splitter: _Splitter, local: set[str]):
        self.splitter, self.local = splitter, local
        self.uses: set[str] = set()

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if self.splitter.is_leaf(node.value, self.local):  # a call made for its effect: its value is not needed
            node.value = self.leaf(node.value, "exec")
            return node
        return self.generic_visit(node)

    def visit_chain(self, node: ast.expr) -> ast.AST:
        if isinstance(getattr(node, "ctx", None), (ast.Store, ast.Del)) and not isinstance(node, ast.Name):
            root = _chain_root(node)
            if root is not None and self.splitter.is_program(root.id, self.local):
                raise _Refusal(f"`{ast.unparse(node)}` changes the program's object in a statement the checker runs")
        elif self.splitter.is_leaf(node, self.local):
            return self.leaf(node, "value")
        return self.generic_visit(node)

    visit_Name = visit_Attribute = visit_Subscript = visit_Call = visit_chain

    def leaf(self, node: ast.expr, kind: str) -> ast.Call:
        source = ast.unparse(node)
        uses = self.splitter.phase1_uses(node, source, outside=self.local, inside=_bound(node))
        self.uses |= uses
        index = self.splitter.add(kind, source, uses)
        return ast.Call(ast.Name(VALUE if kind == "value" else EFFECT, ast.Load()), [ast.Constant(index)], [])


def _refuse(why: str) -> str:
    """Phase 2's stand-in for a statement that cannot be cut apart: it fails its test with ``why``."""
    return f"{REFUSE}({why!r})"


def _chain_root(node: ast.AST) -> ast.Name | None:
    while isinstance(node, _CHAINS):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node if isinstance(node, ast.Name) else None


def _names(node: ast.AST) -> Iterator[str]:
    """Every name the node reads or deletes, nested scopes included."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Load, ast.Del)):
            yield sub.id


def _bound(node: ast.AST, nested: bool = True) -> set[str]:
    """Names the node binds; with ``nested`` False only those of the scope it runs in."""
    names: set[str] = set()
    todo = [node]
    while todo:
        sub = todo.pop()
        if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            names.add(sub.id)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)
        elif isinstance(sub, (ast.Import, ast.ImportFrom)):
            names |= {alias.asname or alias.name.split(".")[0] for alias in sub.names if alias.name != "*"}
        elif isinstance(sub, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and sub.name:
            names.add(sub.name)
        elif isinstance(sub, ast.MatchMapping) and sub.rest:
            names.add(sub.rest)
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(sub.name)
        if nested or sub is node or not isinstance(sub, _SCOPES):
            todo.extend(ast.iter_child_nodes(sub))
    return names


def _module_bound(node: ast.stmt) -> set[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    return _bound(node, nested=False)


def _statement_locals(node: ast.stmt) -> set[str]:
    """Names a statement binds that its own reads may see: all it binds, except that an
    assignment's value is evaluated before its targets are bound, and ``del`` binds nothing."""
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        return _bound(node.value) if node.value is not None else set()
    if isinstance(node, ast.Delete):
        return set()
    return _bound(node)


def _store_roots(node: ast.stmt) -> Iterator[ast.Name]:
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Attribute, ast.Subscript)) and isinstance(sub.ctx, (ast.Store, ast.Del)):
            root = _chain_root(sub)
            if root is not None:
                yield root


def _star_names(node: ast.ImportFrom) -> set[str] | None:
    """The names ``from <standard module> import *`` binds, or None where that is not known here."""
    top = (node.module or "").split(".")[0]
    if node.level or top not in sys.stdlib_module_names or top in _STAR_IMPORT_REFUSED:
        return None
    try:
        module = importlib.import_module(node.module)
    except Exception:
        return None
    names = getattr(module, "__all__", None) or [name for name in dir(module) if not name.startswith("_")]
    return {str(name) for name in names}
