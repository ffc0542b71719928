"""Advantage estimators against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from rlkit.advantages import group_relative, leave_one_out
from rlkit.objectives import objective_from_config


def test_group_relative_hand_values():
    # both groups: mean centred to (−1, 0, 1) in some order, unbiased std sqrt((1 + 0 + 1) / 2) = 1
    rewards = torch.tensor([[1.0, 2.0, 3.0], [0.0, 2.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[-1 / 1.0001, 0.0, 1 / 1.0001], [-1 / 1.0001, 1 / 1.0001, 0.0]], dtype=torch.float64)
    assert torch.allclose(group_relative(rewards), expected, atol=1e-12)


def test_group_relative_two_samples_unbiased_std():
    # r = (1, 0): mean 0.5, unbiased std = sqrt(2 * 0.25 / 1) = 0.7071068
    advantages = group_relative(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    assert advantages[0, 0].item() == pytest.approx(0.5 / (0.5**0.5 + 1e-4), abs=1e-12)
    assert advantages[0, 1].item() == pytest.approx(-0.5 / (0.5**0.5 + 1e-4), abs=1e-12)


def test_zero_variance_group_gives_zeros():
    rewards = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 1.0]])
    advantages = group_relative(rewards)
    assert torch.equal(advantages[:2], torch.zeros(2, 4))
    assert torch.isfinite(advantages).all()


def test_unscaled_is_only_centred():
    rewards = torch.tensor([[1.0, 2.0, 6.0]])
    assert torch.allclose(group_relative(rewards, scale=False), torch.tensor([[-2.0, -1.0, 3.0]]))


def test_integer_rewards_are_accepted():
    assert torch.allclose(group_relative(torch.tensor([[0, 2]]), scale=False), torch.tensor([[-1.0, 1.0]]))


def test_leave_one_out_hand_values():
    # r_i − mean of the other three: 1 − 11/3, 2 − 10/3, 3 − 9/3, 6 − 6/3
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [4.0, 4.0, 4.0, 4.0]], dtype=torch.float64)
    expected = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(leave_one_out(rewards), expected, atol=1e-12)


def test_groups_need_two_samples_and_two_dims():
    with pytest.raises(ValueError, match="G >= 2"):
        group_relative(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match="G >= 2"):
        leave_one_out(torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError, match=r"\[num_groups, G\]"):
        group_relative(torch.tensor([1.0, 2.0]))


def test_grpo_objective_uses_scale_rewards():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    scaled = objective_from_config("grpo", {}).compute_advantages(rewards)
    unscaled = objective_from_config("grpo", {"scale_rewards": False}).compute_advantages(rewards)
    assert torch.allclose(scaled, group_relative(rewards))
    assert torch.allclose(unscaled, torch.tensor([[-1.0, 0.0, 1.0]]))
