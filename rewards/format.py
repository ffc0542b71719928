"""``format``: 1.0 when the completion has the expected shape (a regular expression), else 0.0.

The default asks for a non-blank answer between answer tags, ``<answer>...</answer>``, anywhere in
the completion. It is meant as a small shaping term beside a correctness reward, e.g.
``rewards: {funcs: [math, format], weights: [1.0, 0.2]}``.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import rlkit
from rlkit.rewards import completion_text

#: a non-blank answer between answer tags
DEFAULT_PATTERN = r"<answer>\s*\S.*?</answer>"


@rlkit.reward("format")
class FormatReward:
    """1.0 when ``pattern`` matches the completion, else 0.0.

    ``pattern`` (default :data:`DEFAULT_PATTERN`): a Python regular expression, compiled with
    ``re.DOTALL`` so ``.`` spans lines (add inline flags such as ``(?i)`` for more).
    ``full_match`` (default False): False looks for the pattern anywhere (``re.search``); True
    requires it to cover the whole completion, leading and trailing whitespace aside
    (``re.fullmatch`` on the stripped text), so nothing may come before or after it.
    """

    def __init__(self, *, pattern: str = DEFAULT_PATTERN, full_match: bool = False):
        try:
            self.regex = re.compile(pattern, re.DOTALL)
        except re.error as exc:
            raise ValueError(f"format reward: pattern {pattern!r} is not a valid regular expression: {exc}") from exc
        self.full_match = bool(full_match)
        self.__name__ = "format"  # TRL names reward functions by __name__

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [self.score(completion_text(c)) for c in completions]

    def score(self, completion: str) -> float:
        """1.0 or 0.0 for one completion."""
        if self.full_match:
            return float(self.regex.fullmatch(completion.strip()) is not None)
        return float(self.regex.search(completion) is not None)
