"""The `rlkit` command: help, listings, and bad input refused before anything starts."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from rlkit.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_help_lists_every_subcommand():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "list", "plot"):
        assert command in result.output
    for command in ("train", "eval", "list", "plot"):
        sub = invoke(command, "--help")
        assert sub.exit_code == 0, sub.output
        assert "Usage" in sub.output
    assert "--section.key" in invoke("train", "--help").output
    assert "--resume" in invoke("train", "--help").output


def test_list_shows_builtins_and_where_they_come_from():
    objectives = invoke("list", "objectives")
    assert objectives.exit_code == 0 and "grpo" in objectives.output and "built-in" in objectives.output
    assert "exact_match" in invoke("list", "rewards").output
    assert "arith" in invoke("list", "envs").output
    engines = invoke("list", "engines").output
    assert "hf" in engines and "built-in" in engines
    estimators = invoke("list", "estimators").output
    assert all(name in estimators for name in ("group_relative", "rloo", "gbpo_median", "trloo"))
    assert "clipped_surrogate" in invoke("list", "losses").output
    assert "grpo-arith" in invoke("list", "recipes").output
    assert "rollout.num_generations" in invoke("list", "keys").output
    bad = invoke("list", "objectivs")
    assert bad.exit_code == 2


def test_bad_override_fails_fast_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    result = invoke("train", "--rollout.temprature", "0.7", "--output_dir", str(out))
    assert result.exit_code == 2
    assert "did you mean 'rollout.temperature'" in result.output
    assert not out.exists()


def test_missing_model_and_dataset_are_named(tmp_path):
    result = invoke("train", "--model.name_or_path", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "model.name_or_path" in result.output
    result = invoke("train", "--data.train_file", str(tmp_path / "train.jsonl"))
    assert result.exit_code == 2 and "no such file" in result.output


def test_dataset_row_without_prompt_is_refused_with_its_row_number(tmp_path):
    data = tmp_path / "train.jsonl"
    rows = [{"prompt": "1+1=", "answer": "2"}, {"question": "2+2=", "answer": "4"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    result = invoke("train", "--data.train_file", str(data), "--output_dir", str(out))
    assert result.exit_code == 2
    assert "row 2" in result.output and "'prompt'" in result.output
    assert not out.exists()


def test_eval_reports_the_bundled_models_pass_rate():
    result = invoke("eval", "--data.eval_limit", "40")
    assert result.exit_code == 0, result.output
    assert "pass rate" in result.output and "40 rows" in result.output


def test_eval_reports_sampled_pass_at_k():
    result = invoke("eval", "--pass-at", "4", "--data.eval_limit", "20")
    assert result.exit_code == 0, result.output
    assert "pass@1" in result.output and "pass@4" in result.output and "8 samples per row" in result.output


def test_plot_needs_a_run_folder(tmp_path):
    result = invoke("plot", str(tmp_path))
    assert result.exit_code == 2 and "metrics.jsonl" in result.output


def test_resume_of_a_folder_that_is_not_a_run_is_refused(tmp_path):
    result = invoke("train", "--resume", str(tmp_path / "nowhere"))
    assert result.exit_code == 2
    assert "is not a run folder" in result.output
    assert not (tmp_path / "nowhere").exists()


def test_output_dir_holding_a_run_is_refused_and_left_alone(tmp_path):
    (tmp_path / "config.yaml").write_text("seed: 7\n")
    result = invoke("train", "--output_dir", str(tmp_path))
    assert result.exit_code == 2
    assert "already holds a run" in result.output and "--resume" in result.output
    assert (tmp_path / "config.yaml").read_text() == "seed: 7\n"
