"""Multi-turn episodes: the environment's feedback sits between the model's turns, attended to but
masked out of the loss; per-turn rewards reach the objective; a broken environment ends an
episode, not the run."""

from __future__ import annotations

import pytest
import torch

import rlkit
from rlkit.config import RLConfig
from rlkit.data import TrainBatch
from rlkit.envs.arith_retry import ArithRetryEnv, hint
from rlkit.envs.base import Environment, StepResult
from rlkit.learner.learner import batch_advantages
from rlkit.learner.scoring import policy_logprobs
from rlkit.models import load_model
from rlkit.objectives import objective_from_config
from rlkit.rollout.episodes import EpisodeRunner
from rlkit.rollout.engines import SamplingParams
from rlkit.rollout.worker import RolloutWorker


@pytest.fixture(scope="module")
def worker() -> RolloutWorker:
    config = RLConfig()
    config.env.name = "arith_retry"
    config.rollout.num_generations = 4
    worker = RolloutWorker(config, [], threads=0)
    # float64: the learner-vs-engine comparison below then checks contexts and positions exactly,
    # not fp32 noise (which differs between CPUs' kernels by about 1e-4 on this model)
    worker.engine.model.double()
    return worker


@pytest.fixture(scope="module")
def groups(worker):
    rows = ArithRetryEnv().dataset("eval")[:8]
    return worker.generate_groups(list(enumerate(rows)), seed=3)


def test_hint_points_to_the_answer():
    assert hint("73", 81) == "higher" and hint(" 90", 81) == "lower" and hint("8x", 81) == "number?"


def test_env_rewards_a_right_answer_and_gives_a_hint_otherwise():
    env = ArithRetryEnv()
    assert env.reset({"prompt": "23+58=", "answer": "81"}) == "23+58="
    assert env.step(["23+58="], "81") == StepResult(reward=1.0, done=True)
    assert env.step(["23+58="], "79") == StepResult(reward=0.0, done=False, feedback=" higher\n23+58=")


def test_episode_layout_masks_the_environment_tokens(worker, groups):
    tokenizer = worker.tokenizer
    multi = 0
    for group in groups:
        for rollout in group.rollouts:
            n = len(rollout.completion_ids)
            assert len(rollout.loss_mask) == len(rollout.token_turns) == len(rollout.behavior_logprobs) == n
            turns = len(rollout.turn_rewards)
            assert 1 <= turns <= 3 and rollout.reward == sum(rollout.turn_rewards)
            assert rollout.turn_rewards[:-1] == [0.0] * (turns - 1)  # only the last turn can be the right one
            env_ids = [t for t, m in zip(rollout.completion_ids, rollout.loss_mask) if not m]
            feedback = tokenizer.decode(env_ids)
            if turns > 1:
                multi += 1
                assert feedback.count(group.prompt) == turns - 1  # the problem, restated after each miss
                assert all(rollout.behavior_logprobs[i] == 0.0 for i, m in enumerate(rollout.loss_mask) if not m)
            else:
                assert env_ids == []
            assert max(rollout.token_turns) == turns - 1
    assert multi > 0  # the base model misses often enough that some episodes take several turns


def test_learner_scores_the_model_turns_as_the_engine_sampled_them(worker, groups):
    batch = TrainBatch.from_groups(groups, worker.tokenizer.pad_token_id)
    assert torch.equal(batch.attention_mask[:, batch.prompt_ids.shape[1]:], (batch.completion_ids != 0).long()
                       | batch.completion_mask)  # feedback attended to
    assert (batch.completion_attention - batch.completion_mask).sum() > 0  # and not trained on
    model = load_model(RLConfig().model, trainable=False).double()
    for share in (True, False):
        logprobs, _ = policy_logprobs(model, batch, 1.0, share_prompts=share)
        gap = ((logprobs - batch.behavior_logprobs).abs() * batch.completion_mask).max()
        assert gap < 1e-6  # same contexts and positions as generation, turn after turn


def test_each_token_takes_its_turns_advantage(groups, worker):
    batch = TrainBatch.from_groups(groups, worker.tokenizer.pad_token_id)
    trloo = objective_from_config("trloo", {})
    advantages = batch_advantages(trloo, batch)
    per_turn = trloo.compute_turn_advantages(batch.turn_rewards, batch.turn_reached).reshape(batch.num_sequences, -1)
    for row in range(batch.num_sequences):
        for col in range(batch.completion_ids.shape[1]):
            expected = per_turn[row, batch.token_turns[row, col]] if batch.completion_mask[row, col] else 0.0
            assert advantages[row, col] == expected
    grpo = objective_from_config("grpo", {})
    assert batch_advantages(grpo, batch).shape == (batch.num_sequences,)  # GRPO: one advantage per episode


@pytest.mark.parametrize("name", ["trloo", "grpo"])
def test_the_drivers_advantages_are_the_ones_the_learner_would_compute(groups, worker, name):
    """Assigned once on the driver, carried by the rollouts: per token for trloo, per episode for grpo."""
    import copy

    objective = objective_from_config(name, {})
    own = batch_advantages(objective, TrainBatch.from_groups(groups, worker.tokenizer.pad_token_id))
    assigned = copy.deepcopy(groups)
    objective.assign_advantages(assigned)
    assert all(r.advantage is not None or r.turn_advantages is not None for g in assigned for r in g.rollouts)
    carried = TrainBatch.from_groups(assigned, worker.tokenizer.pad_token_id).advantages
    assert carried.shape == own.shape and torch.allclose(carried, own, atol=1e-6)
    # a micro-batch of one group carries the same values as its rows of the whole step
    alone = TrainBatch.from_groups(assigned[1:2], worker.tokenizer.pad_token_id).advantages
    width = alone.shape[-1] if alone.dim() == 2 else None
    rows = slice(len(groups[0].rollouts), 2 * len(groups[0].rollouts))
    assert torch.allclose(alone, own[rows, :width] if width else own[rows], atol=1e-6)


def test_greedy_evaluation_plays_whole_episodes(worker):
    rows = ArithRetryEnv().dataset("eval")[:40]
    first = worker.evaluate(rows, 1.0)
    assert first == worker.evaluate(rows, 1.0)  # greedy is deterministic
    one_turn = RolloutWorker(worker.config, [], threads=0)
    one_turn.episodes.max_turns = 1
    assert first["pass_rate"] >= one_turn.evaluate(rows, 1.0)["pass_rate"]


class _Broken(Environment):
    multi_turn = True
    max_turns = 3

    def reset(self, row):
        return row["prompt"]

    def step(self, history, completion):
        if len(history) > 1:
            raise RuntimeError("the environment broke")
        return StepResult(reward=0.5, done=False, feedback=" again\n" + history[0])


class _NotANumber(_Broken):
    def step(self, history, completion):
        return StepResult(reward="lots", done=False, feedback="x")


@pytest.mark.parametrize("env, error", [(_Broken(), "the environment broke"), (_NotANumber(), "lots")])
def test_a_broken_environment_ends_the_episode_not_the_run(worker, env, error):
    runner = EpisodeRunner(worker.engine, worker.tokenizer, env, max_turns=3, max_positions=128)
    sampling = SamplingParams(max_new_tokens=8)
    out = runner.run([{"prompt": "1+2="}], 2, sampling, seed=0)
    for rollout in out[0]:
        assert rollout.turn_rewards[-1] == 0.0 and len(rollout.turn_rewards) <= 2
    assert len(runner.failures) == 2 and error in runner.failures[0]["error"]
    assert runner.failures[0]["history"][0] == "1+2="  # the offending turn is kept


def test_episodes_stop_before_the_context_runs_out(worker):
    runner = EpisodeRunner(worker.engine, worker.tokenizer, ArithRetryEnv(max_turns=50), max_turns=50,
                           max_positions=64)
    out = runner.run([{"prompt": "98+97=", "answer": "0"}], 2, SamplingParams(max_new_tokens=8), seed=0)
    for rollout in out[0]:
        assert len(rollout.completion_ids) + 6 <= 64 and len(rollout.turn_rewards) < 50


def test_a_reset_that_varies_within_a_group_is_refused(worker):
    counter = iter(range(100))

    class Shifty(_Broken):
        def reset(self, row):
            return f"{next(counter)}="

    runner = EpisodeRunner(worker.engine, worker.tokenizer, Shifty(), max_turns=2, max_positions=128)
    with pytest.raises(ValueError, match="share their prompt"):
        runner.run([{"prompt": "1+2="}], 2, SamplingParams(max_new_tokens=4), seed=0)


def test_multi_turn_env_is_registered_and_refuses_reward_functions(tmp_path):
    assert rlkit.plugins.envs.get("arith_retry") is ArithRetryEnv
    from rlkit.config import ConfigError
    from rlkit.trainer import RLTrainer

    with pytest.raises(ConfigError, match="multi-turn"):
        RLTrainer(reward_funcs="exact_match", args=RLConfig(env={"name": "arith_retry"}))


@pytest.mark.slow
def test_trloo_raises_the_success_rate_of_a_multi_turn_environment(tmp_path):
    from rlkit.validation import load_config
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer

    quick = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false",
             "save_steps": "0", "max_steps": "60", "output_dir": str(tmp_path / "run")}
    summary = RLTrainer(args=load_config(None, quick, "trloo-arith-retry")).train()
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    # greedy episodes of up to three tries on 200 held-out problems; the base model succeeds on 38.5%
    assert summary["eval_pass_rate_after"] >= summary["eval_pass_rate_before"] + 0.05, summary
    assert all(m["turns_mean"] > 1 for m in metrics)  # episodes really took several turns
    assert all(m["mismatch_rejected_tokens"] == 0 for m in metrics)  # engine and learner agree on CPU
    assert all(m["grad_norm"] > 0 for m in metrics)
