"""End-to-end runs of the tiny model: learning, schedule equivalence, DeepSpeed ZeRO, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlkit.validation import load_config
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer

pytestmark = pytest.mark.slow

QUICK = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false",
         "data.eval_limit": "100", "save_steps": "0"}


def train(tmp_path: Path, name: str, **overrides: str) -> tuple[dict, list[dict]]:
    out = tmp_path / name
    config = load_config(None, {**QUICK, "output_dir": str(out), **overrides})
    summary = RLTrainer(args=config).train()
    return summary, read_metrics(out / "metrics.jsonl")


def same_curves(a: list[dict], b: list[dict], keys=("reward_mean", "loss", "entropy"), tol=1e-4) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key in keys:
            assert row_a[key] == pytest.approx(row_b[key], abs=tol), (key, row_a["step"])


def test_seeded_run_improves_the_held_out_pass_rate(tmp_path):
    # the default config, a third of the default length, on all 200 held-out problems
    summary, metrics = train(tmp_path, "learn", max_steps="100", save_steps="50",
                             **{"data.eval_limit": "0", "logging.plot": "true", "logging.tensorboard": "true"})
    assert summary["steps"] == 100 and summary["eval_rows"] == 200
    assert summary["eval_pass_rate_after"] >= summary["eval_pass_rate_before"] + 0.08
    early, late = (sum(m["reward_mean"] for m in part) / 20 for part in (metrics[:20], metrics[-20:]))
    assert late >= early + 0.03  # the sampled reward rises too, not just the greedy answer
    assert [m["step"] for m in metrics] == list(range(1, 101))
    assert {"reward_mean", "loss", "entropy", "tokens_per_second", "policy_version"} <= set(metrics[0])
    assert all(m["policy_version"] == m["step"] - 1 for m in metrics)  # on-policy: version k trains step k
    assert all(m["grad_norm"] > 0 for m in metrics)  # every step applies an update
    run = Path(summary["run_dir"])
    assert (run / "final" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step-000050" / "COMPLETE").is_file()
    assert (run / "reward_curve.png").stat().st_size > 0 and any((run / "tb").iterdir())
    assert json.loads((run / "summary.json").read_text())["eval_pass_rate_after"] == summary["eval_pass_rate_after"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "final")


def test_periodic_async_matches_sync(tmp_path):
    _, sync = train(tmp_path, "sync", max_steps="3", **{"rollout.schedule": "sync"})
    _, periodic = train(tmp_path, "periodic", max_steps="3", **{"rollout.schedule": "periodic_async"})
    same_curves(sync, periodic)


def test_periodic_async_trains_early_groups_while_long_ones_still_decode(tmp_path):
    # a temperature that flattens the tiny model's distribution: the end token then comes after a
    # token or two in some completions and never in others, which run to 48 tokens. A micro-batch is
    # one group, handed to the learner the moment the group ends.
    settings = {"max_steps": "2", "rollout.temperature": "8", "rollout.max_completion_length": "48",
                "rollout.num_generations": "4", "rollout.prompts_per_step": "16", "learner.micro_batch_size": "4",
                # a reward the random completions vary in: a length penalty past 8 tokens
                "rewards.funcs": "[length_penalty]", "rewards.args": "{length_penalty: {max_tokens: 8, buffer: 32}}"}
    _, periodic = train(tmp_path, "periodic", **settings)
    _, sync = train(tmp_path, "sync", **settings, **{"rollout.schedule": "sync"})
    assert all(m["truncated_fraction"] > 0 and m["completion_length"] < 40 for m in periodic)  # long and short
    # learner seconds spent while the step was still generating: the first groups were trained
    # before the longest sample had ended. Under sync the learner starts only after the last group.
    assert all(m["learner_overlap_seconds"] > 0 for m in periodic)
    assert all(m["learner_overlap_seconds"] == 0 for m in sync)
    same_curves(sync, periodic)  # the same samples and the same update, in another order
    assert all(m["grad_norm"] > 0 for m in periodic)  # there was an update to compare


@pytest.mark.parametrize("stage, micro_batch_size", [(2, "24"), (3, "0")])
def test_zero_stage_with_two_learners_matches_a_single_plain_learner(tmp_path, stage, micro_batch_size):
    # one learner: the whole step in one micro-batch (the token budget holds it). Two ranks under
    # ZeRO-3: half the step each (a rank's share caps a micro-batch). Under ZeRO-2 with 3 groups a
    # micro-batch: 11 micro-batches, 6 and 5, and the second rank runs a filler pass to match.
    _, plain = train(tmp_path, "zero0", max_steps="3")
    _, sharded = train(tmp_path, f"zero{stage}", max_steps="3", **{
        "learner.micro_batch_size": micro_batch_size, "learner.zero_stage": str(stage), "learner.num_learners": "2"})
    assert all(m["grad_norm"] > 0 for m in plain + sharded)  # every step is an update
    same_curves(plain, sharded, keys=("reward_mean", "loss", "entropy", "grad_norm"))


def test_bounded_staleness_runs_off_policy(tmp_path):
    _, metrics = train(tmp_path, "stale", max_steps="4", **{"rollout.max_staleness": "2"})
    assert max(m["staleness"] for m in metrics) == 2
    assert metrics[0]["policy_version"] == 0 and metrics[3]["policy_version"] == 1


def _rlkit(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlkit.cli", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _flags(mapping: dict[str, str]) -> list[str]:
    return [item for key, value in mapping.items() for item in (f"--{key}", value)]


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    common = {**QUICK, "max_steps": "6", "save_steps": "2"}
    _, straight = train(tmp_path, "straight", **{k: v for k, v in common.items()})

    run = tmp_path / "killed"
    proc = _rlkit("train", *_flags({**common, "output_dir": str(run)}))
    marker = run / "checkpoints" / "step-000004" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()

    resumed = _rlkit("train", "--resume", str(run))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 7))
    same_curves(straight, metrics, keys=("reward_mean", "loss", "entropy", "policy_version"), tol=1e-6)


def test_python_api_with_a_trl_style_reward_and_an_in_memory_dataset(tmp_path):
    from rlkit import RLConfig

    def digits_reward(prompts, completions, answer, level, **kwargs):  # TRL's signature, extra columns
        assert set(level) == {"easy"} and len(prompts) == len(completions) == len(answer)
        return [float(c.strip() == a) for c, a in zip(completions, answer)]

    from rlkit.envs.arith import ArithEnv

    rows = [{**row, "level": "easy"} for row in ArithEnv().dataset("train")[:64]]  # plain dicts, one more column
    trainer = RLTrainer(model="tiny-arith", reward_funcs=[digits_reward],
                        args=RLConfig(max_steps=2, num_generations=4, prompts_per_step=8, micro_batch_size=16,
                                      output_dir=str(tmp_path / "api"), save_steps=0, progress=False, plot=False,
                                      tensorboard=False),
                        train_dataset=rows, eval_dataset=rows[:20])
    summary = trainer.train()
    metrics = read_metrics(tmp_path / "api" / "metrics.jsonl")
    assert summary["steps"] == 2 and summary["eval_rows"] == 20
    assert len(metrics) == 2 and 0.0 < metrics[0]["reward_mean"] < 1.0  # the user's reward really scored


def test_a_rollout_worker_killed_mid_run_is_restarted_and_nothing_is_lost(tmp_path):
    from rlkit import RLConfig
    from rlkit.envs.arith import ArithEnv

    def counted_exact(calls: Path, die_at: int = 0):
        def exact(prompts, completions, answer, **kwargs):
            # runs inside the rollout worker (rewards.num_workers 0): one call for the evaluation, then
            # one per batch of groups that end together. Call 3 is in step 1's stream, after a batch of
            # its groups was delivered: the process dies outright.
            with open(calls, "a") as f:
                f.write("x")
            if calls.stat().st_size == die_at:
                os._exit(1)
            return [float(c.strip() == a) for c, a in zip(completions, answer)]
        return exact

    env = ArithEnv()
    results = {}
    for name, die_at in (("steady", 0), ("crashing", 3)):
        config = RLConfig(max_steps=3, save_steps=0, output_dir=str(tmp_path / name), progress=False, plot=False,
                          tensorboard=False, rewards={"num_workers": 0})
        RLTrainer(reward_funcs=[counted_exact(tmp_path / f"{name}-calls", die_at)], args=config,
                  train_dataset=env.dataset("train")[:500], eval_dataset=env.dataset("eval")[:20]).train()
        results[name] = read_metrics(tmp_path / name / "metrics.jsonl")
    # the stream that died is sent again whole: its 2 calls before the death are made again
    steady, crashing = ((tmp_path / f"{name}-calls").stat().st_size for name in ("steady", "crashing"))
    assert crashing == steady + 2
    # the groups delivered before the death are not trained twice, the others not lost: the same run
    # 1e-5: after the restart the groups reach the learner in another order, and float sums follow it
    same_curves(results["steady"], results["crashing"], keys=("reward_mean", "loss", "entropy", "policy_version"),
                tol=1e-5)
    assert [m["actor_retries"] for m in results["crashing"]] == [1, 0, 0]


def test_dapo_dynamic_sampling_trains_only_groups_with_a_gradient_the_same_under_both_schedules(tmp_path):
    dapo = {"objective.name": "dapo", "max_steps": "3"}
    _, sync = train(tmp_path, "dapo-sync", **dapo, **{"rollout.schedule": "sync"})
    _, periodic = train(tmp_path, "dapo-periodic", **dapo)
    same_curves(sync, periodic, keys=("reward_mean", "loss", "entropy", "sampled_groups"))
    for m in periodic:
        assert m["skipped_groups"] == 0 and m["filler_groups"] == 0  # every trained group has a gradient
        assert m["sampled_groups"] > 32 and m["sampling_rounds"] >= 1  # the dropped ones were replaced
    # no extra rounds allowed: the step is topped up with zero-variance groups and still trains
    _, capped = train(tmp_path, "dapo-capped", **dapo, **{"rollout.max_sampling_rounds": "0"})
    assert all(m["sampled_groups"] == 32 and m["filler_groups"] > 0 for m in capped)
    assert all(m["skipped_groups"] >= m["filler_groups"] - 4 for m in capped)  # fillers cost (almost) nothing


def test_replayed_groups_train_off_policy_and_resume_exactly(tmp_path):
    # BAPO on a quarter of replayed groups: their ratio is taken against the recorded log-probs
    replay = {"objective.name": "bapo", "rollout.replay_fraction": "0.25", "max_steps": "4", "save_steps": "2"}
    summary, straight = train(tmp_path, "replay", **replay)
    assert straight[0]["replayed_groups"] == 0 and all(m["replayed_groups"] == 8 for m in straight[1:])
    assert all(m["replay_age"] >= 1 for m in straight[1:])
    assert all(m["ratio_mean"] != 1.0 for m in straight[1:])  # the replayed rows are off-policy
    assert all("bapo_clip_low" in m and m["grad_norm"] > 0 for m in straight)
    # the buffer is checkpointed: resuming from step 2 repeats steps 3 and 4
    RLTrainer.from_run(summary["run_dir"], {"logging.progress": "false"}).train(resume=True)
    again = read_metrics(Path(summary["run_dir"]) / "metrics.jsonl")
    same_curves(straight, again, keys=("reward_mean", "loss", "entropy", "ratio_mean", "replay_age"), tol=1e-6)
