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

The reward is the fraction of tests passed (1.0 or 0.0 with ``all_or_nothing``). Snippet tests
run in one process after the program (each caught separately, so one failure does not hide the
next); a timeout, a limit or a blocked operation anywhere gives 0.0. Every reason is kept in
``last_reasons`` (None where all tests passed) and violations and syntax errors are logged at
WARNING on the ``rlkit.rewards.code_exec`` logger.

The tests run in the same interpreter as the program, so a program that goes out of its way
(objects whose ``__eq__`` always returns True, reading the harness's constants) can fake a
pass: look at high-reward samples now and then.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Sequence

import rlkit
from rlkit.rewards import completion_text
from rlkit.sandbox import SandboxLimits, SandboxResult, run_python

logger = logging.getLogger("rlkit.rewards.code_exec")

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_OPEN_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n((?:(?!```).)*)\Z", re.DOTALL | re.IGNORECASE)


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


# Runs inside the sandbox after the program; results go to fd 1 as lines tagged with a random
# marker, written with os.write so a program that replaces sys.stdout does not hide them.
_HARNESS = '''
def _rlkit_harness(source, setup, tests, marker, _write=__import__("os").write):
    def emit(text):
        _write(1, ("\\n" + marker + " " + text + "\\n").encode("utf-8", "replace"))
    try:
        code = compile(source, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        emit("syntax-error %s (line %s)" % (getattr(exc, "msg", exc), getattr(exc, "lineno", "?")))
        return
    namespace = {"__name__": "__main__"}
    for label, text in (("solution", code), ("setup", setup)):
        try:
            exec(text, namespace)
        except MemoryError:
            raise
        except BaseException as exc:  # tests still run: what was defined before the error may pass
            emit("%s-error %s: %s" % (label, type(exc).__name__, str(exc)[:200]))
    for i, test in enumerate(tests):
        try:
            exec(compile(test, "<test %d>" % i, "exec"), namespace)
            emit("pass %d" % i)
        except MemoryError:
            raise
        except BaseException as exc:
            detail = str(exc)[:200]
            emit("fail %d test %d failed: %s%s" % (i, i, type(exc).__name__, ": " + detail if detail else ""))
'''


def harness_program(program: str, suite: TestSuite, marker: str) -> str:
    """The sandboxed program: the harness, called with the solution and tests as string literals."""
    return _HARNESS + f"\n_rlkit_harness({program!r}, {suite.setup!r}, {suite.snippets!r}, {marker!r})\n"


@rlkit.reward("code_exec")
class CodeExecReward:
    """Fraction of the row's ``tests`` the completion's program passes, run in :mod:`rlkit.sandbox`.

    ``timeout_s`` (5.0): wall-clock seconds per program run (CPU seconds are capped the same).
    ``memory_mb`` (512): address-space limit. ``max_output_bytes`` (1,000,000): stdout+stderr
    cap per run. ``max_parallel`` (8): completions run at once (the timeout is wall-clock, so
    more than the cores is fine: a looping program only slows the others). ``all_or_nothing`` (False): 1.0
    only when every test passes. ``use_namespaces`` (True): new user/net/pid/ipc namespaces where
    the machine allows them. ``call_budget_s`` (25.0; 0 = none): the whole call's time budget; a
    completion that could not finish within it is not run and scores 0.0, so a batch of looping
    programs ends before the reward pool's ``rewards.timeout_s`` (30 s) would fail the whole call.
    """

    def __init__(self, *, timeout_s: float = 5.0, memory_mb: int = 512, max_output_bytes: int = 1_000_000,
                 max_parallel: int = 8, all_or_nothing: bool = False, use_namespaces: bool = True,
                 call_budget_s: float = 25.0):
        if max_parallel < 1:
            raise ValueError(f"code_exec: max_parallel must be >= 1, got {max_parallel}")
        if call_budget_s < 0:
            raise ValueError(f"code_exec: call_budget_s must be >= 0 (0 = no budget), got {call_budget_s}")
        self.call_budget_s = float(call_budget_s)
        try:
            self.limits = SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb,
                                        max_output_bytes=max_output_bytes, use_namespaces=use_namespaces)
        except ValueError as exc:
            raise ValueError(f"code_exec: {exc}") from exc
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
        except ValueError as exc:
            return Score(None, f"bad tests column: {exc}", alarming=True)
        program = extract_program(completion)
        passed, reason, alarming = 0, None, False
        if suite.snippets:
            passed, reason, alarming = self._run_snippets(program, suite)
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

    def _run_snippets(self, program: str, suite: TestSuite) -> tuple[int, str | None, bool]:
        """(tests passed, first problem, whether it was a violation or syntax error)."""
        marker = "rlkit-" + secrets.token_hex(8)
        result = run_python(harness_program(program, suite, marker), limits=self.limits)
        if result.violation:
            return 0, result.reason, True
        lines = [line[len(marker) + 1:] for line in result.stdout.splitlines() if line.startswith(marker + " ")]
        for line in lines:
            if line.startswith("syntax-error "):
                return 0, "syntax error: " + line[len("syntax-error "):], True
        passed = {line.split()[1] for line in lines if line.startswith("pass ")}
        problems = [line.split(" ", 2)[2] if line.startswith("fail ") else line
                    for line in lines if not line.startswith("pass ")]
        if len(passed) < len(suite.snippets) and not problems:
            problems = [f"no test results ({_ended(result)})"]
        return len(passed & {str(i) for i in range(len(suite.snippets))}), (problems or [None])[0], False

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


def _ended(result: SandboxResult) -> str:
    return result.reason or "the program exited before the tests ran"
