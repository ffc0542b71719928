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


def _model_mistakes(split: str) -> dict[str, str]:
    """prompt -> the bundled model's sampled wrong answer, from the shipped pairs."""
    import json
    from pathlib import Path

    import rlkit.assets

    path = Path(rlkit.assets.__file__).parent / "arith-pairs" / f"{split}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["prompt"]: row["rejected"] for row in rows if row["source"] == "sampled"}


def near_miss(answer: int, rng: random.Random) -> str:
    """A wrong answer close to ``answer``, as text."""
    text = str(abs(answer))
    options = [answer + d for d in (1, -1, 2, -2, 10, -10)]
    if len(text) > 1 and text[-1] != text[-2]:  # the last two digits swapped
        options.append(int(("-" if answer < 0 else "") + text[:-2] + text[-1] + text[-2]))
    return str(rng.choice([o for o in options if o != answer and (o >= 0 or answer < 0)]))


@rlkit.env("arith")
class ArithEnv(Environment):
    """Integer arithmetic with exact answers; difficulty 1-5, seeded, held-out eval split.

    ``chat: true`` gives the rows in TRL's conversational format: the problem as a user message,
    the answer in ``answer`` and in ``solution`` (the column TRL's ``accuracy_reward`` reads)."""

    default_rewards = ("exact_match",)
    required_columns = ("answer",)

    def __init__(self, difficulty: int = 1, train_size: int = 20000, eval_size: int = 200, seed: int = 0,
                 pair_noise: float = 0.0, pair_rejected: str = "model", pair_noise_seed: int = 0,
                 chat: bool = False):
        if difficulty not in LEVELS:
            raise ValueError(f"difficulty must be one of {', '.join(map(str, LEVELS))}, got {difficulty!r}")
        if train_size < 1 or eval_size < 1:
            raise ValueError("train_size and eval_size must be >= 1")
        if not 0 <= pair_noise <= 1:
            raise ValueError(f"pair_noise must be in [0, 1], got {pair_noise!r}")
        self.difficulty, self.train_size, self.eval_size, self.seed = difficulty, train_size, eval_size, seed
        if pair_rejected not in ("model", "near_miss"):
            raise ValueError(f"pair_rejected must be model or near_miss, got {pair_rejected!r}")
        self.pair_noise, self.pair_rejected, self.pair_noise_seed = pair_noise, pair_rejected, pair_noise_seed
        self.chat = chat

    def dataset(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "eval"):
            raise ValueError(f"unknown split {split!r}; arith has 'train' and 'eval'")
        held_out = self._draw(random.Random(f"arith-eval-{self.seed}-{self.difficulty}"), self.eval_size, set())
        if split == "eval":
            rows = [self._row(p) for p in held_out]
        else:
            train_rng = random.Random(f"arith-train-{self.seed}-{self.difficulty}")
            rows = [self._row(p) for p in self._draw(train_rng, self.train_size, set(held_out), unique=False)]
        if self.chat:  # TRL's conversational format: the problem as a user message, the answer as `solution`
            rows = [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"],
                     "solution": r["answer"]} for r in rows]
        return rows

    def preference_dataset(self, split: str) -> list[dict[str, Any]]:
        """A pair per row of ``split``: the correct answer against a wrong one.

        ``pair_rejected: model`` takes the bundled tiny-arith model's own most frequent mistake
        on the problem (``rlkit/assets/arith-pairs``, made by ``scripts/make_arith_pairs.py`` for
        the first 4000 training and all held-out problems of difficulty 1, seed 0), where there is
        one; ``near_miss`` (and problems the file lacks) an answer off by 1, 2 or 10, or with two
        digits swapped. In the train split a share ``pair_noise`` of the pairs is flipped, the wrong
        answer marked chosen (``flipped: true``; which ones: ``pair_noise_seed``); the eval split is always clean, so it measures
        the true preference."""
        noise = random.Random(f"arith-pair-noise-{self.seed}-{self.difficulty}-{self.pair_noise_seed}")
        mistakes = _model_mistakes(split) if self.pair_rejected == "model" else {}
        pairs = []
        for row in ArithEnv(self.difficulty, self.train_size, self.eval_size, self.seed).dataset(split):
            wrong = mistakes.get(row["prompt"]) or near_miss(
                int(row["answer"]), random.Random(f"arith-pair-{self.seed}-{row['prompt']}"))
            flipped = split == "train" and noise.random() < self.pair_noise
            chosen, rejected = (wrong, row["answer"]) if flipped else (row["answer"], wrong)
            pairs.append({"prompt": row["prompt"], "chosen": chosen, "rejected": rejected, "answer": row["answer"],
                          "flipped": flipped})
        return pairs

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
