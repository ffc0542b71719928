"""AEPO: the temperature controller, the regularizer's loss and gradient, sample selection, config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit import plugins
from rlkit.objectives import GRPO, GRPOConfig, PolicyBatch, StepStats, objective_from_config
from rlkit.objectives.aepo import (AEPO, AEPOConfig, AEPOPolicyBatch, RegularizerBatch, TemperatureController,
                                   eligible_regularizer_rows, regularizer_loss_sum, with_regularizer)
from rlkit.objectives.base import objective_config_fields

LOSS_TYPES = ("grpo", "dapo", "dr_grpo")


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def controller(rule="switch", gain=2.0) -> TemperatureController:
    return TemperatureController(target_entropy=0.5, temperature_low=0.8, temperature_high=1.2, rule=rule, gain=gain)


# --- the temperature controller ----------------------------------------------------------------------


def test_starts_hot_with_full_budget_as_the_official_code():
    c = controller()
    assert c.temperature == 1.2 and c.below_target and c.last_entropy is None
    assert c.regularizer_count(available=100, max_sequences=60) == 60


def test_switch_rule_on_a_hand_worked_sequence():
    c = controller()
    # below → hot, above → cold, exactly at the target counts as below (official: entropy <= base)
    temperatures = [c.update(h) for h in (0.3, 0.6, 0.5, 0.49, 0.9, 2.0, 0.0)]
    assert temperatures == [1.2, 0.8, 1.2, 1.2, 0.8, 0.8, 1.2]
    assert c.updates == 7 and c.last_entropy == 0.0


def test_proportional_rule_on_a_hand_worked_sequence():
    c = controller(rule="proportional", gain=2.0)
    # T = clip(1 + 2·(0.5 − H), 0.8, 1.2)
    expected = [1.2,  # 1.4 → clipped to 1.2
                1.1, 1.0,  # at the target: T = 1, the regularizer's expected pull vanishes
                0.9, 0.8,  # 0.8 exactly
                0.8]  # −1.0 → clipped to 0.8
    for h, want in zip((0.3, 0.45, 0.5, 0.55, 0.6, 1.5), expected):
        assert c.update(h) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("rule", ["switch", "proportional"])
def test_temperature_moves_the_right_way_and_stays_in_bounds(rule):
    c = controller(rule=rule)
    rng = np.random.default_rng(0)
    seen = []
    for h in rng.uniform(0.0, 2.0, size=300):
        temperature = c.update(h)
        assert 0.8 <= temperature <= 1.2
        if h < 0.5:
            assert temperature > 1 and c.below_target  # entropy low: hotter than the policy
        elif h > 0.5:
            assert temperature < 1 and not c.below_target  # entropy high: colder
        seen.append((h, temperature))
    seen.sort()
    assert all(a[1] >= b[1] for a, b in zip(seen, seen[1:]))  # lower entropy, never a cooler temperature


def test_budget_is_halved_above_the_target():
    c = controller()
    c.update(0.9)
    assert c.regularizer_count(available=100, max_sequences=60) == 30
    assert c.regularizer_count(available=41, max_sequences=60) == 20  # min(60, 41) // 2, as the official code
    c.update(0.1)
    assert c.regularizer_count(available=41, max_sequences=60) == 41


@pytest.mark.parametrize("rule", ["switch", "proportional"])
def test_state_round_trip_continues_identically(rule):
    first = controller(rule=rule)
    for h in (0.2, 0.7, 0.6):
        first.update(h)
    second = controller(rule=rule)
    second.load_state_dict(first.state_dict())
    assert second.state_dict() == first.state_dict()
    assert [second.update(h) for h in (0.1, 0.9, 0.45)] == [first.update(h) for h in (0.1, 0.9, 0.45)]


def test_load_keeps_the_temperature_inside_new_bounds_and_refuses_partial_state():
    c = controller()
    c.load_state_dict({"temperature": 1.5, "last_entropy": None, "updates": 3})
    assert c.temperature == 1.2 and c.updates == 3 and c.below_target
    with pytest.raises(KeyError, match="updates"):
        c.load_state_dict({"temperature": 1.0, "last_entropy": 0.3})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1])
def test_bad_entropy_is_refused(bad):
    with pytest.raises(ValueError, match="finite number >= 0"):
        controller().update(bad)


def test_accepts_a_zero_dim_tensor():
    assert controller().update(torch.tensor(0.9)) == 0.8


# --- the loss on hand-computed numbers ---------------------------------------------------------------


def hand_batch(regularizer: RegularizerBatch | None) -> AEPOPolicyBatch:
    main = PolicyBatch(logprobs=t([[-1.0, -0.5]]), old_logprobs=t([[-1.0, -0.5]]), mask=t([[1.0, 1.0]]),
                       advantages=t([0.5]))
    return with_regularizer(main, regularizer)


def hand_regularizer() -> RegularizerBatch:
    # row a: ρ = 1, e^0.2 = 1.2214 → clipped to 1.2 (w = 1 > 0): ℓ = −1, −1.2
    # row b: ρ = e^−0.2 = 0.8187: the lower clip does not bind for w > 0: ℓ = −0.8187
    return RegularizerBatch(logprobs=t([[-2.0, -1.0, 0.0], [-0.3, 0.0, 0.0]]),
                            old_logprobs=t([[-2.0, -1.2, 0.0], [-0.1, 0.0, 0.0]]),
                            mask=t([[1, 1, 0], [1, 0, 0]]), weights=t([1.0, 1.0]))


@pytest.mark.parametrize("loss_type, expected", [
    # main: ρ = 1, A = 0.5 → ℓ = −0.5 per token; α = 0.5
    ("grpo", -0.5 + 0.5 * ((-1.0 - 1.2) / 2 - math.exp(-0.2))),  # token means per sequence
    ("dapo", -1.0 + 0.5 * (-1.0 - 1.2 - math.exp(-0.2))),  # token sums
    ("dr_grpo", -1.0 + 0.5 * (-1.0 - 1.2 - math.exp(-0.2))),
])
def test_loss_sum_on_hand_computed_example(loss_type, expected):
    aepo = AEPO(AEPOConfig(loss_type=loss_type, regularizer_coef=0.5))
    loss, metrics = aepo.loss_sum(hand_batch(hand_regularizer()))
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    assert metrics["regularizer_token_share"] == pytest.approx(3 / 2)  # 3 regularizer tokens, 2 main tokens


def test_without_regularizer_samples_it_is_grpo():
    config = AEPOConfig(loss_type="dapo", beta=0.0)
    batch = hand_batch(None)
    loss, metrics = AEPO(config).loss_sum(batch)
    grpo_loss, grpo_metrics = GRPO(GRPOConfig(loss_type="dapo")).loss_sum(batch)
    assert loss.item() == grpo_loss.item() == -1.0
    # −mean log π(sampled token): (1 + 0.5) / 2
    assert metrics == {**grpo_metrics, "regularizer_token_share": 0.0, "aepo_sampled_entropy": 0.75}
    plain = PolicyBatch(batch.logprobs, batch.old_logprobs, batch.mask, batch.advantages)  # no attribute at all
    assert AEPO(config).loss_sum(plain)[0].item() == -1.0


def test_the_sampled_entropy_covers_main_and_regularizer_tokens():
    _, metrics = AEPO(AEPOConfig()).loss_sum(hand_batch(hand_regularizer()))
    # main −(−1 − 0.5) = 1.5 over 2 tokens; regularizer −(−2 − 1) − (−0.3) = 3.3 over 3: 4.8 / 5
    assert metrics["aepo_sampled_entropy"] == pytest.approx(0.96)


def test_defaults_are_the_official_codes():
    config = AEPOConfig()
    assert config.loss_type == "dapo" and config.entropy_measure == "sampled"
    with pytest.raises(ValueError, match="entropy_measure"):
        AEPOConfig(entropy_measure="full")


def test_coefficient_zero_drops_the_regularizer():
    loss, _ = AEPO(AEPOConfig(loss_type="grpo", regularizer_coef=0.0)).loss_sum(hand_batch(hand_regularizer()))
    assert loss.item() == pytest.approx(-0.5, abs=1e-12)


def numpy_reference(main: dict, reg: dict, *, eps_low, eps_high, beta, alpha, loss_type) -> float:
    """Plain NumPy, written from the formulas in the docstring, not from the implementation."""
    def clipped_surrogate(lp, old, weight):
        ratio = np.exp(lp - old)
        return -np.minimum(ratio * weight[:, None], np.clip(ratio, 1 - eps_low, 1 + eps_high) * weight[:, None])

    def aggregate(loss, mask):
        sums = (loss * mask).sum(axis=1)
        return (sums / np.maximum(mask.sum(axis=1), 1)).sum() if loss_type == "grpo" else sums.sum()

    main_loss = clipped_surrogate(main["lp"], main["old"], main["adv"])
    delta = main["ref"] - main["lp"]
    main_loss = main_loss + beta * (np.exp(delta) - delta - 1)
    reg_loss = clipped_surrogate(reg["lp"], reg["old"], reg["w"])  # no KL on regularizer rows
    return aggregate(main_loss, main["mask"]) + alpha * aggregate(reg_loss, reg["mask"])


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_loss_matches_independent_numpy(loss_type):
    rng = np.random.default_rng(1)
    main = {"lp": -rng.uniform(0.1, 2, (3, 4)), "old": -rng.uniform(0.1, 2, (3, 4)),
            "ref": -rng.uniform(0.1, 2, (3, 4)), "adv": rng.normal(size=3),
            "mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=float)}
    reg = {"lp": -rng.uniform(0.1, 2, (2, 5)), "old": -rng.uniform(0.1, 2, (2, 5)), "w": np.array([1.0, 0.5]),
           "mask": np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=float)}
    batch = with_regularizer(
        PolicyBatch(logprobs=t(main["lp"]), old_logprobs=t(main["old"]), mask=t(main["mask"]),
                    advantages=t(main["adv"]), ref_logprobs=t(main["ref"])),
        RegularizerBatch(logprobs=t(reg["lp"]), old_logprobs=t(reg["old"]), mask=t(reg["mask"]), weights=t(reg["w"])))
    config = AEPOConfig(loss_type=loss_type, epsilon=0.2, epsilon_high=0.28, beta=0.04, regularizer_coef=0.7)
    loss, _ = AEPO(config).loss_sum(batch)
    expected = numpy_reference(main, reg, eps_low=0.2, eps_high=0.28, beta=0.04, alpha=0.7, loss_type=loss_type)
    assert loss.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_micro_batches_sum_to_the_whole(loss_type):
    aepo = AEPO(AEPOConfig(loss_type=loss_type))
    reg = hand_regularizer()
    halves = [RegularizerBatch(*(getattr(reg, k)[i:i + 1] for k in ("logprobs", "old_logprobs", "mask", "weights")))
              for i in (0, 1)]
    whole = aepo.loss_sum(hand_batch(reg))[0]
    parts = aepo.loss_sum(hand_batch(halves[0]))[0] + aepo.loss_sum(with_regularizer(
        PolicyBatch(logprobs=t(np.zeros((0, 2))), old_logprobs=t(np.zeros((0, 2))), mask=t(np.zeros((0, 2))),
                    advantages=t(np.zeros(0))), halves[1]))[0]  # a micro-batch of regularizer rows only
    assert parts.item() == pytest.approx(whole.item(), abs=1e-12)
    stats = StepStats(num_sequences=1, num_tokens=2, max_completion_length=2)
    assert aepo.normalizer(stats) == GRPO(GRPOConfig(loss_type=loss_type)).normalizer(stats)  # main batch only


def test_on_policy_regularizer_gradient_is_plain_reinforce():
    logprobs = t([[-2.0, -1.0, 0.0], [-0.3, 0.0, 0.0]]).requires_grad_(True)
    mask, weights = t([[1, 1, 0], [1, 0, 0]]), t([1.0, 0.5])
    regularizer_loss_sum(logprobs, logprobs.detach(), mask, weights, AEPOConfig(loss_type="grpo")).backward()
    # ρ = 1: ∂/∂logp_{j,t} = −w_j / |o_j| on loss tokens, 0 on padding
    assert torch.allclose(logprobs.grad, t([[-0.5, -0.5, 0.0], [-0.5, 0.0, 0.0]]), atol=1e-12)


def test_weights_of_the_wrong_shape_are_refused():
    reg = hand_regularizer()
    reg.weights = t([[1.0], [1.0]])
    with pytest.raises(ValueError, match="weights must be"):
        AEPO(AEPOConfig()).loss_sum(hand_batch(reg))


# --- gradient direction on a toy softmax policy -----------------------------------------------------


def entropy(logits: torch.Tensor) -> float:
    logp = torch.log_softmax(logits, dim=-1)
    return float(-(logp.exp() * logp).sum())


def regularizer_step(logits: torch.Tensor, temperature: float, lr: float, samples: torch.Tensor | None = None):
    """One SGD step of the AEPO loss, main batch inert (A = 0), regularizer rows = one-token completions.

    Without ``samples`` every token is a row weighted by its probability under π^T (the exact
    expectation); with them each sampled token is a row of weight 1 (the paper's estimator).
    """
    theta = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(theta, dim=-1)
    if samples is None:
        tokens = torch.arange(len(logits))
        weights = torch.softmax(logits / temperature, dim=-1).double()
    else:
        tokens, weights = samples, torch.ones(len(samples), dtype=torch.float64)
    rows = logp[tokens].unsqueeze(1)
    main = PolicyBatch(logprobs=logp[:1].unsqueeze(0), old_logprobs=logp[:1].unsqueeze(0).detach(),
                       mask=t([[1.0]]), advantages=t([0.0]))
    reg = RegularizerBatch(logprobs=rows, old_logprobs=rows.detach(), mask=torch.ones_like(rows), weights=weights)
    loss, _ = AEPO(AEPOConfig(loss_type="dapo")).loss_sum(with_regularizer(main, reg))
    loss.backward()
    return (theta - lr * theta.grad).detach()


@pytest.mark.parametrize("temperature, raises", [(1.2, True), (0.8, False)])
def test_expected_regularizer_gradient_moves_entropy_toward_the_temperature(temperature, raises):
    logits = t([2.0, 0.5, -1.0])
    after = regularizer_step(logits, temperature, lr=0.5)
    assert (entropy(after) > entropy(logits)) is raises
    assert entropy(after) != pytest.approx(entropy(logits), abs=1e-4)


@pytest.mark.parametrize("temperature, raises", [(1.2, True), (0.8, False)])
def test_sampled_regularizer_gradient_has_the_same_sign(temperature, raises):
    logits = t([2.0, 0.5, -1.0])
    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(logits / temperature, dim=-1)
    samples = torch.multinomial(probs, 4000, replacement=True, generator=generator)
    after = regularizer_step(logits, temperature, lr=0.5 / 4000, samples=samples)
    assert (entropy(after) > entropy(logits)) is raises


def test_at_temperature_one_the_expected_gradient_is_zero():
    logits = t([2.0, 0.5, -1.0])
    assert torch.allclose(regularizer_step(logits, 1.0, lr=1.0), logits, atol=1e-12)  # E_π[∇log π] = 0


@pytest.mark.parametrize("rule", ["switch", "proportional"])
@pytest.mark.parametrize("start", [[4.0, 0.0, -1.0, -2.0], [0.1, 0.0, 0.0, -0.1]])
def test_closed_loop_holds_entropy_near_the_target(start, rule):
    """Controller + regularizer alone: a peaked and a nearly uniform policy both settle near H* = 0.8."""
    target = 0.8
    ctl = TemperatureController(target, 0.8, 1.2, rule=rule)
    logits = t(start)
    history = []
    for _ in range(400):
        temperature = ctl.update(entropy(logits))
        logits = regularizer_step(logits, temperature, lr=0.3)
        history.append(entropy(logits))
    tail = history[-100:]
    assert max(abs(h - target) for h in tail) < 0.05
    assert abs(entropy(t(start)) - target) > 0.3  # it really had to move


# --- selecting the regularizer samples ------------------------------------------------------------------


def test_eligible_rows_are_the_better_than_average_samples():
    rewards = t([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]])
    # group 0: A = ±0.866 → rows 0, 3; group 1 all correct → none (A = 0); group 2: row 11; group 3 none
    assert eligible_regularizer_rows(rewards).tolist() == [0, 3, 11]
    assert eligible_regularizer_rows(rewards, threshold=0.9).tolist() == [11]  # A = 1.5 for the lone success


def test_selection_takes_the_first_rows_within_the_budget():
    rewards = t([[1, 0, 0, 1], [0, 0, 0, 1]])
    aepo = AEPO(AEPOConfig(max_regularizer_sequences=2))
    assert aepo.select_regularizer_rows(rewards).tolist() == [0, 3]
    aepo.observe_entropy(5.0)  # above the target: half the budget
    assert aepo.select_regularizer_rows(rewards).tolist() == [0]


def test_all_rows_mode_takes_every_tempered_sample_within_the_budget():
    rewards = t([[1, 1, 1, 1], [0, 0, 0, 1]])  # the first group has no advantage at all
    aepo = AEPO(AEPOConfig(max_regularizer_sequences=6, regularizer_rows="all"))
    assert aepo.select_regularizer_rows(rewards).tolist() == [0, 1, 2, 3, 4, 5]
    aepo.observe_entropy(5.0)  # above the target: half the budget
    assert aepo.select_regularizer_rows(rewards).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="regularizer_rows"):
        AEPOConfig(regularizer_rows="some")


def test_rollout_facing_helpers():
    aepo = AEPO(AEPOConfig(target_entropy=0.5))
    assert aepo.regularizer_prompt_count(32) == 8 and aepo.regularizer_prompt_count(2) == 1
    assert aepo.regularizer_temperature(rollout_temperature=0.7) == pytest.approx(1.2 * 0.7)
    assert aepo.observe_entropy(0.9) == 0.8
    assert aepo.regularizer_temperature(rollout_temperature=1.0) == 0.8


# --- registration, state and config ------------------------------------------------------------------


def test_registered_and_never_skips_zero_advantage_groups():
    assert plugins.objectives.get("aepo") is AEPO
    aepo = objective_from_config("aepo", {"target_entropy": 0.75})
    assert isinstance(aepo, AEPO) and aepo.config.target_entropy == 0.75
    assert not aepo.zero_advantage_is_inert() and not aepo.needs_reference()
    assert objective_from_config("aepo", {"beta": 0.04}).needs_reference()


def test_the_controller_is_driver_state_observed_and_restored():
    aepo = AEPO(AEPOConfig())
    # the learner-side copy has no state of its own: the controller lives on the driver
    assert aepo.state_dict() == {} and aepo.log_metrics() == {}
    driver = aepo.driver_state()
    # the official measure by default: the sampled-token estimate, not the exact entropy
    assert driver.observe({"entropy": 0.3, "aepo_sampled_entropy": 0.7, "loss": 0.1}) == {
        "aepo_temperature": 0.8, "aepo_below_target": 0.0, "aepo_measured_entropy": 0.7}
    exact = AEPO(AEPOConfig(entropy_measure="exact")).driver_state()
    assert exact.observe({"entropy": 0.3, "aepo_sampled_entropy": 0.7})["aepo_temperature"] == 1.2
    assert aepo.regularizer_temperature(rollout_temperature=1.0) == 0.8  # the hooks share the controller
    restored = AEPO(AEPOConfig())
    restored.driver_state().load_state_dict(driver.state_dict())
    assert restored.controller.state_dict() == aepo.controller.state_dict()
    assert restored.regularizer_temperature(rollout_temperature=1.0) == 0.8


def test_config_fields_have_help_and_paper_defaults():
    fields = {name: (default, text) for name, _, default, text in objective_config_fields("aepo")}
    assert {k: fields[k][0] for k in ("target_entropy", "temperature_high", "temperature_low", "temperature_rule",
                                      "max_regularizer_sequences", "regularizer_prompt_fraction",
                                      "regularizer_advantage_threshold", "regularizer_coef")} == {
        "target_entropy": 0.5, "temperature_high": 1.2, "temperature_low": 0.8, "temperature_rule": "switch",
        "max_regularizer_sequences": 60, "regularizer_prompt_fraction": 0.25,
        "regularizer_advantage_threshold": 0.05, "regularizer_coef": 1.0}
    assert "epsilon" in fields and all(text for _, text in fields.values())


@pytest.mark.parametrize("params, message", [
    ({"target_entropy": 0.0}, "target_entropy must be > 0"),
    ({"target_entropy": float("nan")}, "target_entropy must be > 0"),
    ({"temperature_high": 0.9}, "0 < temperature_low <= 1 <= temperature_high"),
    ({"temperature_low": 1.1}, "0 < temperature_low <= 1 <= temperature_high"),
    ({"temperature_low": 0.0}, "0 < temperature_low <= 1 <= temperature_high"),
    ({"temperature_low": 1.0, "temperature_high": 1.0}, "low < high"),
    ({"temperature_rule": "pid"}, "'pid' is not one of: switch, proportional"),
    ({"temperature_gain": 0.0}, "temperature_gain must be > 0"),
    ({"regularizer_coef": -1.0}, "regularizer_coef must be >= 0"),
    ({"max_regularizer_sequences": -1}, "max_regularizer_sequences must be >= 0"),
    ({"regularizer_prompt_fraction": 0.0}, r"regularizer_prompt_fraction must be in \(0, 1\]"),
    ({"regularizer_prompt_fraction": 1.5}, r"regularizer_prompt_fraction must be in \(0, 1\]"),
    ({"regularizer_advantage_threshold": -0.1}, "one-sided"),
    ({"loss_type": "bnpo"}, "'bnpo' is not one of"),  # GRPO's own checks still run
])
def test_out_of_range_values_are_refused(params, message):
    with pytest.raises(ValueError, match=message):
        objective_from_config("aepo", params)


@pytest.mark.parametrize("params, message", [
    ({"max_regularizer_sequences": 1.5}, r"max_regularizer_sequences: expected int"),
    ({"target_entropy": "high"}, r"target_entropy: expected float"),
    ({"temperature_rule": 1}, r"temperature_rule: expected str"),
])
def test_wrong_types_are_refused(params, message):
    with pytest.raises(TypeError, match=message):
        objective_from_config("aepo", params)


def test_unknown_key_names_the_closest_field():
    with pytest.raises(ValueError, match=r"'target_entropie'.*did you mean 'target_entropy'"):
        objective_from_config("aepo", {"target_entropie": 0.5})
