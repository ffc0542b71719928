"""Conversational datasets as TRL defines them: chat templates, TRL's reward functions unchanged,
the same data file in TRL's GRPOTrainer, and bad conversational input named by row."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlkit.chat import as_completion, encode_prompt, render_prompt
from rlkit.config import ConfigError, ModelConfig, RLConfig
from rlkit.models import load_tokenizer, resolve_model_path
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer
from rlkit.validation import load_config

# the bundled model reads "18+76=" and answers "94": a template that renders a user message as that
TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
            "{% elif m['role'] == 'system' %}{{ m['content'] }}|{% else %}{{ m['content'] }}{% endif %}{% endfor %}")
QUICK = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false", "save_steps": "0",
         "rollout.prompts_per_step": "8", "rollout.num_generations": "4", "data.eval_limit": "16"}


def chat_rows(n: int, start: int = 0) -> list[dict]:
    rows = []
    for i in range(start, start + n):
        a, b = 7 * i % 90, 13 * i % 90
        rows.append({"prompt": [{"role": "user", "content": f"{a}+{b}="}], "solution": str(a + b),
                     "answer": str(a + b)})
    return rows


def tokenizer_with_template():
    return load_tokenizer(ModelConfig(chat_template=TEMPLATE))


def test_a_conversational_prompt_renders_through_the_template_with_the_system_prompt():
    tokenizer = tokenizer_with_template()
    prompt = [{"role": "user", "content": "2+3="}]
    assert render_prompt(tokenizer, prompt) == "2+3="
    assert render_prompt(tokenizer, prompt, system_prompt="sum") == "sum|2+3="
    own = [{"role": "system", "content": "mine"}, *prompt]
    assert render_prompt(tokenizer, own, system_prompt="sum") == "mine|2+3="  # its own system message stays
    # no BOS added to a rendered conversation (the template writes its own); plain text keeps the tokenizer's
    assert encode_prompt(tokenizer, prompt) == tokenizer("2+3=", add_special_tokens=False)["input_ids"]
    assert encode_prompt(tokenizer, "2+3=") == tokenizer("2+3=")["input_ids"]
    assert as_completion(prompt, "5") == [{"role": "assistant", "content": "5"}] and as_completion("2+3=", "5") == "5"


def test_a_template_file_is_read_and_saved_with_the_final_model(tmp_path):
    path = tmp_path / "template.jinja"
    path.write_text(TEMPLATE)
    assert load_tokenizer(ModelConfig(chat_template=str(path))).chat_template == TEMPLATE
    with pytest.raises(ConfigError, match="neither a file nor a Jinja template"):
        load_tokenizer(ModelConfig(chat_template=str(tmp_path / "missing.jinja")))
    with pytest.raises(ConfigError, match="model.chat_template: .*missing.jinja.* is neither a file"):
        load_config(None, {"model.chat_template": str(tmp_path / "missing.jinja")})  # before anything starts


def test_trl_rewards_run_unchanged_on_a_conversational_dataset(tmp_path):
    from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

    record = tmp_path / "seen.json"

    def spy(prompts, completions, solution, **kwargs):  # runs in a reward actor: it reports through a file
        record.write_text(json.dumps({"prompt": prompts[0], "completion": completions[0], "solution": solution[0],
                                      "columns": sorted(kwargs)}))
        return [0.0] * len(completions)

    config = load_config(None, {**QUICK, "max_steps": "2", "output_dir": str(tmp_path / "run"),
                                "model.chat_template": TEMPLATE, "env.args.chat": "true"})
    trainer = RLTrainer(args=config, reward_funcs=[think_format_reward, accuracy_reward,
                                                   get_soft_overlong_punishment(8, 2), "exact_match", spy])
    summary = trainer.train()
    metrics = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    assert [m["failures"] for m in metrics] == [0, 0]
    assert not (Path(summary["run_dir"]) / "failures.jsonl").exists()
    # as TRL's GRPOTrainer passes them: the prompt's messages, the completion as an assistant message,
    # every other column as a keyword
    seen = json.loads(record.read_text())
    assert seen["prompt"][0]["role"] == "user" and seen["completion"][0]["role"] == "assistant"
    assert seen["solution"].isdigit() and {"answer", "completion_ids"} <= set(seen["columns"])
    # exact_match (rlkit's, text or messages alike) scores the same answers accuracy_reward does
    assert summary["eval_pass_rate_before"] > 0.2


def test_trl_grpo_trainer_reads_the_same_conversational_file(tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer
    from trl.rewards import accuracy_reward

    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(8)))
    # rlkit reads it (checked and rendered before the run) ...
    trainer = RLTrainer(args=load_config(None, {**QUICK, "data.train_file": str(path), "model.chat_template": TEMPLATE,
                                                "rewards.funcs": "[trl.rewards:accuracy_reward]"}))
    assert trainer.train_rows[0]["prompt"] == [{"role": "user", "content": "0+0="}]
    # ... and so does TRL's own trainer, one step, the file unchanged
    tokenizer = tokenizer_with_template()
    settings = dict(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=8, num_generations=4,
                    max_completion_length=4, learning_rate=1e-4, bf16=False, use_cpu=True, report_to="none",
                    save_strategy="no", max_steps=1, seed=0, disable_tqdm=True)
    checkpointing = next(n for n in ("activation_checkpointing", "gradient_checkpointing")
                         if n in GRPOConfig.__dataclass_fields__)
    grpo = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-arith")),
                       reward_funcs=accuracy_reward, args=GRPOConfig(**settings, **{checkpointing: False}),
                       train_dataset=datasets.load_dataset("json", data_files=str(path), split="train"),
                       processing_class=tokenizer)
    grpo.train()
    assert grpo.state.global_step == 1


def test_bad_conversational_rows_are_named_before_anything_starts(tmp_path):
    rows = chat_rows(3)
    rows[1]["prompt"] = [{"role": "bot", "content": "1+1="}]
    with pytest.raises(ConfigError, match=r"train_dataset, row 2: prompt column 'prompt': message 1 has unknown "
                                          r"role 'bot'"):
        RLTrainer(args=load_config(None, {**QUICK, "model.chat_template": TEMPLATE}), train_dataset=rows)
    # a template that fails to render a row
    failing = "{% for m in messages %}{{ m['content'] }}{% if m['content'] == '7+13=' %}{{ raise_exception('no') }}{% endif %}{% endfor %}"
    with pytest.raises(ConfigError, match=r"train_dataset, row 2: the chat template cannot render the prompt"):
        RLTrainer(args=load_config(None, {**QUICK, "model.chat_template": failing}), train_dataset=chat_rows(3))
    # a tokenizer without a template, and none given
    with pytest.raises(ConfigError, match=r"train_dataset, row 1: a conversational prompt, and the tokenizer has no "
                                          r"chat template to render it; set model.chat_template"):
        RLTrainer(args=load_config(None, QUICK), train_dataset=chat_rows(3))
    assert not (tmp_path / "runs").exists()


def test_a_prompt_over_max_prompt_length_is_refused_or_truncated(tmp_path):
    rows = [{"prompt": "12+34=", "answer": "46"}, {"prompt": "1+2+3+4+5+6=", "answer": "21"}]
    with pytest.raises(ConfigError, match=r"train_dataset, row 2: the prompt has 12 tokens, more than "
                                          r"data.max_prompt_length 8"):
        RLTrainer(args=load_config(None, {**QUICK, "data.max_prompt_length": "8"}), train_dataset=rows)
    trainer = RLTrainer(args=load_config(None, {**QUICK, "data.max_prompt_length": "8",
                                                "data.on_long_prompt": "truncate"}), train_dataset=rows)
    from rlkit.rollout.worker import RolloutWorker

    worker = RolloutWorker(trainer.config, trainer.reward_funcs, threads=0)
    full = worker.tokenizer("1+2+3+4+5+6=")["input_ids"]
    assert worker._encode_prompt("1+2+3+4+5+6=") == full[-8:]  # the last 8 tokens, as TRL keeps them


def test_stop_strings_end_a_completion_and_its_text_stops_before_them():
    import torch

    from rlkit.rollout.engines import Request, SamplingParams, generate
    from rlkit.rollout.engines.hf import HFEngine
    from rlkit.rollout.worker import RolloutWorker

    config = RLConfig()
    worker = RolloutWorker(config, [("exact_match", "exact_match")], threads=0)
    prompts = ["12+34=", "7+8=", "99+99="]
    requests = [Request.of(worker._encode(p), 1, key=i) for i, p in enumerate(prompts)]
    plain = generate(worker.engine, requests, SamplingParams(max_new_tokens=8, greedy=True), seed=0)
    texts = [worker._decode(s[0].completion_ids) for s in plain]
    assert texts == ["46", "85", "186"]  # the bundled model's greedy answers
    # "4" ends the first answer after one token, "5" the second after two; the third never hits one
    stopped = generate(worker.engine, requests, SamplingParams(max_new_tokens=8, greedy=True, stop=("4", "5")), seed=0)
    assert [len(s[0].completion_ids) for s in stopped] == [1, 2, len(plain[2][0].completion_ids)]
    assert [s[0].truncated for s in stopped] == [False, False, False]
    worker.config.rollout.stop = ["4", "5"]
    assert [worker._rollout(s[0]).text for s in stopped] == ["", "8", "186"]
    # an engine that ignores stop strings: the worker cuts the tokens and the text itself
    cut = worker._rollout(plain[1][0])
    assert cut.text == "8" and len(cut.completion_ids) == 2 and not cut.truncated
    # end tokens come from the generation config too (a chat model ends its turn with its own)
    engine = HFEngine(worker.engine.model, worker.tokenizer)
    engine.model.generation_config.eos_token_id = [worker.tokenizer.eos_token_id, worker._encode("8")[-1]]
    engine = HFEngine(worker.engine.model, worker.tokenizer)
    ended = generate(engine, [requests[2]], SamplingParams(max_new_tokens=8, greedy=True), seed=0)[0][0]
    assert worker._decode(ended.completion_ids) == "18" and not ended.truncated
    engine.model.generation_config.eos_token_id = worker.tokenizer.eos_token_id
    assert torch.equal(HFEngine(worker.engine.model, worker.tokenizer).end_ids,
                       torch.tensor([worker.tokenizer.eos_token_id]))


def test_the_exported_model_and_lora_adapter_reload_and_generate_as_the_engine_did(tmp_path):
    """The final folder loads with AutoModelForCausalLM and AutoTokenizer (chat template included);
    with LoRA the adapter is written too; both give the greedy answers rlkit's engine gives."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlkit.rollout.engines import Request, SamplingParams, generate
    from rlkit.rollout.worker import RolloutWorker

    config = load_config(None, {**QUICK, "max_steps": "2", "output_dir": str(tmp_path / "run"),
                                "model.chat_template": TEMPLATE, "env.args.chat": "true", "model.lora_r": "4",
                                "learner.learning_rate": "5e-2"})
    summary = RLTrainer(args=config).train()
    final = Path(summary["final_model"])
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template == TEMPLATE
    merged = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-arith"))
    adapted = PeftModel.from_pretrained(base, final / "adapter").merge_and_unload()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(tensor, adapted.state_dict()[name], atol=1e-6), name
    assert any(not torch.equal(t, AutoModelForCausalLM.from_pretrained(resolve_model_path("tiny-arith"))
                               .state_dict()[n]) for n, t in merged.state_dict().items())  # it trained
    # greedy answers: transformers' generate on the reloaded model == rlkit's engine on the final folder
    worker_config = load_config(None, {**QUICK, "model.name_or_path": str(final)})
    worker = RolloutWorker(worker_config, [("exact_match", "exact_match")], threads=0)
    prompts = [r["prompt"] for r in chat_rows(6)]
    ids = [encode_prompt(tokenizer, p) for p in prompts]
    ours = generate(worker.engine, [Request.of(x, 1, key=i) for i, x in enumerate(ids)],
                    SamplingParams(max_new_tokens=8, greedy=True), seed=0)
    for x, samples in zip(ids, ours):
        out = merged.generate(torch.tensor([x]), max_new_tokens=8, do_sample=False,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        assert out[0, len(x):].tolist()[:len(samples[0].completion_ids)] == samples[0].completion_ids


@pytest.mark.parametrize("recipe", ["gsm8k-qwen2.5-0.5b", "gsm8k-qwen2.5-7b"])
def test_real_model_recipes_are_valid_configs(recipe):
    """Loaded and checked as `rlkit train` would, except that the hub model is not fetched (no network
    here): every key exists, every value has its type and range, the plugins and the environment's
    arguments resolve."""
    from rlkit import plugins, validation
    from rlkit.config import apply_mapping, normalize_objective, read_yaml, recipe_path

    text = recipe_path(recipe).read_text()
    assert "# Needs:" in text  # the GPUs and memory it takes, said up front
    config = RLConfig()
    apply_mapping(config, normalize_objective(read_yaml(recipe_path(recipe))), recipe)
    validation._check_choices_and_ranges(config)
    validation._check_relations(config)
    validation._check_plugins(config)
    env = plugins.envs.get(config.env.name)(**config.env.args)
    assert env.chat and env.dataset_config == "main"
    assert config.model.dtype == "bfloat16" and config.model.name_or_path.startswith("Qwen/")


def test_rlkit_train_runs_the_tiny_chat_recipe(tmp_path):
    from typer.testing import CliRunner

    from rlkit.cli import app

    out = tmp_path / "chat-run"
    result = CliRunner().invoke(app, ["train", "--recipe", "gsm8k-chat-tiny", "--max_steps", "2", "--output_dir",
                                      str(out), "--logging.progress", "false", "--data.eval_limit", "20"])
    assert result.exit_code == 0, result.output
    metrics = read_metrics(out / "metrics.jsonl")
    assert len(metrics) == 2 and all(m["failures"] == 0 for m in metrics)
    assert json.loads((out / "summary.json").read_text())["eval_pass_rate_before"] > 0.2


def test_multi_turn_feedback_goes_through_the_chat_template(tmp_path):
    """arith_retry with chat: the hint is a user message; the episode's tokens are exactly the
    template's rendering of its messages, and the template's tokens are masked out of the loss."""
    from rlkit.rollout.worker import RolloutWorker

    config = load_config(None, {**QUICK, "env.name": "arith_retry", "env.args": "{chat: true, max_turns: 3}",
                                "model.chat_template": TEMPLATE, "objective.name": "trloo",
                                "rollout.temperature": "1.0"})
    trainer = RLTrainer(args=config)
    worker = RolloutWorker(trainer.config, trainer.reward_funcs, threads=0)
    rows = trainer.train_rows[:6]
    groups = worker.generate_groups(list(enumerate(rows)), seed=3)
    tokenizer = worker.tokenizer
    multi = 0
    for row, group in zip(rows, groups):
        assert group.prompt == row["prompt"][0]["content"]  # rendered by the template
        for rollout in group.rollouts:
            turns = len(rollout.turn_rewards)
            multi += turns > 1
            # the whole context, decoded, is the template's rendering of the conversation it played
            messages = list(row["prompt"])
            model_turns = [tokenizer.decode([t for t, k, m in zip(rollout.completion_ids, rollout.token_turns,
                                                                    rollout.loss_mask) if k == turn and m],
                                            skip_special_tokens=True) for turn in range(turns)]
            for turn, text in enumerate(model_turns):
                messages.append({"role": "assistant", "content": text})
                if turn + 1 < turns:
                    answer = int(row["answer"])
                    guess = text.strip()
                    hint = "number?" if not guess.lstrip("-").isdigit() else ("higher" if int(guess) < answer else "lower")
                    messages.append({"role": "user", "content": f" {hint}\n{row['prompt'][0]['content']}"})
            full = tokenizer.decode(group.prompt_ids + rollout.completion_ids, skip_special_tokens=False)
            rendered = tokenizer.apply_chat_template(messages, tokenize=False)
            ends_open = not rollout.truncated  # a model turn ended by the end token, as the template ends it
            assert full == (rendered if ends_open else rendered[:len(full)]), (full, rendered)
    assert multi, "no episode took a second turn"
