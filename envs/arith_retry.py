"""``arith_retry``: arithmetic with feedback; a wrong answer gets a hint and another try.

The multi-turn example environment. Turn 1 is an ``arith`` problem (``23+58=``). A correct answer
earns reward 1 and ends the episode; a wrong one earns 0 and the environment replies with a hint
and the problem again (`` higher\\n23+58=``: the answer is larger than the guess; ``lower``: smaller;
``number?``: the guess was not an integer), up to ``max_turns`` turns. An episode succeeds when
its total reward reaches 1 (``rewards.pass_threshold``). The feedback is short because the bundled
model has 128 positions. With ``chat: true`` the problem is a user message, and each hint comes
back as the next user message, through the chat template.
"""

from __future__ import annotations

from typing import Any, ClassVar

import rlkit
from rlkit.envs.arith import ArithEnv
from rlkit.envs.base import StepResult


def hint(guess: str, answer: int) -> str:
    """Which way the answer lies from the guess."""
    try:
        value = int(guess.strip())
    except ValueError:
        return "number?"
    return "higher" if value < answer else "lower"


@rlkit.env("arith_retry")
class ArithRetryEnv(ArithEnv):
    """Integer arithmetic in up to ``max_turns`` tries, with a higher/lower hint after each miss."""

    multi_turn: ClassVar[bool] = True
    default_rewards = ()

    def __init__(self, difficulty: int = 1, max_turns: int = 3, train_size: int = 20000, eval_size: int = 200,
                 seed: int = 0, chat: bool = False):
        super().__init__(difficulty=difficulty, train_size=train_size, eval_size=eval_size, seed=seed, chat=chat)
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns!r}")
        self.max_turns = max_turns
        self.row: dict[str, Any] | None = None

    def reset(self, row: dict[str, Any]) -> str:
        self.row = row
        return row["prompt"]

    def step(self, history: list[str], completion: str) -> StepResult:
        if self.row is None:
            raise RuntimeError("step() before reset()")
        answer = self.row["answer"]
        if completion.strip() == answer:
            return StepResult(reward=1.0, done=True)
        prompt = self.row["prompt"]  # text, or (chat: true) the problem as a user message
        problem = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        return StepResult(reward=0.0, done=False, feedback=f" {hint(completion, int(answer))}\n{problem}")
