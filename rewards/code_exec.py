"""``code_exec``: run the completion's program against the row's tests in the sandbox.

The program is the last fenced block tagged ``python`` (or ``py``/``python3``) in the
completion, else the last untagged fenced block, else an unterminated ``python`` block at the end
(a cut-off generation), else the whole text.

The ``tests`` column holds one of:

- Python source with ``assert`` statements (``"assert f(1) == 2\\nassert f(2) == 3"``): every
  top-level ``assert`` is one test; other top-level statements (imports, helpers) are set-up run
  before the tests;
- a list whose items are test snippets (each item is one test, any Python statements) or
  input/output pairs ``{"stdin": "1 2\\n", "stdout": "3\\n"}`` (``input``/``output`` are accepted
  too): the program runs once per pair with that standard input, and passes when its output
  equals ``stdout`` up to trailing whitespace on each line and trailing blank lines;
- that list as a JSON string (text columns survive every data format).

The reward is the fraction of tests passed (1.0 or 0.0 with ``all_or_nothing``); a timeout, a
limit or a blocked operation anywhere gives 0.0. Every reason is kept in ``last_reasons`` (None
where all tests passed) and violations and syntax errors are logged at WARNING on the
``rlkit.rewards.code_exec`` logger.

Snippet tests run in two sandboxed processes, so that the program cannot fake a pass
(:mod:`code_checks` cuts the tests apart, :mod:`code_phases` holds both programs):

1. the program, then the calls into it that the tests make, the *leaves* (``f(1)``,
   ``s.method(3)``, ``CONST``, ``f(3)[0]``, with the arguments written inside them). Each value
   goes back as tagged JSON of plain builtin data: None, bool, int, float, complex, str, bytes, and
   lists, tuples, dicts, sets and frozensets of them. An instance of a subclass of one of these
   crosses as its base type's value, read with the base type's own methods; any other object
   (and values past ``max_output_bytes / 2`` in all) cannot cross, and its test fails. An exception
   a leaf raised crosses as its type name and message;
2. the tests, each leaf replaced by a lookup of its value, decoded into fresh builtin objects in a
   second process that runs no code of the program's. A leaf that raised re-raises a builtin
   exception of that name (else a generic ``ProgramError``; ``SystemExit`` and the like fail the
   test). Each test is caught separately, so one failure does not hide the next.

What this guarantees: no comparison of the tests runs in the program's process, and only plain
data comes out of it, so no object of the program's (a lying ``__eq__``, ``__bool__``,
``__hash__`` or ``__ne__``, an ``int`` subclass) reaches a comparison, and nothing the program does
to its own interpreter (patching builtins, ``AssertionError`` or ``operator``, ``sys.exit`` or
``os._exit``, printing lines that look like results, writing files) reaches the checker. The most
a program can choose is the plain values its leaves return. Its limits:

- the program's process holds what the leaves' own arguments hold, and what a test-side statement
  holds when a leaf needs a name it binds (an input list, an import): a table of inputs and
  expected outputs that the asserts index is readable there. Expected values written only in the
  asserts, or in constants the leaves do not use, never reach it;
- statements only the program's side can run (``s = Solution()``, ``res = f(3)``,
  ``s.push(3)``) run there, and the names they bind stay the program's: every later use is a leaf;
- phase 1 evaluates every leaf of a test, also those an ``and``/``or``/``if`` skips in phase 2;
- a builtin name in the tests is the builtin, even where the program defines one of that name;
- tests that cannot be cut apart fail, with the reason: a leaf that uses a loop or comprehension
  variable or a parameter of a function the tests define (``assert all(f(x) == x for x in xs)``,
  a set-up helper that calls the solution with its arguments), a value that is not plain data (a
  generator, an instance of the program's class, the solution function passed to a dataset's
  ``check(candidate)``), an assignment into the program's object inside a compound statement.

Each completion with snippet tests costs two interpreter starts (about 30 ms each); the second is
skipped when the first sent back no value at all (every test then fails with its reason).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import secrets
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import rlkit
from rlkit.rewards import completion_text
from rlkit.rewards.code_checks import SplitSuite, split_suite
from rlkit.sandbox import SandboxLimits, SandboxResult, isolation_layers, run_python

logger = logging.getLogger("rlkit.rewards.code_exec")

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_OPEN_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n((?:(?!```).)*)\Z", re.DOTALL | re.IGNORECASE)
_SENT_TWICE = '["unencodable","a value sent twice (the program wrote a line only the harness writes)"]'


@dataclass
class IOTest:
    stdin: str
    stdout: str


@dataclass
class TestSuite:
    setup: str = ""  # statements run before the snippet tests
    snippets: list[str] = field(default_factory=list)
    io: list[IOTest] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.snippets) + len(self.io)


@dataclass
class Score:
    value: float | None  # None: the row could not be scored (no usable tests)
    reason: str | None  # None: every test passed
    alarming: bool = False  # a violation or a syntax error: worth a warning


def extract_program(completion: str) -> str:
    """The code to run: see the module docstring for the order of preference."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(completion)]
    for wanted in (("python", "py", "python3"), ("",)):
        chosen = [body for lang, body in blocks if lang in wanted]
        if chosen:
            return chosen[-1]
    cut_off = _OPEN_PYTHON_FENCE.search(completion)
    return cut_off.group(1) if cut_off else completion


def parse_tests(value: Any) -> TestSuite:
    """A row's ``tests`` value as a :class:`TestSuite`; ValueError when it holds no usable test."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"tests look like a JSON list but do not parse: {exc}") from exc
    if isinstance(value, str):
        suite = _suite_from_source(value)
    elif isinstance(value, (list, tuple)):
        suite = TestSuite(snippets=[t for t in value if isinstance(t, str)],
                          io=[_io_test(t) for t in value if not isinstance(t, str)])
    else:
        raise ValueError(f"tests must be text or a list, got {type(value).__name__}")
    if suite.count == 0:
        raise ValueError("no tests found (expected assert statements or stdin/stdout pairs)")
    return suite


def _suite_from_source(source: str) -> TestSuite:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise ValueError(f"tests are not valid Python: {exc.msg} (line {exc.lineno})") from exc
    suite = TestSuite()
    setup: list[str] = []
    for node in tree.body:
        text = ast.get_source_segment(source, node) or ""
        (suite.snippets if isinstance(node, ast.Assert) else setup).append(text)
    suite.setup = "\n".join(setup)
    return suite


def _io_test(item: Any) -> IOTest:
    if not isinstance(item, dict):
        raise ValueError(f"a test must be a snippet or a {{stdin, stdout}} mapping, got {type(item).__name__}")
    stdin = item.get("stdin", item.get("input", ""))
    stdout = item.get("stdout", item.get("output"))
    if stdout is None:
        raise ValueError(f"an input/output test needs 'stdout' (or 'output'); keys: {', '.join(item)}")
    return IOTest(str(stdin), str(stdout))


# The two sandboxed programs' code (standard library only), run as ``__main__`` before the call.
_PHASES = Path(__file__).with_name("code_phases.py").read_text(encoding="utf-8")


def phase1_program(program: str, split: SplitSuite, marker: str, budget: int) -> str:
    """Phase 1: the program, then the calls into it cut out of the tests, sending their values."""
    steps = [(step.kind, step.index, step.source) for step in split.steps]
    return _PHASES + f"\nrun_program({program!r}, {steps!r}, {marker!r}, {budget!r})\n"


def checker_program(split: SplitSuite, values: list[str | None], missing: str, marker: str) -> str:
    """Phase 2: the rewritten tests, with phase 1's values (JSON text, None where none came) as a literal."""
    return _PHASES + (f"\ncheck({values!r}, {list(split.labels)!r}, {missing!r}, {split.setup!r}, "
                      f"{list(split.tests)!r}, {marker!r})\n")


@rlkit.reward("code_exec")
class CodeExecReward:
    """Fraction of the row's ``tests`` the completion's program passes, run in :mod:`rlkit.sandbox`.

    ``timeout_s`` (5.0): wall-clock seconds per program run (CPU seconds are capped the same).
    ``memory_mb`` (512): address-space limit. ``max_output_bytes`` (1,000,000): stdout+stderr
    cap per run. ``max_parallel`` (8): completions run at once (the timeout is wall-clock, so
    more than the cores is fine: a looping program only slows the others). ``all_or_nothing`` (False): 1.0
    only when every test passes. ``use_namespaces`` (True): without the kernel boundary
    (``sandbox.require: any``), new user/net/pid/ipc namespaces where ``unshare`` works.
    ``disk_mb`` (64): the program's whole working directory (the boundary's tmpfs). ``call_budget_s`` (25.0; 0 = none): the whole call's time budget; a
    completion that could not finish within it is not run and scores 0.0, so a batch of looping
    programs ends before the reward pool's ``rewards.timeout_s`` (30 s) would fail the whole call.
    """

    def __init__(self, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 1_000_000,
                 max_parallel: int = 8, all_or_nothing: bool = False, use_namespaces: bool = True,
                 call_budget_s: float = 25.0, disk_mb: int = 64):
        if max_parallel < 1:
            raise ValueError(f"code_exec: max_parallel must be >= 1, got {max_parallel}")
        if call_budget_s < 0:
            raise ValueError(f"code_exec: call_budget_s must be >= 0 (0 = no budget), got {call_budget_s}")
        self.call_budget_s = float(call_budget_s)
        try:
            self.limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb, disk_mb=disk_mb,
                                        max_output_bytes=max_output_bytes, use_namespaces=use_namespaces)
        except ValueError as exc:
            raise ValueError(f"code_exec: {exc}") from exc
        # the layers its programs get here, said once in the run's log; where the policy requires
        # the kernel boundary (sandbox.require: kernel) and it is missing, this raises, naming what is
        self.layers = isolation_layers(self.limits)
        print(f"code_exec: programs run with {', '.join(self.layers)}", file=sys.stderr, flush=True)
        if not any(layer.startswith(("mount-namespace", "service")) for layer in self.layers):
            logger.warning("code_exec: no kernel boundary here (sandbox.require: any): the audit hook and "
                           "rlimits guard against accidents, not against a program set on getting out")
        self.max_parallel = max_parallel
        self.all_or_nothing = bool(all_or_nothing)
        self.last_reasons: list[str | None] = []
        self.__name__ = "code_exec"  # TRL names reward functions by __name__

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], tests: Sequence[Any] | None = None,
                 **kwargs: Any) -> list[float | None]:
        if tests is None:
            raise ValueError("code_exec needs a 'tests' column in the dataset")
        jobs = [(completion_text(c), t) for c, t in zip(completions, tests)]
        deadline = time.monotonic() + self.call_budget_s if self.call_budget_s else math.inf
        with ThreadPoolExecutor(max_workers=min(self.max_parallel, max(1, len(jobs)))) as pool:
            scores = list(pool.map(lambda job: self._score_before(deadline, *job), jobs))
        self.last_reasons = [s.reason for s in scores]
        for i, s in enumerate(scores):
            if s.alarming:
                logger.warning("code_exec: completion %d scored %s: %s", i, s.value, s.reason)
            elif s.reason:
                logger.debug("code_exec: completion %d scored %s: %s", i, s.value, s.reason)
        return [s.value for s in scores]

    def _score_before(self, deadline: float, completion: str, tests: Any) -> Score:
        """:meth:`score`, unless a run started now could end after ``deadline``: the whole call must
        finish within ``call_budget_s``, under the reward pool's ``rewards.timeout_s``, or every
        completion of the batch would count as failed because a few programs looped."""
        if time.monotonic() + self.limits.timeout_s > deadline:
            return Score(0.0, f"not run: the call's time budget ({self.call_budget_s:g}s) ran out "
                              "(raise call_budget_s together with rewards.timeout_s)", alarming=True)
        return self.score(completion, tests)

    def score(self, completion: str, tests: Any) -> Score:
        """The score of one completion against one row's tests (None when the row has no usable test)."""
        try:
            suite = parse_tests(tests)
            split = split_suite(suite.setup, tuple(suite.snippets))
        except ValueError as exc:
            return Score(None, f"bad tests column: {exc}", alarming=True)
        except (RecursionError, MemoryError) as exc:  # a pathological tests value must not end the call
            return Score(None, f"bad tests column: cannot cut the tests apart ({type(exc).__name__})", alarming=True)
        program = extract_program(completion)
        passed, reason, alarming = 0, None, False
        if suite.snippets:
            passed, reason, alarming = self._run_snippets(program, split, len(suite.snippets))
        for i, case in enumerate(suite.io):
            if alarming:
                break
            ok, why, alarming = self._run_io(program, case, i)
            passed += ok
            reason = reason or why
        if alarming:
            return Score(0.0, reason, alarming=True)
        value = passed / suite.count
        if self.all_or_nothing:
            value = float(passed == suite.count)
        return Score(value, None if passed == suite.count else f"{passed}/{suite.count} tests passed; {reason}")

    def _run_snippets(self, program: str, split: SplitSuite, count: int) -> tuple[int, str | None, bool]:
        """(tests passed, first problem, whether it was a violation or syntax error)."""
        marker = _marker()
        first = run_python(phase1_program(program, split, marker, self.limits.max_output_bytes // 2),
                           limits=self.limits)
        if first.violation:
            return 0, first.reason, True
        values, problems, syntax_error = _phase1_output(first.stdout, marker, len(split.labels))
        if syntax_error:
            return 0, syntax_error, True
        if split.labels and values.count(None) == len(values):  # nothing to check: every test fails
            return 0, (problems or [f"no test results ({_ended(first)})"])[0], False
        missing = f"no value came back: the program's run ended first ({first.reason or 'exit status 0'})"
        marker = _marker()  # made after phase 1, so nothing the program printed can carry it
        second = run_python(checker_program(split, values, missing, marker), limits=self.limits)
        if second.violation:
            return 0, second.reason, True
        results = _tagged_lines(second.stdout, marker)
        passed = {rest for kind, rest in results if kind == "pass"}
        problems += [rest.split(" ", 1)[1] if kind == "fail" else f"{kind} {rest}" for kind, rest in results
                     if kind != "pass"]
        if len(passed) < count and not problems:
            problems = [f"no test results ({_ended(second)})"]
        return len(passed & {str(i) for i in range(count)}), (problems or [None])[0], False

    def _run_io(self, program: str, case: IOTest, index: int) -> tuple[bool, str | None, bool]:
        result = run_python(program, stdin=case.stdin, limits=self.limits)
        if result.violation:
            return False, result.reason, True
        if result.reason.startswith("syntax error"):
            return False, result.reason, True
        if _normalized(result.stdout) == _normalized(case.stdout):
            return True, None, False
        detail = result.reason or f"output {result.stdout[:80]!r} != expected {case.stdout[:80]!r}"
        return False, f"io test {index}: {detail}", False


def _normalized(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()


def _phase1_output(stdout: str, marker: str, count: int) -> tuple[list[str | None], list[str], str | None]:
    """(each value's JSON text, None where none came; problems; the syntax error, if any)."""
    values: list[str | None] = [None] * count
    problems = []
    for kind, rest in _tagged_lines(stdout, marker):
        index, _, text = rest.partition(" ")
        if kind == "syntax-error":
            return values, problems, "syntax error: " + rest
        if kind == "solution-error":
            problems.append(f"{kind} {rest}")
        elif kind == "value" and len(index) < 10 and index.isascii() and index.isdigit() and int(index) < count:
            # only the harness writes these lines; a second copy means the program wrote one
            values[int(index)] = _well_formed(text) if values[int(index)] is None else _SENT_TWICE
    return values, problems, None


def _well_formed(text: str) -> str:
    """Phase 1's JSON text when it parses, else a marker the checker reports as malformed."""
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return '["malformed"]'
    return text


def _marker() -> str:
    return "rlkit-" + secrets.token_hex(8)


def _tagged_lines(stdout: str, marker: str) -> list[tuple[str, str]]:
    """(kind, rest) of each line a phase wrote with ``marker``."""
    lines = [line[len(marker) + 1:] for line in stdout.splitlines() if line.startswith(marker + " ")]
    return [(line.partition(" ")[0], line.partition(" ")[2]) for line in lines]


def _ended(result: SandboxResult) -> str:
    return result.reason or "the program exited before the tests ran"
