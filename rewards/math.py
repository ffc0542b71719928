"""``math``: 1.0 when the completion's final answer is mathematically equal to the gold answer.

Both sides go through math-verify (``parse`` then ``verify``), which turns LaTeX and plain
expressions into SymPy objects and compares them numerically and symbolically: ``\\frac{1}{2}``,
``0.5`` and ``1/2`` agree, as do ``{1,2}`` and ``\\{2, 1\\}``, ``x = 3`` and ``3``, ``5 cm`` and ``5``.

Gold answers are the ``answer`` column, written without delimiters (``72``, ``\\frac{1}{2}``,
``[0, 1)``, ``{1,2}``). math-verify reads such bare text as a plain expression, where ``[0, 1)``
and ``{1,2}`` do not parse, so :func:`gold_text` wraps it in ``$...$`` to read it as LaTeX.
Completions are read with :data:`COMPLETION_CONFIG`: a ``\\boxed{}`` answer first, then the LaTeX
and plain expressions math-verify finds (it prefers text after "final answer is" and similar).

Timeouts. math-verify bounds each parse and each comparison with ``signal.alarm``, which takes
whole seconds and only works in the main thread of the main interpreter (elsewhere it raises). So
the per-call bound, ``timeout_s``, is rounded up to whole seconds and applied only in the main
thread; in any other thread parsing and comparison run unbounded here, and the reward pool's
outer wall timeout (``rewards.timeout_s``, a hung call's actor or thread is abandoned) is what
stops a runaway SymPy simplification. A timeout, like anything math-verify cannot read, scores 0.0.
"""

from __future__ import annotations

import math as _math
import threading
from typing import Any, Sequence

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

import rlkit
from rlkit.rewards import completion_text

#: how gold answers are read (after :func:`gold_text`): LaTeX, else a plain expression
GOLD_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
#: how completions are read: a ``\boxed{}`` answer takes precedence (priority 0), then LaTeX, then plain text
COMPLETION_CONFIG = (LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig())
#: already delimited gold text is parsed as it is
_DELIMITERS = ("$", "\\boxed", "\\(", "\\[")


def gold_text(answer: Any) -> str:
    """The gold answer as math-verify should see it: bare text wrapped in ``$...$`` so it reads as LaTeX."""
    text = str(answer).strip()
    return text if any(d in text for d in _DELIMITERS) else f"${text}$"


def signal_timeout(timeout_s: float | None) -> int | None:
    """math-verify's timeout argument: whole seconds (``ceil``) in the main thread, None elsewhere.

    ``signal.alarm`` accepts only integers and only the main thread may set it; None (or <= 0)
    makes math-verify run without a bound instead of raising ``ValueError``.
    """
    if not timeout_s or timeout_s <= 0 or threading.current_thread() is not threading.main_thread():
        return None
    return max(1, _math.ceil(timeout_s))


@rlkit.reward("math")
class MathReward:
    """1.0 when math-verify finds the completion equal to the row's ``answer``, else 0.0.

    ``timeout_s`` (default 5.0): seconds each parse and each comparison may take, rounded up to
    whole seconds; enforced only in the main thread (see the module docstring). A completion that
    cannot be parsed, a timeout, or a row without an answer scores 0.0, never an error.
    """

    def __init__(self, *, timeout_s: float = 5.0):
        if timeout_s < 0:
            raise ValueError(f"math reward: timeout_s must be >= 0 (0 = no bound), got {timeout_s}")
        self.timeout_s = float(timeout_s)
        self.__name__ = "math"  # TRL names reward functions by __name__

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], answer: Sequence[Any] | None = None,
                 **kwargs: Any) -> list[float]:
        if answer is None:
            raise ValueError("the math reward needs an 'answer' column in the dataset rows")
        return [self.score(completion_text(c), g) for c, g in zip(completions, answer)]

    def score(self, completion: str, gold: Any) -> float:
        """1.0 or 0.0 for one completion against one gold answer."""
        if gold is None or not str(gold).strip():
            return 0.0
        bound = signal_timeout(self.timeout_s)
        try:
            gold_parsed = parse(gold_text(gold), GOLD_CONFIG, parsing_timeout=bound)
            predicted = parse(completion, COMPLETION_CONFIG, parsing_timeout=bound)
            if not gold_parsed or not predicted:
                return 0.0
            return float(verify(gold_parsed, predicted, timeout_seconds=bound))
        except (Exception, TimeoutException):  # TimeoutException is a BaseException; an alarm may land late
            return 0.0

