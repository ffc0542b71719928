"""The `math` reward: it gives math-verify's own verdict, hand-checked cases, timeouts, threads."""

from __future__ import annotations

import threading
import time

import pytest
from math_verify import parse, verify

import rlkit.plugins
from rlkit.rewards.math import COMPLETION_CONFIG, GOLD_CONFIG, MathReward

# (gold answer as the dataset holds it, completion)
PAIRS = [
    # integers, plain and in prose
    ("72", "72"),
    ("72", "The answer is 72."),
    ("72", "First 12, then 60 more: 72"),
    ("72", "I am not sure, maybe 71"),
    ("72", "seventy-two"),
    ("72", ""),
    ("1000", "1,000"),
    ("1,000", "1000"),
    ("3", "4"),
    # \boxed answers
    ("72", "so the total is $\\boxed{72}$"),
    ("72", "I first got 72 but the answer is \\boxed{70}"),
    ("2", "$\\boxed{2}$ and later $3$"),
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("\\frac{1}{2}", "\\boxed{\\dfrac12}"),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}"),
    # fractions and decimals
    ("\\frac{1}{2}", "1/2"),
    ("\\frac{1}{2}", "0.5"),
    ("\\frac{1}{2}", "0.52"),
    ("0.25", "\\frac{1}{4}"),
    ("0.25", "$\\frac{1}{4}$"),
    ("-0.5", "$-\\frac{1}{2}$"),
    ("\\frac{3}{4}", "$\\frac{6}{8}$"),
    ("10", "10.0"),
    ("10", "10.01"),
    ("\\frac{7}{3}", "2.3333333333"),
    # negative numbers
    ("-3", "-3"),
    ("-3", "3"),
    ("-3", "x = -3"),
    ("-12", "The result is $-12$."),
    # units
    ("5", "5 cm"),
    ("5 cm", "The length is 5 cm"),
    ("5 cm", "$5\\text{ cm}$"),
    ("5", "6 cm"),
    ("12", "$12$ dollars"),
    # percentages
    ("50\\%", "50%"),
    ("50\\%", "0.5"),
    ("50", "50%"),
    ("25\\%", "$25\\%$"),
    ("25\\%", "$30\\%$"),
    # sets
    ("{1,2}", "$\\{1, 2\\}$"),
    ("{1,2}", "$\\{2, 1\\}$"),
    ("{1,2}", "{2, 1}"),
    ("{1,2}", "$\\{1, 3\\}$"),
    ("\\{1,2,3\\}", "$\\boxed{\\{3,2,1\\}}$"),
    # intervals
    ("[0, 1)", "$[0,1)$"),
    ("[0, 1)", "[0, 1)"),
    ("[0, 1)", "$(0,1)$"),
    ("(1, 2)", "$\\boxed{(1,2)}$"),
    ("(-\\infty, 3]", "$(-\\infty, 3]$"),
    # equations
    ("x = 3", "$x=3$"),
    ("x = 3", "3"),
    ("3", "$x = 3$"),
    ("x = 3", "$x = 4$"),
    ("y = 2x + 1", "$y = 1 + 2x$"),
    # radicals, pi, expressions
    ("\\sqrt{2}", "$\\sqrt 2$"),
    ("\\sqrt{2}", "1.41421356"),
    ("3\\sqrt{2}", "$\\sqrt{18}$"),
    ("\\pi", "$3.14159$"),
    ("2\\pi", "$\\boxed{2\\pi}$"),
    ("x^2 + 2x + 1", "$(x+1)^2$"),
    ("x^2 + 2x + 1", "$(x-1)^2$"),
    # nothing to read
    ("72", "no answer"),
    ("\\frac{1}{2}", "I cannot solve this."),
]

# hand-written verdicts, so the comparison with math-verify cannot pass trivially
EXPECTED = [
    ("\\boxed{\\frac{1}{2}}", "0.5", 1.0),
    ("3", "4", 0.0),
    ("72", "The answer is 72.", 1.0),
    ("72", "I first got 72 but the answer is \\boxed{70}", 0.0),  # the boxed answer wins
    ("1,000", "1000", 1.0),
    ("{1,2}", "$\\{2, 1\\}$", 1.0),
    ("[0, 1)", "$[0,1)$", 1.0),
    ("[0, 1)", "$(0,1)$", 0.0),
    ("x = 3", "$x=3$", 1.0),
    ("-3", "3", 0.0),
    ("0.25", "\\frac{1}{4}", 1.0),
    ("5 cm", "The length is 5 cm", 1.0),
    ("72", "no answer", 0.0),
]


def math_verify_verdict(gold: str, completion: str) -> float:
    """math-verify called directly, with the reward's extraction configs and its $...$ around bare gold."""
    delimited = gold if "\\boxed" in gold or "$" in gold else f"${gold}$"
    return float(verify(parse(delimited, GOLD_CONFIG), parse(completion, COMPLETION_CONFIG)))


def test_enough_varied_pairs():
    assert len(PAIRS) >= 50 and len(set(PAIRS)) == len(PAIRS)
    verdicts = [math_verify_verdict(g, c) for g, c in PAIRS]
    assert 0.25 < sum(verdicts) / len(verdicts) < 0.9  # right and wrong answers both well represented


def test_reward_gives_math_verifys_own_verdict_on_every_pair():
    golds, completions = [g for g, _ in PAIRS], [c for _, c in PAIRS]
    rewards = MathReward()(["q"] * len(PAIRS), completions, answer=golds)
    expected = [math_verify_verdict(g, c) for g, c in PAIRS]
    mismatches = [(p, r, e) for p, r, e in zip(PAIRS, rewards, expected) if r != e]
    assert not mismatches


@pytest.mark.parametrize("gold, completion, verdict", EXPECTED)
def test_hand_checked_verdicts(gold, completion, verdict):
    assert MathReward()(["q"], [completion], answer=[gold]) == [verdict]


def test_registered_class_with_trl_signature_and_extra_columns():
    cls = rlkit.plugins.rewards.get("math")
    assert cls is MathReward
    reward = cls(timeout_s=2)
    assert reward.__name__ == "math"
    out = reward(prompts=["a", "b"], completions=["\\boxed{4}", "5"], completion_ids=[[1], [2]],
                 answer=["4", 4], question=["a", "b"])
    assert out == [1.0, 0.0]


def test_odd_inputs_score_zero_and_never_raise():
    reward = MathReward()
    completions = ["\\boxed{", "$$$", "\\frac{1}{0}", "}" * 50, [{"role": "assistant", "content": "\\boxed{7}"}]]
    assert reward(["q"] * 5, completions, answer=["7"] * 5) == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert reward(["q", "q"], ["7", "7"], answer=[None, "  "]) == [0.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        reward(["q"], ["7"])  # no answer column at all: a visible failure, not silent zeros
    with pytest.raises(ValueError, match="timeout_s"):
        MathReward(timeout_s=-1)


def test_a_slow_comparison_times_out_to_zero(monkeypatch):
    import math_verify.grader

    def stuck(*args, **kwargs):
        time.sleep(30)
        return True

    # 5 s: the real comparison must finish within it even on a busy machine; the stuck one sleeps 30 s
    reward, completion = MathReward(timeout_s=5), ["\\boxed{\\frac{4}{2}}"]  # equal to 2 only symbolically
    assert reward(["q"], completion, answer=["2"]) == [1.0]
    monkeypatch.setattr(math_verify.grader, "sympy_expr_eq", stuck)
    # 0.0 (not the 1.0 the stuck comparison would return after 30 s): the bound cut it off
    assert reward(["q"], completion, answer=["2"]) == [0.0]


def test_a_slow_parse_times_out_to_zero(monkeypatch):
    import math_verify.parser

    real = math_verify.parser.extract_target_from_pred

    def slow_on_completions(pred, *args, **kwargs):
        if "stuck" in pred:
            time.sleep(30)
        return real(pred, *args, **kwargs)

    monkeypatch.setattr(math_verify.parser, "extract_target_from_pred", slow_on_completions)
    # the stuck parse scores 0.0 (its 30 s sleep cut off), the next completion is still read
    assert MathReward(timeout_s=5)(["q", "q"], ["stuck 2", "2"], answer=["2", "2"]) == [0.0, 1.0]


def test_off_the_main_thread_it_runs_without_signals():
    """math-verify's signal-based timeout would raise in a thread; the reward scores unbounded there."""
    results: list = []
    worker = threading.Thread(target=lambda: results.append(
        MathReward(timeout_s=5)(["q"] * 3, ["\\boxed{\\frac12}", "0.5", "3"], answer=["0.5", "1/2", "4"])))
    worker.start()
    worker.join(timeout=60)
    assert results == [[1.0, 1.0, 0.0]]
