"""PreferenceTrainer end to end on the bundled model: it learns, its per-pair state resumes exactly,
it runs on several ZeRO ranks and with LoRA, bad data stops it before anything starts, and
``rlkit train`` reaches it from a recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rlkit.cli import app
from rlkit.config import ConfigError, RLConfig, apply_overrides
from rlkit.preference.trainer import PreferenceTrainer, label_statistics
from rlkit.runs import read_metrics
from rlkit.validation import load_config

QUICK = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false", "save_steps": "0",
         "data.eval_limit": "100"}


def config_for(tmp_path: Path, recipe: str = "power-dl-arith", **overrides: str) -> RLConfig:
    return load_config(None, {**QUICK, "output_dir": str(tmp_path / "run"), "preference.eval_generation": "false",
                              "env.args.train_size": "300", **overrides}, recipe)


def test_power_dl_learns_the_true_preference_and_the_greedy_answers(tmp_path):
    # clean labels, 5 epochs of 1000 pairs (the recipe): held-out pairs ranked right by likelihood
    # go from 57% to about 83%, greedy answers right from 38% to about 55% (200 problems: ±3.5 points)
    config = config_for(tmp_path, **{"env.args.pair_noise": "0", "env.args.train_size": "1000",
                                     "data.eval_limit": "200", "preference.eval_generation": "true"})
    summary = PreferenceTrainer(args=config).train()
    assert summary["steps"] == math.ceil(5 * 1000 / 32)  # preference.epochs sets max_steps
    assert summary["eval_likelihood_accuracy_after"] >= summary["eval_likelihood_accuracy_before"] + 0.15, summary
    assert summary["eval_pass_rate_after"] >= summary["eval_pass_rate_before"] + 0.08, summary
    run = Path(summary["run_dir"])
    assert (run / "final" / "model.safetensors").is_file()
    labels = [json.loads(line) for line in (run / "pair_labels.jsonl").read_text().splitlines()]
    # 5 epochs: each pair 5 times, and the last step's 24 pairs a sixth (157 steps x 32 pairs)
    assert len(labels) == 1000 and sorted({x["uses"] for x in labels}) == [5, 6]
    assert sum(x["uses"] for x in labels) == 157 * 32
    assert all(0.5 < x["label"] < 1.0 for x in labels)  # moved toward sigma(h) from 1, never flipped


def test_dpo_starts_at_the_reference_and_ranks_held_out_pairs(tmp_path):
    config = config_for(tmp_path, recipe="dpo-arith", max_steps="30", **{"preference.epochs": "0"})
    summary = PreferenceTrainer(args=config).train()
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # the reference log-probs are the initial policy's: at step 1 every margin is exactly 0, the loss log 2
    assert metrics[0]["margin"] == pytest.approx(0.0, abs=1e-6)
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert summary["eval_preference_accuracy_before"] == 0.0  # margin 0 ranks no pair right (TRL counts so too)
    assert summary["eval_preference_accuracy_after"] > 0.6, summary
    assert "label_mean" not in metrics[-1]  # DPO has no dynamic labels
    assert not (tmp_path / "run" / "pair_labels.jsonl").exists()


def test_two_zero2_ranks_train_as_one(tmp_path):
    common = {"max_steps": "3", "preference.epochs": "0", "learner.micro_batch_tokens": "256"}
    one = PreferenceTrainer(args=config_for(tmp_path / "one", **common)).train()
    two = PreferenceTrainer(args=config_for(tmp_path / "two", **common, **{"learner.num_learners": "2",
                                                                          "learner.zero_stage": "2"})).train()
    a = read_metrics(Path(one["run_dir"]) / "metrics.jsonl")
    b = read_metrics(Path(two["run_dir"]) / "metrics.jsonl")
    for x, y in zip(a, b):  # the same pairs, the loss a mean over the step's pairs either way
        assert y["loss"] == pytest.approx(x["loss"], abs=1e-4)
        assert y["grad_norm"] == pytest.approx(x["grad_norm"], rel=1e-3)
    assert two["eval_likelihood_accuracy_after"] == pytest.approx(one["eval_likelihood_accuracy_after"], abs=0.02)


def test_lora_run_writes_a_merged_model(tmp_path):
    config = config_for(tmp_path, max_steps="3", **{"preference.epochs": "0", "model.lora_r": "4",
                                                    "learner.learning_rate": "1e-2"})
    summary = PreferenceTrainer(args=config).train()
    from transformers import AutoModelForCausalLM

    from rlkit.models import resolve_model_path

    trained = AutoModelForCausalLM.from_pretrained(summary["final_model"])
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-arith"))
    changed = [name for name, p in trained.state_dict().items() if not torch.equal(p, base.state_dict()[name])]
    assert changed and all("proj" in name for name in changed)  # LoRA's targets merged, nothing else moved


def test_bad_pairs_stop_the_run_before_anything_starts(tmp_path):
    rows = [{"prompt": "2+3=", "chosen": "5", "rejected": "6"}, {"prompt": "2+3=", "chosen": "5", "rejected": "5"},
            {"prompt": "1+1=", "chosen": "2"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = config_for(tmp_path, **{"data.train_file": str(path)})
    with pytest.raises(ConfigError, match=r"2 bad preference row\(s\) of 3:\n  row 2: 'chosen' and 'rejected' are "
                                          r"identical\n  row 3: missing column 'rejected'"):
        PreferenceTrainer(args=config)
    assert not (tmp_path / "run").exists()
    config.data.on_bad_row = "skip"  # or drop them, named in a warning
    assert [p.row for p in PreferenceTrainer(args=config).train_pairs] == [1]


def test_an_environment_without_pairs_needs_a_file(tmp_path):
    with pytest.raises(ConfigError, match="makes no preference pairs; give data.train_file"):
        PreferenceTrainer(args=config_for(tmp_path, **{"env.name": "code", "env.args": "{}"}))


def test_config_keys_of_the_loss_sit_beside_its_name_and_are_checked():
    config = RLConfig()
    apply_overrides(config, {"trainer": "preference", "preference.loss": "power", "preference.beta": "1.5"})
    assert config.preference.params == {"beta": 1.5}
    assert config.to_dict()["preference"]["beta"] == 1.5  # YAML form, as the run folder keeps it
    apply_overrides(config, {"preference.sft_wieght": "0.1"})
    from rlkit.validation import validate

    with pytest.raises(ConfigError, match="preference loss 'power' has no key 'sft_wieght'; did you mean 'sft_weight'"):
        validate(config)
    config = RLConfig()
    apply_overrides(config, {"trainer": "preference", "preference.loss": "kto"})
    with pytest.raises(ConfigError, match="preference.loss"):
        validate(config)


def test_label_statistics_bin_the_labels():
    stats = label_statistics([1.0, 0.95, 0.42, 0.05])
    assert stats["label_histogram"] == [1, 0, 0, 0, 1, 0, 0, 0, 0, 2]
    assert stats["labels_below_half"] == 0.5 and stats["label_min"] == 0.05


def test_arith_pairs_flip_the_asked_share_and_keep_held_out_pairs_clean():
    from rlkit import plugins

    clean = plugins.envs.get("arith")(train_size=4000).preference_dataset("train")
    noisy = plugins.envs.get("arith")(train_size=4000, pair_noise=0.3).preference_dataset("train")
    share = sum(r["flipped"] for r in noisy) / len(noisy)
    assert 0.28 < share < 0.32
    for a, b in zip(clean, noisy):
        assert (b["chosen"], b["rejected"]) == ((a["rejected"], a["chosen"]) if b["flipped"] else (a["chosen"], a["rejected"]))
    assert all(r["chosen"] == r["answer"] for r in clean)
    held_out = plugins.envs.get("arith")(pair_noise=0.5).preference_dataset("eval")
    assert not any(r["flipped"] for r in held_out) and all(r["chosen"] == r["answer"] for r in held_out)
    # the rejected answers are the bundled model's own mistakes where the shipped file has one
    assert clean[0] == {"prompt": "18+76=", "chosen": "94", "rejected": "93", "answer": "94", "flipped": False}


def test_rlkit_train_runs_a_preference_recipe(tmp_path):
    out = tmp_path / "cli-run"
    # --max_steps on the command line wins over the recipe's preference.epochs
    args = ["train", "--recipe", "power-dl-arith", "--max_steps", "2",
            "--save_steps", "1", "--output_dir", str(out), "--logging.progress", "false",
            "--preference.eval_generation", "false", "--env.args.train_size", "100"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainer"] == "preference" and summary["loss"] == "power" and summary["steps"] == 2
    assert (out / "reward_curve.png").is_file()  # training accuracy and held-out accuracy
    events = b"".join(p.read_bytes() for p in (out / "tb").glob("events.out.tfevents.*"))
    assert b"labels" in events and b"label_mean" in events  # the labels' histogram, beside the scalars


def test_a_run_killed_mid_way_resumes_to_the_uninterrupted_labels_and_metrics(tmp_path):
    """The driver is killed (SIGKILL, its whole process group: Ray with it) once the step-4
    checkpoint is complete; `rlkit train --resume` finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "rlkit.cli", "train", "--recipe", "power-dl-arith", "--max_steps", "16",
                "--preference.epochs", "0", "--save_steps", "4", "--output_dir", str(out), "--logging.progress",
                "false", "--logging.tensorboard", "false", "--preference.eval_generation", "false",
                "--env.args.train_size", "200", "--data.eval_limit", "50"]

    straight = tmp_path / "straight"
    subprocess.run(command(straight), check=True, capture_output=True)
    killed = tmp_path / "killed"
    process = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "step-000004" / "COMPLETE").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()  # it really was stopped mid-run
    # a --max_steps given on resume wins over preference.epochs (which would set it otherwise)
    result = CliRunner().invoke(app, ["train", "--resume", str(killed), "--logging.progress", "false",
                                      "--max_steps", "16", "--preference.epochs", "5"])
    assert result.exit_code == 0, result.output
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(killed / "metrics.jsonl")
    assert [m["step"] for m in b] == list(range(1, 17))
    for x, y in zip(a, b):
        for key in ("loss", "accuracy", "margin", "label_mean", "label_min", "grad_norm"):
            assert y[key] == pytest.approx(x[key], abs=1e-6), (key, x["step"])
        assert y["label_histogram"] == x["label_histogram"]
    assert (killed / "pair_labels.jsonl").read_text() == (straight / "pair_labels.jsonl").read_text()
    # the histogram counts the pairs used so far: 32 a step of 200 pairs, all of them from step 7
    assert [sum(m["label_histogram"]) for m in a][:8] == [32, 64, 96, 128, 160, 192, 200, 200]


def test_a_datasets_dataset_of_conversational_pairs_trains(tmp_path):
    """TRL's conversational preference format, from a ``datasets.Dataset``: the prompt is rendered
    with the chat template (here one set on a copy of the bundled model), responses are message lists."""
    import datasets

    from rlkit.models import load_tokenizer, resolve_model_path
    from rlkit.config import ModelConfig

    model_dir = tmp_path / "chat-model"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-arith")).save_pretrained(model_dir)
    tokenizer = load_tokenizer(ModelConfig())
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(model_dir)
    rows = [{"prompt": [{"role": "user", "content": f"{a}+{b}="}],
             "chosen": [{"role": "assistant", "content": str(a + b)}],
             "rejected": [{"role": "assistant", "content": str(a + b + 1)}]} for a in range(10) for b in range(10)]
    config = config_for(tmp_path, max_steps="2", **{"preference.epochs": "0", "model.name_or_path": str(model_dir)})
    trainer = PreferenceTrainer(args=config, train_dataset=datasets.Dataset.from_list(rows),
                                eval_dataset=datasets.Dataset.from_list(rows[:20]))
    assert trainer.train_pairs[0].prompt == "0+0=" and trainer.train_pairs[0].chosen == "0"
    summary = trainer.train()
    assert summary["train_pairs"] == 100 and summary["eval_pairs"] == 20 and summary["steps"] == 2


def test_a_preference_loss_plugin_from_a_file_trains(tmp_path):
    """docs/plugins.md's IPO example, as a file reference: one new file, no change to rlkit."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"## Preference losses.*?```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "my_losses.py").write_text(code)
    config = config_for(tmp_path, recipe="dpo-arith", max_steps="2", **{
        "preference.epochs": "0", "preference.loss": f"{tmp_path / 'my_losses.py'}:IPO",
        "preference.params": "{tau: 0.1}"})
    summary = PreferenceTrainer(args=config).train()
    metrics = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    assert metrics[0]["loss"] == pytest.approx(25.0, abs=1e-4)  # margin 0 at the reference: (0 - 1/0.2)^2


def test_the_rl_trainer_refuses_a_preference_config_and_eval_still_scores_its_model():
    from rlkit.trainer import RLTrainer

    with pytest.raises(ConfigError, match="use PreferenceTrainer"):
        RLTrainer(args=load_config(recipe="power-dl-arith"))
    result = CliRunner().invoke(app, ["eval", "--recipe", "power-dl-arith", "--data.eval_limit", "20"])
    assert result.exit_code == 0 and "pass rate" in result.output, result.output
