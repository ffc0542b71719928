"""GRPO's loss against hand-computed numbers, its sum/normalizer split, and its config checks."""

from __future__ import annotations

import math

import pytest
import torch

from rlkit import plugins
from rlkit.objectives import GRPO, GRPOConfig, PolicyBatch, StepStats, grpo_loss, objective_from_config
from rlkit.objectives.base import objective_config_fields

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def one_token(logp: float, old: float, advantage: float, ref: float | None = None) -> PolicyBatch:
    return PolicyBatch(logprobs=t([[logp]]), old_logprobs=t([[old]]), mask=t([[1.0]]),
                       advantages=t([advantage]), ref_logprobs=None if ref is None else t([[ref]]))


def token_loss(batch: PolicyBatch, **params) -> tuple[float, dict[str, float]]:
    loss, metrics = GRPO(GRPOConfig(**params)).loss_sum(batch)
    return loss.item(), metrics


# --- the spec's tri-model example (rollout-periodic-async-ftis-ettrl.md §1(e) example 4) ---------------


@pytest.mark.parametrize("logp, kl, loss", [(-1.0, 0.0187308, -0.4996254), (-0.8, 0.0703200, -0.5985936)])
def test_spec_tri_model_example(logp, kl, loss):
    batch = one_token(logp, old=-1.0, advantage=0.5, ref=-1.2)
    for loss_type in LOSS_TYPES:  # one token: every aggregation is the token's loss
        value, metrics = token_loss(batch, epsilon=0.2, beta=0.02, loss_type=loss_type)
        assert value == pytest.approx(loss, abs=5e-7)
        assert metrics["kl"] == pytest.approx(kl, abs=5e-7)
        assert grpo_loss(batch, GRPOConfig(epsilon=0.2, beta=0.02, loss_type=loss_type)).item() == \
            pytest.approx(loss, abs=5e-7)


def test_spec_case_2_clip_binds_at_upper_bound():
    _, metrics = token_loss(one_token(-0.8, old=-1.0, advantage=0.5, ref=-1.2), beta=0.02)
    assert metrics["ratio_mean"] == pytest.approx(1.2214028, abs=1e-7)
    assert metrics["clip_fraction_high"] == 1.0 and metrics["clip_fraction_low"] == 0.0


# --- hand-computed single tokens ------------------------------------------------------------------


def test_negative_advantage_clip_binds_low():
    # ρ = exp(−0.5) = 0.6065 < 0.8, A = −1: min(−0.6065, 0.8·−1 = −0.8) = −0.8, so ℓ = 0.8 and no gradient
    batch = one_token(-1.5, old=-1.0, advantage=-1.0)
    batch.logprobs.requires_grad_(True)
    loss, metrics = GRPO(GRPOConfig()).loss_sum(batch)
    assert loss.item() == pytest.approx(0.8, abs=1e-12)
    assert metrics["clip_fraction_low"] == 1.0 and metrics["clip_fraction"] == 1.0
    loss.backward()
    assert batch.logprobs.grad.item() == 0.0


def test_positive_advantage_low_ratio_is_not_clipped():
    # ρ = 0.6065 < 0.8 but A = +1: min(0.6065, 0.8) keeps the ratio, ℓ = −0.6065
    value, metrics = token_loss(one_token(-1.5, old=-1.0, advantage=1.0))
    assert value == pytest.approx(-math.exp(-0.5), abs=1e-12)
    assert metrics["clip_fraction"] == 0.0


@pytest.mark.parametrize("log_ratio, symmetric, clip_higher", [
    (0.22, -1.2, -math.exp(0.22)),  # ρ = 1.2461: clipped at 1.2, inside 1.28
    (0.25, -1.2, -1.28),  # ρ = 1.2840: clipped at 1.2 and at 1.28
])
def test_epsilon_high_moves_only_the_upper_bound(log_ratio, symmetric, clip_higher):
    batch = one_token(-1.0 + log_ratio, old=-1.0, advantage=1.0)
    assert token_loss(batch, epsilon=0.2)[0] == pytest.approx(symmetric, abs=1e-12)
    assert token_loss(batch, epsilon=0.2, epsilon_high=0.28)[0] == pytest.approx(clip_higher, abs=1e-12)
    low = one_token(-1.3, old=-1.0, advantage=-1.0)  # ρ = 0.7408: the lower bound stays at 0.8
    assert token_loss(low, epsilon=0.2, epsilon_high=0.28)[0] == pytest.approx(0.8, abs=1e-12)


# --- aggregation on a 2×3 masked batch ------------------------------------------------------------


def two_by_three() -> PolicyBatch:
    return PolicyBatch(logprobs=t([[-1.0, -0.5, -2.0], [-0.3, -1.5, -9.0]]),
                       old_logprobs=t([[-1.1, -0.5, -1.5], [-0.6, -1.2, -0.1]]),
                       mask=t([[1, 1, 1], [1, 1, 0]]), advantages=t([1.0, -2.0]))


def reference_token_losses(batch: PolicyBatch, eps_low=0.2, eps_high=0.2) -> list[list[float]]:
    """Plain-Python ℓ per masked token, written independently of the implementation."""
    rows = []
    for i, advantage in enumerate(batch.advantages.tolist()):
        row = []
        for logp, old, m in zip(batch.logprobs[i].tolist(), batch.old_logprobs[i].tolist(), batch.mask[i].tolist()):
            if m:
                ratio = math.exp(logp - old)
                row.append(-min(ratio * advantage, min(max(ratio, 1 - eps_low), 1 + eps_high) * advantage))
        rows.append(row)
    return rows


def test_reference_token_losses_match_hand_arithmetic():
    # row 0, A=1: ρ = e^0.1, 1, e^−0.5 (none binds); row 1, A=−2: ρ = e^0.3 (kept), e^−0.3 → clipped to 0.8
    rows = reference_token_losses(two_by_three())
    assert rows[0] == pytest.approx([-math.exp(0.1), -1.0, -math.exp(-0.5)])
    assert rows[1] == pytest.approx([2 * math.exp(0.3), 1.6])


@pytest.mark.parametrize("loss_type, expected", [
    ("grpo", (-2.7117015778 / 3 + 4.2997176152 / 2) / 2),  # mean per sequence, then over 2 sequences
    ("dapo", (-2.7117015778 + 4.2997176152) / 5),  # over the 5 loss tokens
    ("dr_grpo", (-2.7117015778 + 4.2997176152) / (2 * 3)),  # over B × max length
])
def test_loss_type_aggregation(loss_type, expected):
    batch = two_by_three()
    rows = reference_token_losses(batch)
    independent = {"grpo": sum(sum(r) / len(r) for r in rows) / len(rows),
                   "dapo": sum(map(sum, rows)) / sum(map(len, rows)),
                   "dr_grpo": sum(map(sum, rows)) / (len(rows) * 3)}[loss_type]
    loss = grpo_loss(batch, GRPOConfig(loss_type=loss_type)).item()
    assert loss == pytest.approx(independent, abs=1e-12)
    assert loss == pytest.approx(expected, abs=1e-9)


def test_metrics_are_means_over_masked_tokens():
    _, metrics = GRPO(GRPOConfig()).loss_sum(two_by_three())
    assert metrics["clip_fraction_low"] == pytest.approx(1 / 5)  # row 1, token 2
    assert metrics["clip_fraction_high"] == 0.0
    ratios = [math.exp(0.1), 1.0, math.exp(-0.5), math.exp(0.3), math.exp(-0.3)]  # padding excluded
    assert metrics["ratio_mean"] == pytest.approx(sum(ratios) / 5)
    assert "kl" not in metrics and all(isinstance(v, float) for v in metrics.values())


def test_bool_mask_works_like_float_mask():
    batch = two_by_three()
    as_bool = PolicyBatch(batch.logprobs, batch.old_logprobs, batch.mask.bool(), batch.advantages)
    assert grpo_loss(as_bool, GRPOConfig()).item() == pytest.approx(grpo_loss(batch, GRPOConfig()).item())


# --- the sum / normalizer split --------------------------------------------------------------------


def random_batch(generator: torch.Generator, rows: int, length: int, lengths: list[int]) -> PolicyBatch:
    def draw():
        return -torch.rand(rows, length, generator=generator, dtype=torch.float64) * 2

    mask = t([[1.0 if j < n else 0.0 for j in range(length)] for n in lengths])
    return PolicyBatch(logprobs=draw(), old_logprobs=draw(), mask=mask, ref_logprobs=draw(),
                       advantages=torch.randn(rows, generator=generator, dtype=torch.float64))


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batch_sums_over_normalizer_equal_whole_batch_loss(loss_type):
    generator = torch.Generator().manual_seed(0)
    first = random_batch(generator, rows=2, length=5, lengths=[5, 2])
    second = random_batch(generator, rows=3, length=3, lengths=[3, 1, 2])  # padded shorter than the first
    config = GRPOConfig(loss_type=loss_type, beta=0.05, epsilon_high=0.28)
    objective = GRPO(config)
    stats = StepStats(num_sequences=5, num_tokens=13, max_completion_length=5)
    streamed = (objective.loss_sum(first)[0] + objective.loss_sum(second)[0]) / objective.normalizer(stats)

    def pad(x):
        return torch.nn.functional.pad(x, (0, 2))

    whole = PolicyBatch(*(torch.cat([getattr(first, k), pad(getattr(second, k))])
                          for k in ("logprobs", "old_logprobs", "mask")),
                        advantages=torch.cat([first.advantages, second.advantages]),
                        ref_logprobs=torch.cat([first.ref_logprobs, pad(second.ref_logprobs)]))
    assert streamed.item() == pytest.approx(grpo_loss(whole, config).item(), abs=1e-12)
    assert streamed.item() == pytest.approx(grpo_loss(whole, config, stats).item(), abs=1e-12)


@pytest.mark.parametrize("loss_type, expected", [("grpo", 4.0), ("dapo", 30.0), ("dr_grpo", 4 * 16.0)])
def test_normalizer_per_loss_type(loss_type, expected):
    stats = StepStats(num_sequences=4, num_tokens=30, max_completion_length=16)
    assert GRPO(GRPOConfig(loss_type=loss_type)).normalizer(stats) == expected


def test_on_policy_gradient_is_minus_advantage_over_length_and_batch():
    batch = two_by_three()
    logprobs = batch.logprobs.clone().requires_grad_(True)
    on_policy = PolicyBatch(logprobs=logprobs, old_logprobs=logprobs.detach(), mask=batch.mask,
                            advantages=batch.advantages)
    grpo_loss(on_policy, GRPOConfig()).backward()
    # ρ = 1 everywhere, nothing clipped: ∂L/∂logp_{i,t} = −A_i / |o_i| / B on loss tokens, 0 on padding
    expected = t([[-1.0 / 3 / 2, -1.0 / 3 / 2, -1.0 / 3 / 2], [2.0 / 2 / 2, 2.0 / 2 / 2, 0.0]])
    assert torch.allclose(logprobs.grad, expected, atol=1e-12)


# --- registration and configuration ---------------------------------------------------------------


def test_registered_and_needs_reference_only_with_beta():
    assert plugins.objectives.get("grpo") is GRPO
    assert not objective_from_config("grpo", {}).needs_reference()
    assert objective_from_config("grpo", {"beta": 0.04}).needs_reference()


def test_beta_without_reference_logprobs_is_refused():
    with pytest.raises(ValueError, match="ref_logprobs"):
        token_loss(one_token(-1.0, old=-1.0, advantage=1.0), beta=0.1)


def test_config_from_params_converts_ints_and_keeps_none():
    objective = objective_from_config("grpo", {"beta": 0, "epsilon_high": None, "loss_type": "dapo"})
    assert objective.config == GRPOConfig(beta=0.0, epsilon_high=None, loss_type="dapo")
    assert isinstance(objective.config.beta, float)
    assert objective.state_dict() == {} and objective.log_metrics() == {}


def test_unknown_key_names_the_closest_field():
    with pytest.raises(ValueError, match=r"'epsilom'.*did you mean 'epsilon'"):
        objective_from_config("grpo", {"epsilom": 0.3})
    with pytest.raises(ValueError, match=r"'epsilon_hi'.*did you mean 'epsilon_high'"):
        objective_from_config("grpo", {"epsilon_hi": 0.3})


def test_bad_loss_type_lists_the_choices():
    with pytest.raises(ValueError, match="'bnpo' is not one of: grpo, dapo, dr_grpo"):
        objective_from_config("grpo", {"loss_type": "bnpo"})


@pytest.mark.parametrize("params, message", [
    ({"epsilon": "0.2x"}, r"epsilon: expected float, got '0.2x' \(str\)"),
    ({"epsilon_high": "high"}, r"epsilon_high: expected float \| None"),
    ({"scale_rewards": 1}, r"scale_rewards: expected bool"),
    ({"beta": True}, r"beta: expected float"),
])
def test_wrong_type_names_field_and_type(params, message):
    with pytest.raises(TypeError, match=message):
        objective_from_config("grpo", params)


@pytest.mark.parametrize("params, message", [
    ({"epsilon": 1.5}, "epsilon must be in"), ({"epsilon_high": -0.1}, "epsilon_high must be >= 0"),
    ({"beta": -1.0}, "beta must be >= 0"),
])
def test_out_of_range_values_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        objective_from_config("grpo", params)


def test_config_fields_for_docs():
    fields = {name: (type_name, default, text) for name, type_name, default, text in objective_config_fields("grpo")}
    assert list(fields) == ["epsilon", "epsilon_high", "beta", "loss_type", "scale_rewards", "advantage_estimator"]
    assert fields["epsilon_high"][:2] == ("float | None", None)
    assert fields["epsilon"][:2] == ("float", 0.2)
    assert all(text for _, _, text in fields.values())
