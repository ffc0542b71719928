"""Calling reward functions with TRL's signature and combining them with weights.

``fn(prompts, completions, completion_ids=..., **dataset_columns) -> list[float | None]``.
A function that raises, or returns something that is not a finite number per completion, does
not crash the run: its values become ``None`` for that call, the failure is counted, and the first
offending sample is kept for inspection. ``None`` entries are left out of the weighted sum.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

RewardFn = Callable[..., list]


@dataclass
class RewardOutcome:
    totals: list[float]
    components: list[dict[str, float | None]]
    failures: dict[str, int] = field(default_factory=dict)
    failure_examples: list[dict[str, Any]] = field(default_factory=list)


class RewardRunner:
    def __init__(self, funcs: list[tuple[str, RewardFn]], weights: list[float] | None = None):
        if not funcs:
            raise ValueError("at least one reward function is needed")
        self.funcs = funcs
        self.weights = weights if weights is not None else [1.0] * len(funcs)

    def score(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
              rows: list[dict[str, Any]]) -> RewardOutcome:
        columns = _columns(rows)
        outcome = RewardOutcome(totals=[0.0] * len(completions), components=[{} for _ in completions])
        for (name, fn), weight in zip(self.funcs, self.weights):
            values, error = _call(fn, prompts, completions, completion_ids, columns)
            if error is not None:
                outcome.failures[name] = outcome.failures.get(name, 0) + 1
                outcome.failure_examples.append({"reward": name, "error": error,
                                                 "prompt": prompts[0], "completion": completions[0]})
                print(f"warning: reward {name!r} failed: {error}", file=sys.stderr)
            for i, value in enumerate(values):
                outcome.components[i][name] = value
                if value is not None:
                    outcome.totals[i] += weight * value
        return outcome


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    keys = set().union(*(row.keys() for row in rows)) - {"prompt", "completions", "completion_ids"}
    return {key: [row.get(key) for row in rows] for key in sorted(keys)}


def _call(fn: RewardFn, prompts, completions, completion_ids, columns) -> tuple[list[float | None], str | None]:
    n = len(completions)
    try:
        raw = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
    except Exception as exc:  # a user's reward must never take the run down
        return [None] * n, f"{type(exc).__name__}: {exc}"
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        got = f"{type(raw).__name__} of length {len(raw)}" if isinstance(raw, (list, tuple)) else repr(raw)[:80]
        return [None] * n, f"expected a list of {n} numbers, got {got}"
    values: list[float | None] = []
    bad = None
    for value in raw:
        if value is None:
            values.append(None)
        elif isinstance(value, (int, float)) and math.isfinite(value):  # bools count as 0/1
            values.append(float(value))
        else:
            values.append(None)
            bad = bad or f"non-numeric or non-finite value {value!r}"
    return values, bad
