"""``exact_match``: 1.0 when the completion, stripped, equals the row's answer."""

from __future__ import annotations

import rlkit
from rlkit.rewards import completion_text


@rlkit.reward("exact_match")
def exact_match(prompts, completions, answer, **kwargs) -> list[float]:
    """1.0 when the stripped completion equals the stripped ``answer`` column, else 0.0."""
    return [float(completion_text(c).strip() == str(a).strip()) for c, a in zip(completions, answer)]
