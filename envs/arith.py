"""``arith``: integer arithmetic with exact answers, a difficulty knob and a held-out split.

Prompts look like ``23+58=`` and the answer is the decimal result (``81``).

Difficulty levels:
    1: a + b with 0 <= a, b <= 99
    2: a ± b with 0 <= a, b <= 99 (subtraction keeps the result non-negative)
    3: a ± b with 0 <= a, b <= 999 (likewise)
    4: a ± b ± c with 0 <= a, b, c <= 99 (results may be negative)
    5: a * b with 0 <= a <= 99 and 0 <= b <= 9 (products up to 891)
"""

from __future__ import annotations

import random
from typing import Any

import rlkit
from rlkit.envs.base import Environment

LEVELS = (1, 2, 3, 4, 5)


def _problem(rng: random.Random, difficulty: int) -> str:
    if difficulty == 5:
        return f"{rng.randint(0, 99)}*{rng.randint(0, 9)}"
    if difficulty == 4:
        a, b, c = (rng.randint(0, 99) for _ in range(3))
        return f"{a}{rng.choice('+-')}{b}{rng.choice('+-')}{c}"
    top = 999 if difficulty == 3 else 99
    a, b = rng.randint(0, top), rng.randint(0, top)
    op = "+" if difficulty == 1 else rng.choice("+-")
    if op == "-" and b > a:
        a, b = b, a
    return f"{a}{op}{b}"


def solve(expression: str) -> int:
    """Evaluate non-negative integers joined by ``+``, ``-`` and ``*``, with ``*`` binding tighter."""
    total, sign = 0, 1
    for term, op in _terms(expression):
        total += sign * term
        sign = 1 if op == "+" else -1
    return total


def _terms(expression: str) -> list[tuple[int, str]]:
    """Split on ``+``/``-`` into (product, following operator) pairs; ``eval`` is never used."""
    terms: list[tuple[int, str]] = []
    product, number = 1, ""
    for ch in expression + "+":
        if ch.isdigit():
            number += ch
            continue
        if ch not in "+-*" or not number:
            raise ValueError(f"cannot read {expression!r} at {ch!r}")
        product, number = product * int(number), ""
        if ch != "*":
            terms.append((product, ch))
            product = 1
    return terms


@rlkit.env("arith")
class ArithEnv(Environment):
    """Integer arithmetic with exact answers; difficulty 1-5, seeded, held-out eval split."""

    default_rewards = ("exact_match",)
    required_columns = ("answer",)

    def __init__(self, difficulty: int = 1, train_size: int = 20000, eval_size: int = 200, seed: int = 0):
        if difficulty not in LEVELS:
            raise ValueError(f"difficulty must be one of {', '.join(map(str, LEVELS))}, got {difficulty!r}")
        if train_size < 1 or eval_size < 1:
            raise ValueError("train_size and eval_size must be >= 1")
        self.difficulty, self.train_size, self.eval_size, self.seed = difficulty, train_size, eval_size, seed

    def dataset(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "eval"):
            raise ValueError(f"unknown split {split!r}; arith has 'train' and 'eval'")
        held_out = self._draw(random.Random(f"arith-eval-{self.seed}-{self.difficulty}"), self.eval_size, set())
        if split == "eval":
            return [self._row(p) for p in held_out]
        train_rng = random.Random(f"arith-train-{self.seed}-{self.difficulty}")
        return [self._row(p) for p in self._draw(train_rng, self.train_size, set(held_out), unique=False)]

    def _draw(self, rng: random.Random, n: int, exclude: set[str], unique: bool = True) -> list[str]:
        problems: list[str] = []
        seen: set[str] = set()
        attempts = 0
        while len(problems) < n:
            attempts += 1
            if attempts > 50 * n + 10_000:
                raise ValueError(f"difficulty {self.difficulty} has too few distinct problems for {n} rows")
            p = _problem(rng, self.difficulty)
            if p in exclude or (unique and p in seen):
                continue
            seen.add(p)
            problems.append(p)
        return problems

    @staticmethod
    def _row(expression: str) -> dict[str, Any]:
        return {"prompt": f"{expression}=", "answer": str(solve(expression))}
