"""DAPO, Dr. GRPO and RLOO: GRPO's loss with their own defaults and estimators, by hand."""

from __future__ import annotations

import pytest
import torch

from rlkit.validation import load_config
from rlkit.objectives import PolicyBatch, StepStats, objective_from_config
from rlkit.driver.pipeline import dynamic_sampling_enabled


def batch_of(advantages: list[float], lengths: list[int], logp: float = -0.5, old: float = -0.5) -> PolicyBatch:
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths], dtype=torch.float64)
    return PolicyBatch(logprobs=torch.full((len(lengths), width), logp, dtype=torch.float64),
                       old_logprobs=torch.full((len(lengths), width), old, dtype=torch.float64),
                       mask=mask, advantages=torch.tensor(advantages, dtype=torch.float64))


def test_rloo_advantage_is_reward_minus_the_others_mean():
    rloo = objective_from_config("rloo", {})
    # rewards 1, 0, 0, 1: for r_1 = 1 the others' mean is 1/3, so A_1 = 2/3; for r_2 = 0 it is 2/3, A_2 = −2/3
    advantages = rloo.compute_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))


def test_rloo_loss_is_the_sequence_sum_over_sequences_times_max_length():
    rloo = objective_from_config("rloo", {})
    # on-policy (ratio 1) each token's loss is −A: sequences of 2 and 1 tokens with A = 2/3, −2/3
    loss_sum, _ = rloo.loss_sum(batch_of([2 / 3, -2 / 3], [2, 1]))
    assert loss_sum.item() == pytest.approx(-(2 * 2 / 3) + 2 / 3)  # = −2/3
    assert rloo.normalizer(StepStats(num_sequences=2, num_tokens=3, max_completion_length=8)) == 16


def test_dr_grpo_centres_without_scaling_and_sums_tokens():
    dr = objective_from_config("dr_grpo", {})
    torch.testing.assert_close(dr.compute_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]])),
                               torch.tensor([[0.75, -0.25, -0.25, -0.25]]))
    loss_sum, _ = dr.loss_sum(batch_of([0.75, -0.25], [3, 1]))
    assert loss_sum.item() == pytest.approx(-3 * 0.75 + 0.25)
    assert dr.normalizer(StepStats(num_sequences=2, num_tokens=4, max_completion_length=8)) == 16


def test_dapo_clips_higher_and_normalizes_by_tokens():
    dapo = objective_from_config("dapo", {})
    # ratio 1.25 with A = 1: above GRPO's upper bound 1.2, inside DAPO's 1.28
    ratio = 1.25
    batch = batch_of([1.0], [1], logp=torch.log(torch.tensor(ratio)).item() - 0.5)
    loss_sum, metrics = dapo.loss_sum(batch)
    assert loss_sum.item() == pytest.approx(-ratio)  # 1.25 < 1.28: not clipped under DAPO
    assert metrics["clip_fraction_high"] == 0.0
    grpo_sum, grpo_metrics = objective_from_config("grpo", {}).loss_sum(batch)
    assert grpo_sum.item() == pytest.approx(-1.2) and grpo_metrics["clip_fraction_high"] == 1.0
    assert dapo.normalizer(StepStats(num_sequences=2, num_tokens=7, max_completion_length=8)) == 7


def test_dynamic_sampling_follows_the_objective_unless_set():
    assert dynamic_sampling_enabled(load_config(None, {"objective.name": "dapo"}))
    assert not dynamic_sampling_enabled(load_config(None, {"objective.name": "grpo"}))
    assert dynamic_sampling_enabled(load_config(None, {"rollout.dynamic_sampling": "true"}))
    assert not dynamic_sampling_enabled(load_config(None, {"objective.name": "dapo",
                                                           "rollout.dynamic_sampling": "false"}))


def test_family_knobs_still_apply():
    assert objective_from_config("dapo", {"epsilon_high": 0.3}).config.epsilon_high == 0.3
    with pytest.raises(ValueError, match="epsilon_hihg"):
        objective_from_config("dapo", {"epsilon_hihg": 0.3})
