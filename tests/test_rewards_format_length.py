"""The `format` and `length_penalty` rewards, against hand-computed values."""

from __future__ import annotations

import pytest

import rlkit.plugins
from rlkit.rewards.format import FormatReward
from rlkit.rewards.length import LengthPenalty


def test_both_are_registered_classes():
    assert rlkit.plugins.rewards.get("format") is FormatReward
    assert rlkit.plugins.rewards.get("length_penalty") is LengthPenalty
    assert FormatReward().__name__ == "format" and LengthPenalty().__name__ == "length_penalty"


def test_default_format_wants_a_non_blank_answer_tag_anywhere():
    completions = [
        "<answer>72</answer>",
        "I think...\n<answer>\n72\n</answer> done",
        "<answer></answer>",
        "<answer>   </answer>",
        "<answer>72",
        "72",
        [{"role": "assistant", "content": "<answer>x</answer>"}],
    ]
    assert FormatReward()(["q"] * 7, completions) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_full_match_requires_the_whole_completion():
    reward = FormatReward(pattern=r"<think>.*</think>\s*<answer>.*</answer>", full_match=True)
    completions = [
        "<think>a\nb</think>\n<answer>3</answer>",
        "  <think>a</think><answer>3</answer>\n",  # surrounding whitespace is ignored
        "<think>a</think><answer>3</answer> and more",
        "Sure! <think>a</think><answer>3</answer>",
    ]
    assert reward(["q"] * 4, completions) == [1.0, 1.0, 0.0, 0.0]
    anywhere = FormatReward(pattern=r"<think>.*</think>\s*<answer>.*</answer>")
    assert anywhere(["q"] * 4, completions) == [1.0, 1.0, 1.0, 1.0]


def test_custom_pattern_and_inline_flags():
    reward = FormatReward(pattern=r"(?i)final answer: \d+")
    assert reward(["q"] * 3, ["Final Answer: 12", "final answer: x", "so final answer: 7."]) == [1.0, 0.0, 1.0]


def test_bad_pattern_is_refused_when_built():
    with pytest.raises(ValueError, match="not a valid regular expression"):
        FormatReward(pattern="(unclosed")


def test_length_penalty_by_tokens():
    # max_tokens=10, buffer=4, penalty=2: r = -2 * min(1, (L - 10) / 4) for L > 10
    reward = LengthPenalty(max_tokens=10, buffer=4, penalty=2.0)
    lengths = [0, 10, 11, 12, 13, 14, 15, 100]
    ids = [[7] * n for n in lengths]
    assert reward(["q"] * 8, ["x"] * 8, completion_ids=ids) == [0.0, 0.0, -0.5, -1.0, -1.5, -2.0, -2.0, -2.0]


def test_length_penalty_counts_characters_without_ids():
    reward = LengthPenalty(max_tokens=5, buffer=10, penalty=1.0)
    # lengths 5, 6, 10, 20 characters: 0, -0.1, -0.5, -1
    out = reward(["q"] * 4, ["abcde", "abcdef", "a" * 10, "a" * 20])
    assert out == pytest.approx([0.0, -0.1, -0.5, -1.0])


def test_length_penalty_defaults_and_zero_buffer():
    default = LengthPenalty()  # 512, 256, 1.0
    assert [default.score(n) for n in (512, 640, 768, 2000)] == [0.0, -0.5, -1.0, -1.0]
    cliff = LengthPenalty(max_tokens=3, buffer=0, penalty=0.5)
    assert [cliff.score(n) for n in (3, 4, 50)] == [0.0, -0.5, -0.5]


def test_length_penalty_refuses_negative_settings():
    for kwargs in ({"max_tokens": -1}, {"buffer": -1}, {"penalty": -0.1}):
        with pytest.raises(ValueError, match="must be >= 0"):
            LengthPenalty(**kwargs)
