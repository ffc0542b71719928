"""GBPO's loss against hand-computed and NumPy numbers, its gradients at the bound, and its config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit import plugins
from rlkit.objectives import PolicyBatch, StepStats, objective_from_config
from rlkit.objectives.base import objective_config_fields
from rlkit.objectives.gbpo import TARGET, GBPO, GBPOConfig, per_token_loss, signed_weights, target_ratio

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def close(tensor: torch.Tensor, expected) -> bool:
    return torch.allclose(tensor.detach(), t(expected), rtol=0, atol=1e-12)


# rlkit's step reading (signed weights, ε = 0.3, no KL): an option since the defaults became the
# official code's; the tests down to "the official defaults" pin it
STEP_READING = dict(epsilon=0.3, temperature=0.0, beta=0.0, advantage_estimator="gbpo_signed")


def gbpo(**params) -> GBPO:
    return GBPO(GBPOConfig(**{**STEP_READING, **params}))


def whole_batch_loss(objective: GBPO, batch: PolicyBatch) -> torch.Tensor:
    rows, length = batch.logprobs.shape
    stats = StepStats(num_sequences=rows, num_tokens=int(batch.mask.sum()), max_completion_length=length)
    return objective.loss_sum(batch)[0] / objective.normalizer(stats)


# --- the signed weights w_i = sgn(r_i − median) · |A_i| -------------------------------------------


def test_weights_hand_computed_unscaled():
    # [0, 1, 1, 1]: mean 0.75, median 1 -> only the wrong answer is pushed (down), by |0 − 0.75|
    # [0, 0, 1, 1]: mean = median = 0.5 -> w = A = ±0.5
    # [0, 0.2, 1]: mean 0.4, median 0.2 -> the middle answer sits at the median: w = 0
    # [0, 0, 0, 0.2, 1]: mean 0.24, median 0 -> 0.2 is above the median though below the mean: w = +0.04
    assert signed_weights(t([[0, 1, 1, 1]]), scale=False).tolist() == [[-0.75, 0, 0, 0]]
    assert signed_weights(t([[0, 0, 1, 1]]), scale=False).tolist() == [[-0.5, -0.5, 0.5, 0.5]]
    assert close(signed_weights(t([[0, 0.2, 1]]), scale=False), [[-0.4, 0, 0.6]])
    assert close(signed_weights(t([[0, 0, 0, 0.2, 1]]), scale=False), [[0, 0, 0, 0.04, 0.76]])


def test_weights_scaled_by_group_std_and_zero_for_equal_rewards():
    # [0, 1, 1, 1]: unbiased std = sqrt((0.75² + 3·0.25²)/3) = 0.5, so w_0 = −0.75 / (0.5 + 1e-4)
    weights = gbpo().compute_advantages(t([[0, 1, 1, 1], [1, 1, 1, 1], [0.3, 0.3, 0.3, 0.3]]))
    assert weights[0].tolist() == pytest.approx([-0.75 / 0.5001, 0, 0, 0], abs=1e-12)
    assert weights[1:].abs().max().item() == 0.0  # an all-equal group is exactly zero: the learner skips it


def test_weights_match_numpy():
    rewards = np.random.default_rng(0).integers(0, 4, size=(6, 8)).astype(float) / 3
    rewards[0] = 0.5  # one group without signal
    centred = rewards - rewards.mean(axis=1, keepdims=True)
    expected = np.sign(rewards - np.median(rewards, axis=1, keepdims=True)) * np.abs(
        centred / (rewards.std(axis=1, ddof=1, keepdims=True) + 1e-4))
    assert np.allclose(signed_weights(torch.from_numpy(rewards)).numpy(), expected, atol=1e-12)


def test_weights_refuse_bad_shapes():
    with pytest.raises(ValueError, match="G >= 2"):
        signed_weights(t([[1.0], [0.0]]))
    with pytest.raises(ValueError, match=r"\[num_groups, G\]"):
        signed_weights(t([1.0, 0.0]))


# --- the worked example ---------------------------------------------------------------------------
#
# ε_low = ε_high = 0.25, so ρ* = 1.25 for w > 0 and 0.75 for w < 0; ℓ = |w|·|ρ − ρ*|.
#   row 0, w = +2, ρ = 1, 1.5, 0.5:  ℓ = 2·0.25, 2·0.25, 2·0.75        = 0.5, 0.5, 1.5   (sum 2.5)
#   row 1, w = −1, ρ = 1, 0.5, (pad): ℓ = 1·0.25, 1·0.25                = 0.25, 0.25      (sum 0.5)
#   dapo    = (2.5 + 0.5) / 5 tokens            = 0.6
#   grpo    = (2.5/3 + 0.5/2) / 2 sequences     = 0.541666…
#   dr_grpo = (2.5 + 0.5) / (2 sequences · 3)   = 0.5
# ∂ℓ/∂log π = |w|·sgn(ρ − ρ*)·ρ:
#   row 0: 2·(−1)·1 = −2,  2·(+1)·1.5 = +3,  2·(−1)·0.5 = −1
#   row 1: 1·(+1)·1 = +1,  1·(−1)·0.5 = −0.5,  padding 0


def worked_example() -> PolicyBatch:
    old = t([[-1.0, -2.0, -0.5], [-0.7, -1.2, -3.0]])
    log_ratio = torch.log(t([[1.0, 1.5, 0.5], [1.0, 0.5, 9.0]]))
    return PolicyBatch(logprobs=(old + log_ratio).requires_grad_(True), old_logprobs=old,
                       mask=t([[1, 1, 1], [1, 1, 0]]), advantages=t([2.0, -1.0]))


@pytest.mark.parametrize("loss_type, expected", [("dapo", 0.6), ("grpo", (2.5 / 3 + 0.5 / 2) / 2), ("dr_grpo", 0.5)])
def test_worked_example_per_aggregation(loss_type, expected):
    objective = gbpo(epsilon=0.25, loss_type=loss_type)
    assert whole_batch_loss(objective, worked_example()).item() == pytest.approx(expected, abs=1e-12)


def test_worked_example_token_losses_and_gradients():
    batch = worked_example()
    loss, _ = per_token_loss(batch.logprobs, batch.old_logprobs, batch.advantages, 0.25, 0.25)
    assert close(loss * batch.mask, [[0.5, 0.5, 1.5], [0.25, 0.25, 0.0]])
    summed, _ = gbpo(epsilon=0.25).loss_sum(batch)
    summed.backward()
    assert close(batch.logprobs.grad, [[-2.0, 3.0, -1.0], [1.0, -0.5, 0.0]])


def test_worked_example_metrics():
    _, metrics = gbpo(epsilon=0.25).loss_sum(worked_example())
    # over the 5 loss tokens: row 0 token 2 (ρ = 1.5 ≥ 1.25, w > 0) and row 1 token 2 (ρ = 0.5 ≤ 0.75, w < 0)
    assert metrics["bound_fraction_high"] == pytest.approx(1 / 5)
    assert metrics["bound_fraction_low"] == pytest.approx(1 / 5)
    assert metrics["bound_fraction"] == pytest.approx(2 / 5)
    assert metrics["outside_bounds_fraction"] == pytest.approx(3 / 5)  # ρ = 1.5, 0.5, 0.5
    assert metrics["ratio_mean"] == pytest.approx((1 + 1.5 + 0.5 + 1 + 0.5) / 5)  # padding (ρ = 9) excluded
    assert metrics["zero_weight_fraction"] == 0.0
    assert all(isinstance(value, float) for value in metrics.values())


# --- an independent NumPy implementation ----------------------------------------------------------


def numpy_loss(logp, old, mask, weights, eps_low, eps_high, loss_type, max_length):
    ratio = np.exp(logp - old)
    target = np.where(weights[:, None] > 0, 1 + eps_high, 1 - eps_low)
    tokens = np.abs(weights)[:, None] * np.abs(ratio - target) * mask
    if loss_type == "grpo":
        return np.mean(tokens.sum(axis=1) / mask.sum(axis=1))
    if loss_type == "dapo":
        return tokens.sum() / mask.sum()
    return tokens.sum() / (len(weights) * max_length)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_matches_numpy_on_random_batch(loss_type):
    rng = np.random.default_rng(1)
    logp, old = -rng.random((4, 6)) * 2, -rng.random((4, 6)) * 2
    mask = (np.arange(6)[None, :] < np.array([[6], [3], [1], [5]])).astype(float)
    weights = np.array([1.3, -0.4, 0.0, -2.1])
    batch = PolicyBatch(t(logp), t(old), t(mask), t(weights))
    objective = gbpo(epsilon=0.2, epsilon_high=0.35, loss_type=loss_type)
    expected = numpy_loss(logp, old, mask, weights, 0.2, 0.35, loss_type, max_length=6)
    assert whole_batch_loss(objective, batch).item() == pytest.approx(expected, abs=1e-12)


# --- gradients at and beyond the bound ------------------------------------------------------------


def one_token_grad(ratio: float, weight: float, **params) -> tuple[float, float]:
    logprobs = t([[math.log(ratio)]]).requires_grad_(True)
    loss, _ = gbpo(**params).loss_sum(PolicyBatch(logprobs, t([[0.0]]), t([[1.0]]), t([weight])))
    loss.backward()
    return loss.item(), logprobs.grad.item()


@pytest.mark.parametrize("weight, at_bound", [(1.5, 1.25), (-1.5, 0.75)])
def test_zero_gradient_exactly_at_the_target(weight, at_bound):
    loss, grad = one_token_grad(at_bound, weight, epsilon=0.25)
    assert loss == 0.0 and grad == 0.0


@pytest.mark.parametrize("weight, ratio, direction", [
    (1.5, 1.0, -1), (1.5, 1.2, -1),  # above-median completion, ratio below 1+ε: descent raises log π
    (1.5, 1.3, +1), (1.5, 2.0, +1),  # beyond 1+ε: pulled back (PPO's clip would give 0 here)
    (-1.5, 1.0, +1), (-1.5, 0.8, +1),  # below-median completion, ratio above 1−ε: descent lowers log π
    (-1.5, 0.7, -1), (-1.5, 0.3, -1),  # beyond 1−ε: pulled back up
])
def test_gradient_direction_around_the_bound(weight, ratio, direction):
    _, grad = one_token_grad(ratio, weight, epsilon=0.25)
    assert math.copysign(1, grad) == direction
    assert abs(grad) == pytest.approx(abs(weight) * ratio, abs=1e-12)  # |w|·ρ on either side


def test_zero_weight_is_inert_even_far_from_the_bound():
    assert gbpo().zero_advantage_is_inert()
    loss, grad = one_token_grad(5.0, 0.0)
    assert loss == 0.0 and grad == 0.0
    _, metrics = gbpo().loss_sum(PolicyBatch(t([[0.4, 0.0]]), t([[0.0, 0.0]]), t([[1.0, 1.0]]), t([0.0])))
    assert metrics["zero_weight_fraction"] == 1.0 and metrics["bound_fraction"] == 0.0


def test_asymmetric_bounds():
    # ε_low = 0.2, ε_high = 0.3: ρ = 1.25 is still below 1.3 for w > 0, ρ = 0.75 is beyond 0.8 for w < 0
    assert one_token_grad(1.25, 1.0, epsilon=0.2, epsilon_high=0.3) == pytest.approx((0.05, -1.25))
    assert one_token_grad(0.75, -1.0, epsilon=0.2, epsilon_high=0.3) == pytest.approx((0.05, -0.75))


def test_on_policy_gradient_is_minus_weight_per_token():
    batch = worked_example()
    logprobs = batch.logprobs.detach().clone().requires_grad_(True)
    on_policy = PolicyBatch(logprobs, logprobs.detach(), batch.mask, batch.advantages)
    whole_batch_loss(gbpo(loss_type="grpo"), on_policy).backward()
    # ρ = 1 sits strictly inside (1−ε, 1+ε): ∂L/∂log π_{i,t} = −w_i / |o_i| / N on loss tokens
    expected = [[-2.0 / 3 / 2] * 3, [1.0 / 2 / 2, 1.0 / 2 / 2, 0.0]]
    assert close(logprobs.grad, expected)


# --- the sum / normalizer split --------------------------------------------------------------------


@pytest.mark.parametrize("loss_type, expected", [("grpo", 4.0), ("dapo", 30.0), ("dr_grpo", 4 * 16.0)])
def test_normalizer_per_loss_type(loss_type, expected):
    stats = StepStats(num_sequences=4, num_tokens=30, max_completion_length=16)
    assert gbpo(loss_type=loss_type).normalizer(stats) == expected


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_sum_to_the_whole_batch(loss_type):
    generator = torch.Generator().manual_seed(0)

    def draw(rows, length):
        return -torch.rand(rows, length, generator=generator, dtype=torch.float64) * 2

    first = PolicyBatch(draw(2, 4), draw(2, 4), t([[1, 1, 1, 1], [1, 1, 0, 0]]), t([0.7, -1.1]))
    second = PolicyBatch(draw(2, 4), draw(2, 4), t([[1, 0, 0, 0], [1, 1, 1, 0]]), t([0.0, 2.0]))
    whole = PolicyBatch(*(torch.cat([getattr(first, k), getattr(second, k)])
                          for k in ("logprobs", "old_logprobs", "mask", "advantages")))
    objective = gbpo(loss_type=loss_type)
    stats = StepStats(num_sequences=4, num_tokens=10, max_completion_length=4)
    streamed = (objective.loss_sum(first)[0] + objective.loss_sum(second)[0]) / objective.normalizer(stats)
    assert streamed.item() == pytest.approx(whole_batch_loss(objective, whole).item(), abs=1e-12)


# --- registration and configuration ---------------------------------------------------------------


def test_registered_and_built_from_config():
    assert plugins.objectives.get("gbpo") is GBPO
    objective = objective_from_config("gbpo", {"epsilon": 0.2, "epsilon_high": 0.28, "loss_type": "grpo",
                                               "beta": 0})
    assert isinstance(objective, GBPO)
    assert objective.config == GBPOConfig(epsilon=0.2, epsilon_high=0.28, loss_type="grpo", beta=0.0)
    assert objective.bounds() == (0.2, 0.28)
    assert objective_from_config("gbpo", {}).bounds() == (0.2, 0.2)
    assert not objective.needs_reference() and objective.state_dict() == {}
    assert objective_from_config("gbpo", {}).needs_reference()  # the official KL, 0.001


def test_unknown_key_and_wrong_type_name_the_field():
    with pytest.raises(ValueError, match=r"'epsilom'.*did you mean 'epsilon'"):
        objective_from_config("gbpo", {"epsilom": 0.3})
    with pytest.raises(TypeError, match=r"epsilon_high: expected float \| None"):
        objective_from_config("gbpo", {"epsilon_high": "high"})
    with pytest.raises(TypeError, match=r"scale_rewards: expected bool"):
        objective_from_config("gbpo", {"scale_rewards": 1})


@pytest.mark.parametrize("params, message", [
    ({"epsilon": 0.0}, "epsilon must be in"), ({"epsilon": 1.0}, "epsilon must be in"),
    ({"epsilon": -0.1}, "epsilon must be in"), ({"epsilon_high": 0.0}, "epsilon_high must be > 0"),
    ({"loss_type": "bnpo"}, "'bnpo' is not one of: grpo, dapo, dr_grpo"),
    ({"temperature": -1.0}, "temperature must be >= 0"), ({"beta": -0.1}, "beta must be >= 0"),
])
def test_out_of_range_values_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        objective_from_config("gbpo", params)


def test_config_fields_have_help():
    fields = {name: (default, text) for name, _, default, text in objective_config_fields("gbpo")}
    assert list(fields) == ["epsilon", "epsilon_high", "temperature", "beta", "loss_type", "scale_rewards",
                            "advantage_estimator"]
    assert (fields["epsilon"][0], fields["temperature"][0], fields["beta"][0], fields["loss_type"][0],
            fields["advantage_estimator"][0]) == (0.2, 1.0, 0.001, "dapo", "gbpo_median")
    assert all(text for _, text in fields.values())


# --- the official defaults (the authors' code), on hand-computed examples ---------------------------
# σ = unbiased std + 1e-6, m = interpolated median, ρ* = 1 − ε + 2ε·sigmoid(t/λ); each completion one
# token at ratio 1.1, so its loss is |A|·|1.1 − ρ*| (ε = 0.3 here, as in the worked examples)


def official(**params) -> GBPO:
    return GBPO(GBPOConfig(**{"epsilon": 0.3, "beta": 0.0, **params}))


def one_token_losses(objective: GBPO, rewards: list[float]) -> torch.Tensor:
    advantages, extras = objective.estimate(t([rewards]))
    rows = len(rewards)
    batch = PolicyBatch(logprobs=torch.full((rows, 1), math.log(1.1), dtype=torch.float64),
                        old_logprobs=torch.zeros(rows, 1, dtype=torch.float64), mask=torch.ones(rows, 1,
                        dtype=torch.float64), advantages=advantages.reshape(-1),
                        advantage_extras={k: v.reshape(-1) for k, v in extras.items()})
    eps_low, eps_high = objective.bounds()
    target = target_ratio(batch.advantage_extras[TARGET], eps_low, eps_high, objective.config.temperature)
    loss, _ = per_token_loss(batch.logprobs, batch.old_logprobs, batch.advantages, eps_low, eps_high, target)
    total, _ = objective.loss_sum(batch)  # dapo: the token sum
    assert total.item() == pytest.approx(loss.sum().item())
    return loss[:, 0]


@pytest.mark.parametrize("temperature, expected", [
    # A = ±0.866024 (σ = 0.577350), t = ±0.866024: λ = 1 → ρ* = 1.122351 and 0.877649
    (1.0, [0.019356, 0.192561, 0.192561, 0.019356]),
    # λ = 1e-4: the step, ρ* = 1.3 and 0.7
    (1e-4, [0.173205, 0.346410, 0.346410, 0.173205]),
])
def test_official_soft_target_by_hand(temperature, expected):
    losses = one_token_losses(official(temperature=temperature), [1.0, 0.0, 0.0, 1.0])
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)


def test_official_target_is_the_median_side_and_the_weight_the_mean_side():
    # rewards [1, 1, 0, 0.5]: mean 0.625, σ = 0.478714, median 0.75. The 0.5 completion is below the
    # median (target < 1) with A = −0.261116; at λ = 1, t = −0.522232 → ρ* = 0.923398
    losses = one_token_losses(official(), [1.0, 1.0, 0.0, 0.5])
    assert losses.tolist() == pytest.approx([0.018329, 0.018329, 0.386957, 0.046114], abs=1e-6)


def test_a_completion_at_the_median_is_pulled_to_ratio_one():
    # [1, 1, 1, 0]: median 1, so the correct ones have t = 0 → ρ* = 1 for any λ, weight A = 0.499999
    for temperature in (1.0, 1e-4, 0.0):
        losses = one_token_losses(official(temperature=temperature), [1.0, 1.0, 1.0, 0.0])
        assert losses[0].item() == pytest.approx(0.05, abs=1e-6)
    # the step reading gives those completions weight 0 instead
    assert gbpo().compute_advantages(t([[1.0, 1.0, 1.0, 0.0]]))[0, 0].item() == 0.0


def test_the_log_ratio_is_clamped_and_the_kl_is_verls_low_var_kl():
    objective = GBPO(GBPOConfig())  # every default: ε 0.2, λ 1, β 0.001
    batch = PolicyBatch(logprobs=t([[30.0]]), old_logprobs=t([[0.0]]), mask=t([[1.0]]), advantages=t([1.0]),
                        ref_logprobs=t([[0.0]]), advantage_extras={TARGET: t([0.0])})
    loss, metrics = objective.loss_sum(batch)
    # ρ = e^20 (clamped), ρ* = 1 at t = 0; k3 with δ = −30 → clamped to −20: e^−20 + 20 − 1 → capped at 10
    assert loss.item() == pytest.approx(math.exp(20.0) - 1 + 0.001 * 10.0)
    assert metrics["kl"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="ref_logprobs"):
        objective.loss_sum(PolicyBatch(t([[0.0]]), t([[0.0]]), t([[1.0]]), t([1.0])))


def test_with_another_estimator_the_advantages_sign_picks_the_bound():
    objective = GBPO(GBPOConfig(advantage_estimator="rloo", beta=0.0))
    advantages = objective.compute_advantages(t([[1.0, 0.0, 0.0, 0.0]]))  # 4/3·(r − 0.25): 1, −1/3 ...
    batch = PolicyBatch(logprobs=torch.zeros(4, 1, dtype=torch.float64), old_logprobs=torch.zeros(4, 1,
                        dtype=torch.float64), mask=torch.ones(4, 1, dtype=torch.float64),
                        advantages=advantages.reshape(-1))
    loss, _ = objective.loss_sum(batch)
    # ρ = 1: |A|·ε each: 1·0.2 + 3·(1/3)·0.2
    assert loss.item() == pytest.approx(0.4)
