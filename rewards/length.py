"""``length_penalty``: a soft penalty on completions longer than a budget.

With ``L`` the completion's length, ``M = max_tokens``, ``B = buffer`` and ``P = penalty``::

    r(L) = 0                          if L <= M
         = -P * (L - M) / B           if M < L < M + B
         = -P                         if L >= M + B        (B = 0: -P for every L > M)

A linear ramp rather than a cliff: a completion a few tokens over the budget loses little, so the
signal pushes lengths down without swamping the correctness reward (DAPO's overlong shaping has
the same shape). ``L`` counts tokens when the trainer passes ``completion_ids`` (it always does);
called without them, it counts characters of the completion text, so set the limits accordingly.
"""

from __future__ import annotations

from typing import Any, Sequence

import rlkit
from rlkit.rewards import completion_text


@rlkit.reward("length_penalty")
class LengthPenalty:
    """0 up to ``max_tokens``, then linearly down to ``-penalty`` at ``max_tokens + buffer`` (see module).

    ``max_tokens`` (default 512): the length that costs nothing.
    ``buffer`` (default 256): how many tokens past it the penalty takes to reach its full size.
    ``penalty`` (default 1.0): the size of the full penalty (the reward is ``-penalty`` at worst).
    """

    def __init__(self, *, max_tokens: int = 512, buffer: int = 256, penalty: float = 1.0):
        if max_tokens < 0 or buffer < 0 or penalty < 0:
            raise ValueError(f"length_penalty: max_tokens, buffer and penalty must be >= 0, got "
                             f"{max_tokens}, {buffer}, {penalty}")
        self.max_tokens, self.buffer, self.penalty = int(max_tokens), int(buffer), float(penalty)
        self.__name__ = "length_penalty"  # TRL names reward functions by __name__

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Sequence[Sequence[int]] | None = None, **kwargs: Any) -> list[float]:
        if completion_ids is not None:
            lengths = [len(ids) for ids in completion_ids]
        else:
            lengths = [len(completion_text(c)) for c in completions]
        return [self.score(n) for n in lengths]

    def score(self, length: int) -> float:
        """The penalty for one completion of ``length`` tokens (or characters)."""
        over = length - self.max_tokens
        if over <= 0:
            return 0.0
        if self.buffer == 0:
            return -self.penalty
        return -self.penalty * min(1.0, over / self.buffer)
