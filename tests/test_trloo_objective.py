"""TRLOO's turn-level advantages, its GRPO-style comparison baseline and its mismatch rejection,
pinned to hand-computed numbers."""

import math

import pytest
import torch

from rlkit.objectives import PolicyBatch, objective_from_config
from rlkit.objectives.trloo import TRLOOConfig, mismatch_keep, turn_advantages, turn_returns

# One group of three episodes over two turns (gamma 1):
#   episode 0: wrong, then right      r = [0, 1]   G = [1, 1]
#   episode 1: right at once          r = [1, -]   G = [1, -]   (never reached turn 1)
#   episode 2: wrong twice            r = [0, 0]   G = [0, 0]
REWARDS = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]])
REACHED = torch.tensor([[[True, True], [True, False], [True, True]]])


def test_turn_returns_discount_later_turns():
    assert turn_returns(torch.tensor([[0.0, 1.0, 2.0]]), 1.0).tolist() == [[3.0, 3.0, 2.0]]
    assert turn_returns(torch.tensor([[0.0, 1.0, 2.0]]), 0.5).tolist() == [[1.0, 2.0, 2.0]]  # 0 + .5(1 + .5·2)


def test_leave_one_out_baseline_uses_the_other_episodes_at_the_same_turn():
    advantages = turn_advantages(REWARDS, REACHED, TRLOOConfig())
    # turn 0: G = [1, 1, 0]: 1 − (1+0)/2, 1 − (1+0)/2, 0 − (1+1)/2;  turn 1: G = [1, ·, 0]: 1 − 0, ·, 0 − 1
    assert advantages.tolist() == [[[0.5, 1.0], [0.5, 0.0], [-1.0, -1.0]]]


def test_group_mean_baseline_includes_the_episode_itself():
    advantages = turn_advantages(REWARDS, REACHED, TRLOOConfig(baseline="group_mean"))
    expected = [[[1 / 3, 0.5], [1 / 3, 0.0], [-2 / 3, -0.5]]]  # turn means 2/3 and 1/2
    assert torch.allclose(advantages, torch.tensor(expected))
    # the self-inclusive baseline shrinks each advantage by (n−1)/n against leave-one-out
    loo = turn_advantages(REWARDS, REACHED, TRLOOConfig())
    assert torch.allclose(advantages[0, :, 0], loo[0, :, 0] * 2 / 3)
    assert torch.allclose(advantages[0, [0, 2], 1], loo[0, [0, 2], 1] * 1 / 2)


def test_group_mean_scaled_by_the_turns_std():
    advantages = turn_advantages(REWARDS, REACHED, TRLOOConfig(baseline="group_mean", scale_by_std=True))
    std0 = math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2)  # unbiased std of [1, 1, 0]
    std1 = math.sqrt((0.5 ** 2 * 2) / 1)  # of [1, 0]
    expected = torch.tensor([[[(1 / 3) / (std0 + 1e-4), 0.5 / (std1 + 1e-4)], [(1 / 3) / (std0 + 1e-4), 0.0],
                              [(-2 / 3) / (std0 + 1e-4), -0.5 / (std1 + 1e-4)]]])
    assert torch.allclose(advantages, expected, atol=1e-6)


def test_leave_one_out_can_be_scaled_by_the_turns_std_too():
    advantages = turn_advantages(REWARDS, REACHED, TRLOOConfig(scale_by_std=True))
    std0 = math.sqrt(((1 / 3) ** 2 * 2 + (2 / 3) ** 2) / 2)
    std1 = math.sqrt(0.5)
    expected = torch.tensor([[[0.5 / (std0 + 1e-4), 1 / (std1 + 1e-4)], [0.5 / (std0 + 1e-4), 0.0],
                              [-1 / (std0 + 1e-4), -1 / (std1 + 1e-4)]]])
    assert torch.allclose(advantages, expected, atol=1e-6)


def test_std_scaling_leaves_an_episode_alone_at_its_turn_unscaled():
    rewards = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]])
    reached = torch.tensor([[[True, True, True], [True, False, False], [True, False, False]]])
    advantages = turn_advantages(rewards, reached, TRLOOConfig(scale_by_std=True))
    # turns 1 and 2: episode 0 alone, return 1: no spread, so the advantage stays 1 (not 1 / 1e-4)
    assert advantages[0, 0, 1:].tolist() == [1.0, 1.0]
    assert advantages[0, 1:, 1:].abs().sum() == 0
    # turn 0: all three have return 1 -> no spread, advantages 0
    assert advantages[0, :, 0].tolist() == [0.0, 0.0, 0.0]


def test_an_episode_alone_at_its_turn_keeps_its_return_under_trloo_and_gets_zero_under_grpo():
    rewards = torch.tensor([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    reached = torch.tensor([[[True, True, True], [True, False, False]]])
    loo = turn_advantages(rewards, reached, TRLOOConfig())
    assert loo.tolist() == [[[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]]  # turn 0: G = [1, 1]; turns 1-2: alone
    grpo = turn_advantages(rewards, reached, TRLOOConfig(baseline="group_mean"))
    assert grpo.tolist() == [[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]]


def test_single_turn_groups_reduce_to_rloo():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    per_turn = turn_advantages(rewards.unsqueeze(-1), torch.ones(1, 4, 1, dtype=torch.bool), TRLOOConfig())
    trloo = objective_from_config("trloo", {})
    assert torch.allclose(per_turn.squeeze(-1), trloo.compute_advantages(rewards))
    assert torch.allclose(per_turn.squeeze(-1), torch.tensor([[2 / 3, -2 / 3, -2 / 3, 2 / 3]]))


def test_mismatch_check_rejects_drifted_and_vetoed_episodes():
    learner = torch.tensor([[0.0005, 0.0005], [0.004, 0.0], [-11.6, 11.6], [0.0, 0.0]])
    rollout = torch.zeros(4, 2)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0]])
    keep, geometric = mismatch_keep(learner, rollout, mask, TRLOOConfig())
    # 1.0005 in, 1.002 out, a token at e^-11.6 < 1e-4 vetoes its (only) turn
    assert keep.all(dim=1).tolist() == [True, False, False, True]
    assert geometric[:2].tolist() == pytest.approx([math.exp(0.0005), math.exp(0.002)])


def test_a_vetoed_token_drops_its_turn_not_the_episode():
    # one episode of three turns (tokens 0-1, 2-3, 4): a token of turn 1 at ratio e^-10 < 1e-4. Its
    # geometric mean, exp((0.0 + 0.004 - 10 + 9.996 + 0) / 5) = 1, keeps the episode.
    learner = torch.tensor([[0.0, 0.004, -10.0, 9.996, 0.0]])
    turns = torch.tensor([[0, 0, 1, 1, 2]])
    keep, geometric = mismatch_keep(learner, torch.zeros(1, 5), torch.ones(1, 5), TRLOOConfig(), turns)
    assert geometric.item() == pytest.approx(1.0)
    assert keep.tolist() == [[True, True, False, False, True]]
    # single-turn (no turn layout): the same veto drops the whole row
    keep, _ = mismatch_keep(learner, torch.zeros(1, 5), torch.ones(1, 5), TRLOOConfig())
    assert keep.tolist() == [[False] * 5]


def test_loss_uses_each_tokens_turn_advantage_and_leaves_rejected_episodes_out():
    logprobs = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]], requires_grad=True)
    advantages = torch.tensor([[0.5, 1.0], [-1.0, -1.0]])  # per token (two turns in row 0)
    behavior = logprobs.detach().clone()
    batch = PolicyBatch(logprobs=logprobs, old_logprobs=logprobs.detach(), mask=torch.ones(2, 2),
                        advantages=advantages, behavior_logprobs=behavior)
    trloo = objective_from_config("trloo", {})
    loss, metrics = trloo.loss_sum(batch)
    assert loss.item() == pytest.approx(-(0.5 + 1.0 - 1.0 - 1.0))  # ratio 1: ℓ = −A per token, summed
    assert metrics["mismatch_rejected_tokens"] == 0.0
    batch.behavior_logprobs = behavior - torch.tensor([[0.0, 0.0], [0.01, 0.01]])  # row 1 drifted: ratio e^0.01
    loss, metrics = trloo.loss_sum(batch)
    assert loss.item() == pytest.approx(-1.5)
    assert metrics["mismatch_rejected_tokens"] == pytest.approx(0.5)
    loss.backward()
    assert logprobs.grad[1].abs().sum() == 0  # the rejected episode carries no gradient
    off = objective_from_config("trloo", {"mismatch": "none"})
    assert off.loss_sum(batch)[0].item() == pytest.approx(0.5)


def test_config_refuses_bad_values():
    with pytest.raises(ValueError, match="baseline"):
        TRLOOConfig(baseline="mean")
    with pytest.raises(ValueError, match="gamma"):
        TRLOOConfig(gamma=1.5)
