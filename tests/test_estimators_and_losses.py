"""The two registries an objective pairs: advantage estimators and policy losses (hand-computed values)."""

from __future__ import annotations

import math

import pytest
import torch

import rlkit
from rlkit import plugins
from rlkit.objectives import PolicyBatch, objective_from_config
from rlkit.objectives.losses import clipped_surrogate, k3_kl


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_the_registries_hold_the_builtins():
    assert {"group_relative", "rloo", "gbpo_median", "trloo"} <= set(plugins.advantage_estimators.names())
    assert {"clipped_surrogate", "k3_kl", "bounded_ratio", "forward_kl_to_initial", "js_to_initial",
            "tempered_reinforce"} <= set(plugins.policy_losses.names())
    assert plugins.advantage_estimators.get("trloo").turn_level
    assert not plugins.advantage_estimators.get("rloo").turn_level


def test_an_objective_takes_another_estimator_from_its_config():
    rewards = t([[1, 0, 0, 1], [3, 1, 1, 1]])
    # RLOO: G/(G-1)·(r − mean): group 0 mean 0.5 → ±2/3; group 1 mean 1.5 → 2, −2/3, −2/3, −2/3
    expected = t([[2 / 3, -2 / 3, -2 / 3, 2 / 3], [2.0, -2 / 3, -2 / 3, -2 / 3]])
    bapo = objective_from_config("bapo", {"advantage_estimator": "rloo"})
    assert torch.allclose(bapo.compute_advantages(rewards), expected)
    # the default pairing is unchanged: GRPO's, (r − mean)/(std + 1e-4), std unbiased (0.57735 in group 0)
    default = objective_from_config("bapo", {}).compute_advantages(rewards)
    assert default[0, 0].item() == pytest.approx(0.5 / (math.sqrt(1 / 3) + 1e-4))
    # a turn-level estimator on single-turn groups: one-turn episodes, leave-one-out baseline
    assert torch.allclose(objective_from_config("grpo", {"advantage_estimator": "trloo"}).compute_advantages(rewards),
                          expected)


def test_an_unknown_estimator_is_refused_with_the_closest_name():
    with pytest.raises(ValueError, match=r"advantage_estimator: unknown advantage estimator 'rlooo'.*'rloo'"):
        objective_from_config("grpo", {"advantage_estimator": "rlooo"})


def test_a_plugin_estimator_pairs_with_a_builtin_loss():
    @rlkit.advantage_estimator("test_best_only")
    def best_only(rewards, config):
        """1 for the group's best completions, 0 elsewhere."""
        return (rewards == rewards.max(dim=1, keepdim=True).values).to(rewards.dtype)

    grpo = objective_from_config("grpo", {"advantage_estimator": "test_best_only"})
    assert grpo.compute_advantages(t([[0.2, 0.9, 0.9, 0.1]])).tolist() == [[0.0, 1.0, 1.0, 0.0]]


def test_clipped_surrogate_by_hand():
    # rows: ρ = 1.5 with A = +1 (clipped at 1.2); ρ = 0.5 with A = −1 (clipped at 0.8); ρ = 1 with A = 2
    logprobs = t([[math.log(1.5)], [math.log(0.5)], [-0.3]]).requires_grad_()
    old = t([[0.0], [0.0], [-0.3]])
    loss, parts = clipped_surrogate(logprobs, old, t([1.0, -1.0, 2.0]), 0.8, 1.2)
    assert loss[:, 0].tolist() == pytest.approx([-1.2, 0.8, -2.0])
    assert parts["clip_fraction_high"][:, 0].tolist() == [1.0, 0.0, 0.0]
    assert parts["clip_fraction_low"][:, 0].tolist() == [0.0, 1.0, 0.0]
    loss.sum().backward()
    assert logprobs.grad[:, 0].tolist() == pytest.approx([0.0, 0.0, -2.0])  # clipped rows carry no gradient


def test_dual_clip_caps_a_negative_advantage_token_and_the_clamp_keeps_the_ratio_finite():
    logprobs = t([[math.log(5.0), 30.0]]).requires_grad_()
    old = t([[0.0, 0.0]])
    loss, parts = clipped_surrogate(logprobs, old, t([-1.0]), 0.8, 1.2, dual_clip=3.0, max_log_ratio=20.0)
    # ρ = 5: −min(−5, −1.2) = 5, capped at −c·A = 3; ρ = e^30 → e^20 by the clamp, then capped too
    assert loss[0].tolist() == pytest.approx([3.0, 3.0])
    assert parts["dual_clip_fraction"][0].tolist() == [1.0, 1.0]
    loss.sum().backward()
    assert logprobs.grad.abs().sum().item() == 0.0  # a capped token's loss is a constant
    unclamped, _ = clipped_surrogate(t([[30.0]]), t([[0.0]]), t([-1.0]), 0.8, 1.2, max_log_ratio=20.0)
    assert unclamped.item() == pytest.approx(math.exp(20.0))


def test_k3_kl_by_hand():
    kl, parts = k3_kl(t([[math.log(0.5)]]), t([[math.log(0.25)]]))
    # δ = log(0.25/0.5): e^δ − δ − 1 = 0.5 + log 2 − 1
    assert kl.item() == pytest.approx(0.5 + math.log(2) - 1) and parts["kl"].item() == kl.item()


def test_grpo_loss_is_the_clipped_surrogate_plus_beta_k3():
    batch = PolicyBatch(logprobs=t([[math.log(1.5), math.log(0.5)]]), old_logprobs=t([[0.0, 0.0]]),
                        mask=t([[1.0, 1.0]]), advantages=t([1.0]), ref_logprobs=t([[0.0, 0.0]]))
    grpo = objective_from_config("grpo", {"beta": 0.1})
    loss, _ = grpo.loss_sum(batch)
    surrogate, _ = clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages, 0.8, 1.2)
    kl, _ = k3_kl(batch.logprobs, batch.ref_logprobs)
    # grpo aggregation: token mean of the one sequence
    assert loss.item() == pytest.approx(((surrogate + 0.1 * kl).sum() / 2).item())
    assert surrogate[0].tolist() == pytest.approx([-1.2, -0.5])


@pytest.mark.slow
def test_bapo_with_rloo_advantages_runs_from_a_config_alone(tmp_path):
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    overrides = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false",
                 "save_steps": "0", "max_steps": "2", "data.eval_limit": "20", "output_dir": str(tmp_path / "run"),
                 "objective.name": "bapo", "objective.advantage_estimator": "rloo"}
    RLTrainer(args=load_config(None, overrides)).train()
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["grad_norm"] > 0 and "bapo_clip_high" in m for m in metrics)
