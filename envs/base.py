"""The environment protocol.

An environment turns dataset rows into prompts and, for multi-turn tasks, answers each
completion with a reward, a done flag and feedback text. A single-turn environment is the
one-step case: its rows are scored by reward functions (TRL's signature) after one completion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class StepResult:
    reward: float
    done: bool = True
    feedback: str = ""


class Environment:
    """Base class for environments; subclasses register with ``@rlkit.env("name")``."""

    #: reward plugins used when the config names none
    default_rewards: ClassVar[tuple[str, ...]] = ()
    #: 1 for single-turn environments
    max_turns: ClassVar[int] = 1
    #: columns every row must hold (non-blank text or a number) besides the prompt; checked with
    #: the row's number when rows are loaded (``data.on_bad_row``), so no reward meets a bad row mid-run
    required_columns: ClassVar[tuple[str, ...]] = ()

    def dataset(self, split: str) -> list[dict[str, Any]]:
        """Rows for ``split`` ("train" or "eval"); each has at least a ``prompt`` column."""
        raise NotImplementedError

    def reset(self, row: dict[str, Any]) -> str:
        return row["prompt"]

    def step(self, history: list[str], completion: str) -> StepResult:
        raise NotImplementedError(f"{type(self).__name__} is single-turn: score it with reward functions")
