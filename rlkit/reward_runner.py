"""Calling reward functions with TRL's signature and combining them with weights.

``fn(prompts, completions, completion_ids=..., **dataset_columns) -> list[float | None]``.
A reward that raises, hangs, or returns something other than one finite number (or ``None``) per
completion does not crash the run: its bad values become ``None``, the failure is counted, logged
(logger ``rlkit.rewards``, WARNING) and kept as an example for inspection. ``None`` is a reward's
way of saying "not applicable to this sample" (as in TRL): it is no failure, and like every
``None`` it is left out of the weighted sum.

What ``RewardOutcome.failures[name]`` counts, per ``score`` call:

- **one per failed call** of reward ``name``: it raised, ran past the timeout, its process died,
  or it returned something that is not a list with one entry per completion. All its values are
  ``None``; the example kept is the batch's first sample (``"scope": "call"``).
- **one per rejected value** of an otherwise well-formed list: a string, NaN, inf, or any other
  non-number. The example kept is that sample (``"scope": "item"``, with its ``"index"``).

So every counted failure has exactly one entry in ``failure_examples``. This module holds the
logic both executors share (calling one function and checking its output, combining the results);
:class:`RewardRunner` runs it in this process, :mod:`rlkit.reward_pool` in Ray actors.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

RewardFn = Callable[..., list]
logger = logging.getLogger("rlkit.rewards")


@dataclass
class RewardOutcome:
    totals: list[float]
    components: list[dict[str, float | None]]
    failures: dict[str, int] = field(default_factory=dict)
    failure_examples: list[dict[str, Any]] = field(default_factory=list)
    retries: list[dict[str, Any]] = field(default_factory=list)  # calls sent again to an actor out of reach


@dataclass
class RewardBatch:
    """What one reward call receives: the batch plus the dataset columns as keyword lists."""

    prompts: list[Any]
    completions: list[str]
    completion_ids: list[list[int]]
    columns: dict[str, list[Any]]
    # which group (prompt) of the batch each completion belongs to; given only to rewards that name
    # a ``group_ids`` parameter (a reward over a whole group, e.g. ``majority_vote``)
    group_ids: list[int] | None = None

    @classmethod
    def from_rows(cls, prompts, completions, completion_ids, rows: list[dict[str, Any]],
                  group_ids: list[int] | None = None) -> RewardBatch:
        keys = set().union(*(row.keys() for row in rows)) - {"prompt", "completions", "completion_ids", "group_ids"}
        columns = {key: [row.get(key) for row in rows] for key in sorted(keys)}
        return cls(list(prompts), list(completions), list(completion_ids), columns,
                   None if group_ids is None else list(group_ids))


@dataclass
class RewardScores:
    """One reward function's checked values for a batch."""

    values: list[float | None]
    call_error: str | None = None  # the whole call failed; every value is None
    bad_values: dict[int, str] = field(default_factory=dict)  # index -> why that value was rejected

    @classmethod
    def failed(cls, n: int, error: str) -> RewardScores:
        return cls([None] * n, call_error=error)


def resolve_reward_funcs(pairs: list[tuple[str, RewardFn | str | type]],
                         args: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, RewardFn]]:
    """``(name, fn | reference | class)`` -> ``(name, callable)``.

    A string is looked up in the reward registry (a registered name, ``file.py:attr`` or
    ``module:attr``); a class (given or looked up) is instantiated with ``args.get(name, {})``.
    """
    from rlkit.plugins import rewards as registry

    args = args or {}
    resolved = []
    for name, fn in pairs:
        obj = registry.get(fn) if isinstance(fn, str) else fn
        if isinstance(obj, type):
            obj = obj(**args.get(name, {}))
        if not callable(obj):
            raise TypeError(f"reward {name!r} is a {type(obj).__name__}, not a callable")
        resolved.append((name, obj))
    return resolved


def check_weights(weights: list[float] | None, num_funcs: int) -> list[float]:
    if not num_funcs:
        raise ValueError("at least one reward function is needed")
    if weights is None:
        return [1.0] * num_funcs
    if len(weights) != num_funcs:
        raise ValueError(f"rewards.weights has {len(weights)} entries for {num_funcs} reward functions")
    return [float(w) for w in weights]


def score_one(fn: RewardFn, batch: RewardBatch) -> RewardScores:
    """Call ``fn`` on the batch, in this thread, and check what it returned."""
    n = len(batch.completions)
    extra = {"group_ids": batch.group_ids} if wants_group_ids(fn) else {}
    try:
        raw = fn(prompts=batch.prompts, completions=batch.completions, completion_ids=batch.completion_ids,
                 **batch.columns, **extra)
    except (Exception, SystemExit) as exc:  # a user's reward must never take the run down
        return RewardScores.failed(n, f"{type(exc).__name__}: {exc}")
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        got = f"{type(raw).__name__} of length {len(raw)}" if isinstance(raw, (list, tuple)) else \
            f"{type(raw).__name__} {repr(raw)[:80]}"
        return RewardScores.failed(n, f"expected a list of {n} numbers, got {got}")
    scores = RewardScores([])
    for i, value in enumerate(raw):
        if value is None:
            scores.values.append(None)
        elif isinstance(value, numbers.Real) and math.isfinite(value):  # bools count as 0/1
            scores.values.append(float(value))
        else:
            scores.values.append(None)
            kind = "non-finite" if isinstance(value, numbers.Real) else "non-numeric"
            scores.bad_values[i] = f"{kind} value {repr(value)[:80]}"
    return scores


def wants_group_ids(fn: RewardFn) -> bool:
    """Whether ``fn`` names a ``group_ids`` parameter (a reward that compares a group's completions)."""
    try:
        return "group_ids" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


def score_one_with_timeout(name: str, fn: RewardFn, batch: RewardBatch, timeout_s: float | None) -> RewardScores:
    """:func:`score_one` on a daemon thread joined for ``timeout_s`` (None or <= 0: no limit, and no
    thread). A call still running then is abandoned: Python cannot kill a thread."""
    if not timeout_s or timeout_s <= 0:
        return score_one(fn, batch)
    result: list[RewardScores] = []
    thread = threading.Thread(target=lambda: result.append(score_one(fn, batch)), daemon=True,
                              name=f"reward-{name}")
    thread.start()
    thread.join(timeout_s)
    if result:
        return result[0]
    if thread.is_alive():
        logger.warning("reward %r is still running after %gs and cannot be killed in-process; it is abandoned "
                       "on a daemon thread (rewards.num_workers >= 1 runs rewards in actors that can be killed)",
                       name, timeout_s)
        return RewardScores.failed(len(batch.completions), f"timeout after {timeout_s:g}s")
    return RewardScores.failed(len(batch.completions), "the call ended without a result")


def combine(names: list[str], weights: list[float], batch: RewardBatch, rows: list[dict[str, Any]],
            scores: list[RewardScores]) -> RewardOutcome:
    """Weighted sum of the non-None values per completion; failures counted, logged and kept."""
    n = len(batch.completions)
    outcome = RewardOutcome(totals=[0.0] * n, components=[{} for _ in range(n)])
    for name, weight, result in zip(names, weights, scores):
        _record_failures(outcome, name, batch, rows, result)
        for i, value in enumerate(result.values):
            outcome.components[i][name] = value
            if value is not None:
                outcome.totals[i] += weight * value
    return outcome


def _record_failures(outcome: RewardOutcome, name: str, batch: RewardBatch, rows: list[dict[str, Any]],
                     result: RewardScores) -> None:
    n = len(batch.completions)
    if result.call_error is not None:
        logger.warning("reward %r failed on a batch of %d: %s", name, n, result.call_error)
        failed = {0: result.call_error} if n else {}
        scope = "call"
    else:
        failed, scope = result.bad_values, "item"
        if failed:
            first = min(failed)
            logger.warning("reward %r: %d of %d values rejected (first, at %d: %s)", name, len(failed), n, first,
                           failed[first])
    for i, error in sorted(failed.items()):
        outcome.failures[name] = outcome.failures.get(name, 0) + 1
        outcome.failure_examples.append({
            "reward": name, "error": error, "scope": scope, "index": i, "batch_size": n,
            "prompt": jsonable(batch.prompts[i]), "completion": jsonable(batch.completions[i]),
            "row": jsonable(rows[i]) if i < len(rows) else None,
        })


def jsonable(value: Any) -> Any:
    """``value`` with everything JSON cannot hold turned into its ``str()``."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


class RewardRunner:
    """Scores batches in this process; each call on a thread with ``timeout_s`` when one is given."""

    def __init__(self, funcs: list[tuple[str, RewardFn]], weights: list[float] | None = None,
                 timeout_s: float | None = None):
        self.weights = check_weights(weights, len(funcs))
        self.funcs = funcs
        self.timeout_s = timeout_s

    def score(self, prompts: list[str], completions: list[str], completion_ids: list[list[int]],
              rows: list[dict[str, Any]], group_ids: list[int] | None = None) -> RewardOutcome:
        batch = RewardBatch.from_rows(prompts, completions, completion_ids, rows, group_ids)
        scores = [score_one_with_timeout(name, fn, batch, self.timeout_s) for name, fn in self.funcs]
        return combine([name for name, _ in self.funcs], self.weights, batch, rows, scores)

    def close(self) -> None:
        """Nothing to release; here so either executor can be closed."""

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
