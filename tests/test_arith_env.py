"""The `arith` environment and the `exact_match` reward: data, splits, errors, registration."""

from __future__ import annotations

import re

import pytest

import rlkit.plugins
from rlkit.envs.arith import LEVELS, ArithEnv
from rlkit.rewards.exact_match import exact_match

EXPRESSION = re.compile(r"^\d+([-+*]\d+)+=$")


def evaluate(prompt: str) -> int:
    """Independent check of the answers: Python's own arithmetic on a vetted expression."""
    assert EXPRESSION.match(prompt), prompt
    return eval(prompt[:-1], {"__builtins__": {}})  # safe: digits and + - * only


def small(difficulty: int = 1, seed: int = 0) -> ArithEnv:
    return ArithEnv(difficulty=difficulty, train_size=2000, eval_size=200, seed=seed)


def test_rows_are_prompt_and_answer():
    rows = small().dataset("train")
    assert len(rows) == 2000
    assert set(rows[0]) >= {"prompt", "answer"}
    for row in rows[:200]:
        assert " " not in row["prompt"] and row["prompt"].endswith("=")
        assert row["answer"] == str(evaluate(row["prompt"]))


def test_same_seed_same_rows_other_seed_other_rows():
    for split in ("train", "eval"):
        assert small().dataset(split) == small().dataset(split)
        assert small().dataset(split) != small(seed=1).dataset(split)


def test_eval_split_is_held_out_and_distinct():
    env = ArithEnv(difficulty=1, train_size=20000, eval_size=200, seed=0)
    held_out = [r["prompt"] for r in env.dataset("eval")]
    assert len(held_out) == len(set(held_out)) == 200
    assert not set(held_out) & {r["prompt"] for r in env.dataset("train")}


def test_difficulty_one_is_two_operands_up_to_99_with_non_negative_results():
    rows = small().dataset("train")
    for row in rows:
        operands = [int(n) for n in re.split(r"[-+*]", row["prompt"][:-1])]
        assert len(operands) == 2 and all(0 <= n <= 99 for n in operands)
        assert int(row["answer"]) >= 0
    assert "+" in "".join(r["prompt"] for r in rows)


@pytest.mark.parametrize("difficulty", LEVELS)
def test_every_level_has_correct_answers(difficulty):
    rows = small(difficulty).dataset("eval")
    assert len(rows) == 200
    assert all(row["answer"] == str(evaluate(row["prompt"])) for row in rows)


def test_higher_levels_go_beyond_level_one():
    """Each level past 1 adds larger operands, more operands or another operator."""

    def shape(difficulty: int) -> tuple[int, int, set[str]]:
        expressions = [r["prompt"][:-1] for r in small(difficulty).dataset("train")]
        operands = [re.split(r"[-+*]", e) for e in expressions]
        return (max(int(n) for ns in operands for n in ns), max(map(len, operands)),
                set(re.sub(r"\d", "", "".join(expressions))))

    top, count, ops = shape(1)
    for difficulty in LEVELS[1:]:
        top_d, count_d, ops_d = shape(difficulty)
        assert top_d > top or count_d > count or not ops_d <= ops, difficulty
    assert "*" in shape(max(LEVELS))[2]


def test_bad_split_and_bad_difficulty_are_refused():
    with pytest.raises(ValueError, match="train.*eval"):
        small().dataset("test")
    for bad in (0, max(LEVELS) + 1):
        with pytest.raises(ValueError, match="difficulty"):
            ArithEnv(difficulty=bad)


def test_exact_match():
    prompts = ["2+2="] * 5
    completions = ["4", " 4\n", "4 ", "44", "four"]
    assert exact_match(prompts, completions, answer=["4"] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert exact_match(["9-1="], ["8"], answer=[8]) == [1.0]  # non-string answers compare as text
    assert exact_match(["1+0="], [""], answer=["1"]) == [0.0]
    assert exact_match([], [], answer=[]) == []


def test_registered_by_name():
    assert rlkit.plugins.envs.get("arith") is ArithEnv
    assert rlkit.plugins.rewards.get("exact_match") is exact_match
    assert ArithEnv.default_rewards == ("exact_match",)
    assert "arith" in rlkit.plugins.envs.names()
