"""The `math` environment: files, GSM8K answers, the template, malformed rows by row number."""

from __future__ import annotations

import json

import pytest

import rlkit.plugins
from rlkit.config import ConfigError, DataConfig
from rlkit.envs.math import MathEnv, parse_answer, render_prompt
from rlkit.prompts import check_rows

ROWS = [
    {"question": "What is 8 times 9?", "answer": "8 * 9 = 72\n#### 72", "source": "gsm8k"},
    {"question": "How many cents in $12.34?", "answer": "1234 cents\n#### 1,234", "source": "gsm8k"},
    {"question": "Solve 2x = 1.", "answer": "\\frac{1}{2}", "source": "math"},
    {"question": "Where is f positive?", "answer": "[0, 1)", "source": "math"},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def write_parquet(path, rows) -> str:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


def check(env: MathEnv, split: str, on_bad_row: str = "error"):
    return check_rows(env.dataset(split), DataConfig(on_bad_row=on_bad_row), origin="env",
                      required=env.required_columns)


def test_registered_with_its_reward_and_required_answer():
    assert rlkit.plugins.envs.get("math") is MathEnv
    assert MathEnv.default_rewards == ("math",) and MathEnv.required_columns == ("answer",)


def test_gsm8k_answers_numbers_and_plain_text():
    assert parse_answer("She pays 3 * 24 = 72 dollars.\n#### 72") == "72"
    assert parse_answer("#### 1,234,567") == "1234567"
    assert parse_answer("first #### 3 then #### -1,000.5 ") == "-1000.5"  # the last marker counts
    assert parse_answer("{1,2}") == "{1,2}"  # no marker: kept as it is
    assert parse_answer(" 72 ") == " 72 "
    assert parse_answer(72) == "72" and parse_answer(0.5) == "0.5" and parse_answer(3.0) == "3"
    for odd in (None, {"v": 1}, [1, 2], True):
        assert parse_answer(odd) is odd  # left for check_rows to report


def test_template_fills_question_and_columns_and_leaves_latex_braces():
    template = "[{source}] {question}\nPut the final answer in \\boxed{}; {missing} stays."
    assert render_prompt(template, "2+2?", {"source": "x"}) == (
        "[x] 2+2?\nPut the final answer in \\boxed{}; {missing} stays.")


def test_jsonl_rows_keep_columns_and_order(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", ROWS)
    env = MathEnv(train_file=path, eval_file=path, prompt_template="Q: {question}\nA:")
    rows = env.dataset("train")
    assert [r["answer"] for r in rows] == ["72", "1234", "\\frac{1}{2}", "[0, 1)"]
    assert rows[0]["prompt"] == "Q: What is 8 times 9?\nA:"
    assert rows[0]["source"] == "gsm8k" and rows[0]["question"] == ROWS[0]["question"]
    assert env.dataset("eval") == rows


def test_parquet_with_other_column_names(tmp_path):
    renamed = [{"problem": r["question"], "solution": r["answer"]} for r in ROWS]
    train = write_parquet(tmp_path / "train.parquet", renamed)
    evaluation = write_parquet(tmp_path / "eval.parquet", renamed[:2])
    env = MathEnv(train_file=train, eval_file=evaluation, question_column="problem", answer_column="solution")
    rows = env.dataset("train")
    assert [r["prompt"] for r in rows] == [r["question"] for r in ROWS]  # the default template is {question}
    assert [r["answer"] for r in rows] == ["72", "1234", "\\frac{1}{2}", "[0, 1)"]
    assert [r["answer"] for r in env.dataset("eval")] == ["72", "1234"]


def test_held_out_split_is_seeded_disjoint_and_in_file_order(tmp_path):
    rows = [{"question": f"q{i}", "answer": i} for i in range(20)]
    path = write_jsonl(tmp_path / "all.jsonl", rows)
    env = MathEnv(train_file=path, eval_size=5, seed=3)
    train, held = env.dataset("train"), env.dataset("eval")
    assert len(train) == 15 and len(held) == 5
    assert not {r["question"] for r in train} & {r["question"] for r in held}
    assert [r["answer"] for r in held] == sorted((r["answer"] for r in held), key=int)
    assert held == MathEnv(train_file=path, eval_size=5, seed=3).dataset("eval")
    assert held != MathEnv(train_file=path, eval_size=5, seed=4).dataset("eval")


def test_saved_dataset_dict_uses_its_splits(tmp_path):
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS),
                          "test": datasets.Dataset.from_list(ROWS[2:])}).save_to_disk(str(tmp_path / "saved"))
    env = MathEnv(train_file=str(tmp_path / "saved"))
    assert len(env.dataset("train")) == 4 and len(env.dataset("eval")) == 2


def test_bad_settings_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", ROWS)
    with pytest.raises(ValueError, match="train_file"):
        MathEnv()
    with pytest.raises(ValueError, match="no such file"):
        MathEnv(train_file=str(tmp_path / "nothing.jsonl"), eval_size=1)
    with pytest.raises(ValueError, match="eval_file, or eval_size"):
        MathEnv(train_file=path)  # one file, no way to get eval rows
    with pytest.raises(ValueError, match="not both"):
        MathEnv(train_file=path, eval_file=path, eval_size=2)
    with pytest.raises(ValueError, match="{question}"):
        MathEnv(train_file=path, eval_file=path, prompt_template="Solve it")
    with pytest.raises(ConfigError, match="smaller than the 4 rows"):
        MathEnv(train_file=path, eval_size=4).dataset("eval")


MALFORMED = [
    ("missing answer", {"question": "What is 1+1?"}, "missing the required column 'answer'"),
    ("answer of a wrong type", {"question": "What is 1+1?", "answer": {"value": 2}},
     "required column 'answer' is dict, expected text or a number"),
    ("answer as a list", {"question": "What is 1+1?", "answer": [2]}, "required column 'answer' is list"),
    ("empty question", {"question": "   ", "answer": "2"}, "empty prompt"),
    ("no question", {"answer": "2"}, "no value in the prompt column"),
]


@pytest.mark.parametrize("kind, bad, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_row_is_named_by_number_then_refused_or_skipped(tmp_path, capsys, kind, bad, message):
    rows = ROWS[:2] + [bad] + ROWS[2:]  # the bad row is row 3 of the file
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    env = MathEnv(train_file=path, eval_file=path)
    with pytest.raises(ConfigError, match=f"row 3: {message}"):
        check(env, "train", "error")
    kept = check(env, "train", "skip")
    assert [r["question"] for r in kept] == [r["question"] for r in ROWS]
    assert f"row 3: {message}" in capsys.readouterr().err


def test_numeric_answers_are_fine_and_a_bad_row_in_parquet_is_numbered(tmp_path):
    rows = [{"question": "a", "answer": 3}, {"question": "b", "answer": 4.5}, {"question": "", "answer": 1}]
    env = MathEnv(train_file=write_parquet(tmp_path / "t.parquet", rows), eval_file=str(tmp_path / "t.parquet"))
    with pytest.raises(ConfigError, match=r"row 3: empty prompt"):
        check(env, "train", "error")
    env = MathEnv(train_file=str(tmp_path / "t.parquet"), eval_file=str(tmp_path / "t.parquet"))
    assert [r["answer"] for r in check(env, "eval", "skip")] == ["3", "4.5"]


def test_trainer_builds_train_and_eval_rows_from_files(tmp_path, capsys):
    from rlkit import RLConfig, RLTrainer

    train = write_jsonl(tmp_path / "train.jsonl", ROWS + [{"question": "bad row", "answer": None}])
    evaluation = write_parquet(tmp_path / "eval.parquet", ROWS[:3])
    args = {"train_file": train, "eval_file": evaluation, "prompt_template": "{question} Answer in \\boxed{}."}
    config = RLConfig(env={"name": "math", "args": args}, data={"on_bad_row": "skip"},
                      output_dir=str(tmp_path / "run"))
    trainer = RLTrainer(args=config)
    assert [name for name, _ in trainer.reward_funcs] == ["math"]
    assert [r["answer"] for r in trainer.train_rows] == ["72", "1234", "\\frac{1}{2}", "[0, 1)"]
    assert trainer.train_rows[0]["prompt"] == "What is 8 times 9? Answer in \\boxed{}."
    assert len(trainer.eval_rows) == 3
    assert "environment math, train split, row 5: no value in the required column 'answer'" in capsys.readouterr().err
    config.data.on_bad_row = "error"
    with pytest.raises(ConfigError, match="row 5"):
        RLTrainer(args=config)


def test_a_held_out_split_keeps_the_files_row_numbers(tmp_path, capsys):
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(8)]
    rows[5] = {"question": "q5"}  # row 6 of the file has no answer
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    env = MathEnv(train_file=path, eval_size=3, seed=0)
    split = next(s for s in ("train", "eval") if any("answer" not in r for r in env.dataset(s)))
    with pytest.raises(ConfigError, match=r"train\.jsonl\), row 6: missing the required column 'answer'"):
        check(env, split, "error")
    kept = check(env, split, "skip")  # skipped as configured, whichever split it fell in
    assert "q5" not in [r["question"] for r in kept]
    assert "row 6" in capsys.readouterr().err
    both = env.dataset("train") + env.dataset("eval")
    assert sorted(r["question"] for r in both) == sorted(r["question"] for r in rows)
