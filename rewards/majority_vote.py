"""``majority_vote``: TTRL's label-free reward. A group's most common answer is the pseudo-label;
a completion earns 1.0 when its answer agrees with it.

Test-time RL (Zuo et al., 2025, arXiv 2504.16084) trains on prompts without answers: for each
prompt the G completions vote, the most frequent extracted answer ŷ stands in for the label, and
``r_i = 1[verify(a_i, ŷ)]``. What we took from the official code (``PRIME-RL/TTRL``, the verl
reward manager):

* ŷ is the most frequent answer string; a tie goes to the answer seen first (Python's
  ``Counter.most_common``).
* agreement is a math-equivalence check against ŷ, not string equality, with ``extract: math``
  (math-verify's ``parse`` and ``verify``, as :mod:`rlkit.rewards.math` uses them).
* the vote counts every completion of the group.

Our decisions where the code left room, each a named choice:

* A completion with no answer (nothing extractable) neither votes nor can earn the reward.
  When no completion of a group has an answer, the group scores 0 throughout.
* ``extract`` picks how an answer is read: ``math`` (math-verify, the official behaviour and the
  default), ``last_number`` (the last integer or decimal in the text, compared as numbers; cheap)
  or ``stripped`` (the whole completion, stripped, compared as text: what ``exact_match`` uses,
  the right reading for the bundled ``arith`` task).

The reward reads no dataset column: no answer, no solution. It needs to know which completions
form a group, which the rollout worker passes as ``group_ids`` (one id per completion, the
position of its prompt in the scored batch). Called without ``group_ids`` (e.g. from TRL's own
trainer) it treats each run of consecutive completions with the same prompt as one group.

The mean reward of a group is its ``majority_ratio`` (the share of votes the label won), when
agreement is string equality; logged as the step's ``reward_mean``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Sequence

import rlkit
from rlkit.rewards import completion_text

EXTRACTORS = ("math", "last_number", "stripped")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@rlkit.reward("majority_vote")
class MajorityVoteReward:
    """1.0 when a completion's answer agrees with its group's most common answer, else 0.0.

    ``extract`` (default ``math``): how an answer is read, one of ``math``, ``last_number``,
    ``stripped`` (see the module docstring). ``timeout_s`` bounds each math-verify call.
    """

    def __init__(self, *, extract: str = "math", timeout_s: float = 5.0):
        if extract not in EXTRACTORS:
            raise ValueError(f"majority_vote: extract must be one of {', '.join(EXTRACTORS)}, got {extract!r}")
        self.extract = extract
        self.timeout_s = float(timeout_s)
        self.__name__ = "majority_vote"

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 group_ids: Sequence[int] | None = None, **kwargs: Any) -> list[float]:
        del kwargs  # label-free: no column is read
        ids = list(group_ids) if group_ids is not None else _runs_of_equal(prompts)
        answers = [self.answer(completion_text(c)) for c in completions]
        rewards = [0.0] * len(answers)
        members: dict[int, list[int]] = {}
        for i, group in enumerate(ids):
            members.setdefault(group, []).append(i)
        for indices in members.values():
            label = vote([answers[i] for i in indices])
            if label is None:
                continue
            for i in indices:
                rewards[i] = float(answers[i] is not None and self.agrees(answers[i], label))
        return rewards

    def answer(self, text: str) -> Any:
        """The answer a completion gives, as a key the vote can count (None: no answer)."""
        if self.extract == "stripped":
            return text.strip() or None
        if self.extract == "last_number":
            found = _NUMBER.findall(text)
            return _as_number(found[-1]) if found else None
        from math_verify import parse

        from rlkit.rewards.math import COMPLETION_CONFIG, signal_timeout

        try:
            parsed = parse(text, extraction_config=COMPLETION_CONFIG,
                           parsing_timeout=signal_timeout(self.timeout_s))
        except Exception:  # noqa: BLE001 (math-verify raises many kinds on odd input)
            return None
        return _MathAnswer(parsed) if parsed else None

    def agrees(self, answer: Any, label: Any) -> bool:
        if self.extract != "math":
            return answer == label
        from math_verify import verify

        from rlkit.rewards.math import signal_timeout

        if answer.key == label.key:
            return True
        try:
            return bool(verify(label.parsed, answer.parsed, timeout_seconds=signal_timeout(self.timeout_s)))
        except Exception:  # noqa: BLE001
            return False


def vote(answers: Sequence[Any]) -> Any:
    """The most common non-None answer (the first seen among equals); None when there is none."""
    counts = Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


class _MathAnswer:
    """A math-verify parse, counted in the vote by its extracted text (TTRL counts answer strings)."""

    def __init__(self, parsed: list):
        self.parsed = parsed
        self.key = str(parsed[-1])  # math-verify's second item is the matched text; the first the SymPy form

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _MathAnswer) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def _as_number(text: str) -> float | int:
    return float(text) if "." in text else int(text)


def _runs_of_equal(prompts: Sequence[Any]) -> list[int]:
    ids, current = [], -1
    for i, prompt in enumerate(prompts):
        if i == 0 or prompt != prompts[i - 1]:
            current += 1
        ids.append(current)
    return ids
