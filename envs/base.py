"""The environment protocol.

An environment turns dataset rows into prompts and, for multi-turn tasks, answers each
completion with a reward, a done flag and feedback text. A single-turn environment is the
one-step case: its rows are scored by reward functions (TRL's signature) after one completion.

Multi-turn (``multi_turn = True``): each episode runs on its own shallow copy of the environment,
``reset(row)`` opens it (and must give the same prompt for the same row: a group's episodes share
it), and ``step(history, completion)`` scores each of the model's turns, up to ``max_turns``. The
feedback text is appended to the context as is, attended to but masked out of the loss
(``rlkit/rollout/episodes.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass
class StepResult:
    """What a multi-turn environment says after a model turn: the turn's reward, whether the
    episode ends, and otherwise the feedback the model sees next (masked from the loss)."""

    reward: float
    done: bool = True
    feedback: str = ""


class Environment:
    """Base class for environments; subclasses register with ``@rlkit.env("name")``."""

    #: reward plugins used when the config names none
    default_rewards: ClassVar[tuple[str, ...]] = ()
    #: True: episodes of several turns scored by ``step``; False: one completion scored by reward functions
    multi_turn: ClassVar[bool] = False
    #: turns an episode may take at most (instances may set their own)
    max_turns: int = 1
    #: columns every row must hold (non-blank text or a number) besides the prompt; checked with
    #: the row's number when rows are loaded (``data.on_bad_row``), so no reward meets a bad row mid-run
    required_columns: ClassVar[tuple[str, ...]] = ()
    #: required columns that may also hold a non-empty list (e.g. a list of ``tests``)
    list_columns: ClassVar[tuple[str, ...]] = ()

    def dataset(self, split: str) -> list[dict[str, Any]]:
        """Rows for ``split`` ("train" or "eval"); each has at least a ``prompt`` column."""
        raise NotImplementedError

    def preference_dataset(self, split: str) -> list[dict[str, Any]]:
        """Preference pairs for ``split`` (``prompt``, ``chosen``, ``rejected``), for ``trainer:
        preference`` runs given no data; environments without a notion of a better answer have none."""
        raise NotImplementedError(f"environment {type(self).__name__} makes no preference pairs; "
                                  "give data.train_file (rows of prompt, chosen, rejected)")

    def reset(self, row: dict[str, Any]) -> str:
        """The first prompt of an episode for ``row`` (by default its ``prompt`` column)."""
        return row["prompt"]

    def step(self, history: list[str], completion: str) -> StepResult:
        """Multi-turn only: score the model's latest ``completion`` given the ``history`` of the
        episode so far, and say whether the episode ends or what the environment answers."""
        raise NotImplementedError(f"{type(self).__name__} is single-turn: score it with reward functions")
