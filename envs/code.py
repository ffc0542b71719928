"""``code``: write a Python function, scored by running tests in the sandbox (``code_exec``).

With ``path`` the problems come from a JSONL file (one object per line with a prompt column and a
tests column, see ``rlkit.rewards.code_exec`` for the forms tests may take); ``eval_path`` gives
held-out problems, else a seeded ``eval_fraction`` of the file is held out. Without ``path`` a
bundled set of easy problems is generated from templates, e.g. "Write a Python function
`add3(x)` that returns x + 3." with three ``assert`` tests each; train and eval problems are
disjoint (no function appears in both). Rows carry ``prompt``, ``tests`` (text) and, for the
bundled set, a reference ``solution``.
"""

from __future__ import annotations

import json
import math
import random
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import rlkit
from rlkit.envs.base import Environment
from rlkit.prompts import NumberedRows

INSTRUCTION = "Answer with the function in a ```python code block."


@dataclass(frozen=True)
class _Template:
    """One family of problems; ``params`` lists every instance, the rest are format strings."""

    name: str  # function name, formatted with the parameters
    arg: str
    task: str  # what the function returns
    expression: str  # the reference solution's return expression
    params: tuple[dict[str, Any], ...]
    reference: Callable[..., Callable[[Any], Any]]  # parameters -> the function itself
    inputs: Callable[[random.Random, dict[str, Any]], Any]


def _int(rng: random.Random, p: dict[str, Any]) -> int:
    return rng.randint(-50, 100)


def _word(rng: random.Random, p: dict[str, Any]) -> str:
    letters = "abcde" + p.get("c", "")
    return "".join(rng.choice(letters) for _ in range(rng.randint(0, 8)))


def _list(rng: random.Random, p: dict[str, Any]) -> list[int]:
    return [rng.randint(-9, 20) for _ in range(p["k"] + rng.randint(0, 4))]


TEMPLATES = (
    _Template("add{k}", "x", "x + {k}", "x + {k}", tuple({"k": k} for k in range(1, 51)),
              lambda k: lambda x: x + k, _int),
    _Template("minus{k}", "x", "x - {k}", "x - {k}", tuple({"k": k} for k in range(1, 51)),
              lambda k: lambda x: x - k, _int),
    _Template("times{k}", "x", "x multiplied by {k}", "x * {k}", tuple({"k": k} for k in range(2, 31)),
              lambda k: lambda x: x * k, _int),
    _Template("mod{k}", "x", "the remainder of x divided by {k} (Python's % operator)", "x % {k}",
              tuple({"k": k} for k in range(2, 21)), lambda k: lambda x: x % k, _int),
    _Template("divisible_by_{k}", "n", "True if n is divisible by {k}, else False", "n % {k} == 0",
              tuple({"k": k} for k in range(2, 21)), lambda k: lambda n: n % k == 0,
              lambda rng, p: rng.choice([rng.randint(-50, 100), p["k"] * rng.randint(-5, 9)])),
    _Template("count_{c}", "s", "how many times the letter '{c}' occurs in the string s", "s.count({c!r})",
              tuple({"c": c} for c in string.ascii_lowercase), lambda c: lambda s: s.count(c), _word),
    _Template("repeat{k}", "s", "the string s repeated {k} times", "s * {k}", tuple({"k": k} for k in range(2, 10)),
              lambda k: lambda s: s * k, _word),
    _Template("sum_first_{k}", "xs", "the sum of the first {k} numbers of the list xs", "sum(xs[:{k}])",
              tuple({"k": k} for k in range(1, 7)), lambda k: lambda xs: sum(xs[:k]), _list),
    _Template("clamp_{lo}_{hi}", "x", "x limited to the range {lo} to {hi} (the nearer bound when x is outside)",
              "min(max(x, {lo}), {hi})", tuple({"lo": lo, "hi": lo + w} for lo in range(0, 21) for w in (5, 10, 20)),
              lambda lo, hi: lambda x: min(max(x, lo), hi), _int),
)


def bundled_problem(template: _Template, params: dict[str, Any], tests_per_problem: int = 3) -> dict[str, Any]:
    """One generated row: prompt, tests (assert statements, one per line) and a reference solution."""
    name = template.name.format(**params)
    reference = template.reference(**params)
    rng = random.Random(f"code-inputs-{name}")  # the same problem always gets the same tests
    seen: list[Any] = []
    for _ in range(100 * tests_per_problem):  # distinct inputs; every template has plenty
        if len(seen) == tests_per_problem:
            break
        value = template.inputs(rng, params)
        if value not in seen:
            seen.append(value)
    tests = "\n".join(f"assert {name}({v!r}) == {reference(v)!r}" for v in seen)
    prompt = f"Write a Python function `{name}({template.arg})` that returns {template.task.format(**params)}.\n{INSTRUCTION}"
    solution = f"def {name}({template.arg}):\n    return {template.expression.format(**params)}\n"
    return {"prompt": prompt, "tests": tests, "solution": solution}


def bundled_pool() -> list[tuple[_Template, dict[str, Any]]]:
    return [(t, p) for t in TEMPLATES for p in t.params]


@rlkit.env("code")
class CodeEnv(Environment):
    """Python functions checked by tests: a JSONL file (``path``) or a bundled generated set."""

    default_rewards = ("code_exec",)
    required_columns = ("tests",)
    list_columns = ("tests",)

    def __init__(self, path: str | None = None, eval_path: str | None = None, prompt_column: str = "prompt",
                 tests_column: str = "tests", eval_fraction: float = 0.1, train_size: int = 200,
                 eval_size: int = 40, seed: int = 0):
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
        if train_size < 1 or eval_size < 1:
            raise ValueError("train_size and eval_size must be >= 1")
        pool = len(bundled_pool())
        if path is None and train_size + eval_size > pool:
            raise ValueError(f"the bundled set has {pool} problems; train_size + eval_size = {train_size + eval_size}")
        self.path, self.eval_path = path, eval_path
        self.prompt_column, self.tests_column = prompt_column, tests_column
        self.eval_fraction, self.train_size, self.eval_size, self.seed = eval_fraction, train_size, eval_size, seed

    def dataset(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "eval"):
            raise ValueError(f"unknown split {split!r}; code has 'train' and 'eval'")
        if self.path is None:
            return self._bundled(split)
        if split == "eval" and self.eval_path is not None:
            return self._read(self.eval_path)
        rows = self._read(self.path)
        if self.eval_path is not None:
            return rows
        return self._split_file(rows, split)

    def _bundled(self, split: str) -> list[dict[str, Any]]:
        pool = bundled_pool()
        random.Random(f"code-split-{self.seed}").shuffle(pool)
        chosen = pool[: self.eval_size] if split == "eval" else pool[self.eval_size: self.eval_size + self.train_size]
        return [bundled_problem(t, p) for t, p in chosen]

    def _split_file(self, rows: list[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        """A seeded hold-out: ``eval_fraction`` of the rows (at least one, and never all but of one row)."""
        if len(rows) < 2:
            return rows
        order = list(range(len(rows)))
        random.Random(f"code-file-split-{self.seed}").shuffle(order)
        n_eval = min(len(rows) - 1, max(1, math.ceil(len(rows) * self.eval_fraction)))
        held_out = set(order[:n_eval])
        keep = [i for i in range(len(rows)) if (i in held_out) == (split == "eval")]
        return NumberedRows.subset(rows, keep, source=str(self.path))  # bad rows named by their file line

    def _read(self, path: str) -> list[dict[str, Any]]:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"code env: no such file {file}")
        rows = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{file}, line {number}: not valid JSON ({exc.msg})") from exc
            rows.append(self._row(row))
        if not rows:
            raise ValueError(f"code env: {file} holds no rows")
        return rows

    def _row(self, row: Any) -> Any:
        """Rename the configured columns to ``prompt``/``tests``; lists of tests become JSON text.

        Missing columns are left missing: row checking reports them with the row's number.
        """
        if not isinstance(row, dict):
            return row
        row = dict(row)
        for column, canonical in ((self.prompt_column, "prompt"), (self.tests_column, "tests")):
            if column != canonical and column in row:
                row[canonical] = row.pop(column)
        if isinstance(row.get("tests"), (list, tuple)):
            row["tests"] = json.dumps(list(row["tests"]))
        return row
