"""DPH-RL: divergence terms on π0's samples, the mixed rehearsal/exploration loss, the split rule, config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlkit import plugins
from rlkit.objectives import GRPOConfig, PolicyBatch, StepStats, grpo_loss, objective_from_config
from rlkit.objectives.base import objective_config_fields
from rlkit.objectives.dph import (DPH, DPHConfig, confirm_rehearsal, forward_kl_term, js_term, reverse_kl_term,
                                  split_rehearsal)
from rlkit.objectives.grpo import batch_stats

LOG2 = math.log(2.0)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def term_and_grad(fn, log_u: float, **kwargs) -> tuple[float, float]:
    """g(u) and ∂g/∂log πθ for one token with log πθ − log π0 = log_u (π0 fixed at log 0.25)."""
    init = t([math.log(0.25)])
    logp = (init + log_u).requires_grad_(True)
    value = fn(logp, init, **kwargs)
    value.sum().backward()
    return value.item(), logp.grad.item()


# --- each term on hand-computed tokens --------------------------------------------------------------
# u = πθ/π0. u = 2: log πθ = log 0.5, log π0 = log 0.25.
#   k3 = u − 1 − log u = 1 − 0.693147 = 0.306853;   k1 = −log u = −0.693147
#   js = u log u − (u+1) log((u+1)/2) = 1.386294 − 3·0.405465 = 0.169899
#   reverse = u log u − u + 1 = 1.386294 − 1 = 0.386294
# u = 0.5: k3 = −0.5 + 0.693147 = 0.193147;  js = −0.346574 + 1.5·0.287682 = 0.084950;
#   reverse = −0.346574 + 0.5 = 0.153426


@pytest.mark.parametrize("fn, kwargs, at_2, at_half", [
    (forward_kl_term, {"estimator": "k3"}, 0.3068528, 0.1931472),
    (forward_kl_term, {"estimator": "k1"}, -0.6931472, 0.6931472),
    (js_term, {}, 0.1698990, 0.0849495),
    (reverse_kl_term, {}, 0.3862944, 0.1534264),
])
def test_terms_on_hand_computed_tokens(fn, kwargs, at_2, at_half):
    assert term_and_grad(fn, math.log(2.0), **kwargs)[0] == pytest.approx(at_2, abs=1e-7)
    assert term_and_grad(fn, math.log(0.5), **kwargs)[0] == pytest.approx(at_half, abs=1e-7)


@pytest.mark.parametrize("fn, kwargs, grad_at_2, grad_at_half", [
    (forward_kl_term, {"estimator": "k3"}, 1.0, -0.5),  # u − 1
    (forward_kl_term, {"estimator": "k1"}, -1.0, -1.0),  # −1
    (js_term, {}, 2 * math.log(4 / 3), 0.5 * math.log(2 / 3)),  # u·log(2u/(u+1))
    (reverse_kl_term, {}, 2 * LOG2, -0.5 * LOG2),  # u·log u
])
def test_term_gradients_with_respect_to_current_logprob(fn, kwargs, grad_at_2, grad_at_half):
    assert term_and_grad(fn, math.log(2.0), **kwargs)[1] == pytest.approx(grad_at_2, abs=1e-9)
    assert term_and_grad(fn, math.log(0.5), **kwargs)[1] == pytest.approx(grad_at_half, abs=1e-9)


@pytest.mark.parametrize("fn", [lambda a, b: forward_kl_term(a, b, "k3"), js_term, reverse_kl_term])
def test_shifted_generators_are_zero_with_zero_gradient_at_the_initial_policy(fn):
    value, grad = term_and_grad(fn, 0.0)
    assert value == pytest.approx(0.0, abs=1e-15) and grad == pytest.approx(0.0, abs=1e-15)
    for log_u in np.linspace(-6, 3, 19):  # and every token's term is >= 0
        assert term_and_grad(fn, float(log_u))[0] >= -1e-15


# --- against an independent NumPy computation: exact π0-expectations on a categorical -----------------


def exact_expectation(fn, logits: np.ndarray, init_probs: np.ndarray) -> tuple[float, np.ndarray]:
    """Σ_a π0(a)·g(πθ(a)/π0(a)) over the whole vocabulary, and its gradient in the logits θ."""
    theta = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(theta, dim=0)
    init = torch.tensor(np.log(init_probs), dtype=torch.float64)
    value = (torch.tensor(init_probs) * fn(logp, init)).sum()
    value.backward()
    return value.item(), theta.grad.numpy()


def np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def np_forward_kl(logits, q):
    p = np_softmax(logits)
    return float(np.sum(q * np.log(q / p))), p - q  # ∇θ KL(q‖softmax θ) = p − q


def np_reverse_kl(logits, q):
    p = np_softmax(logits)
    kl = float(np.sum(p * np.log(p / q)))
    return kl, p * (np.log(p / q) - kl)


def np_two_js(logits, q):
    def value(x):
        p = np_softmax(x)
        m = (p + q) / 2
        return float(np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m)))

    h = 1e-6
    grad = np.array([(value(logits + h * e) - value(logits - h * e)) / (2 * h) for e in np.eye(len(logits))])
    return value(logits), grad


CASES = [(np.array([0.3, -1.2, 2.0, 0.0, -0.5]), np.array([0.1, 0.3, 0.2, 0.25, 0.15])),
         (np.array([4.0, -3.0, 0.5]), np.array([0.2, 0.5, 0.3]))]


@pytest.mark.parametrize("logits, init_probs", CASES)
@pytest.mark.parametrize("fn, reference", [
    (lambda a, b: forward_kl_term(a, b, "k3"), np_forward_kl),
    (lambda a, b: forward_kl_term(a, b, "k1"), np_forward_kl),
    (js_term, np_two_js),
    (reverse_kl_term, np_reverse_kl),
])
def test_expectation_over_initial_samples_is_the_divergence_and_its_gradient(logits, init_probs, fn, reference):
    value, grad = exact_expectation(fn, logits, init_probs)
    expected_value, expected_grad = reference(logits, init_probs)
    assert value == pytest.approx(expected_value, abs=1e-10)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-7)


def test_forward_kl_recovers_an_abandoned_mode_that_reverse_kl_and_js_let_go():
    # π0 puts 0.3 on token 0; the policy has dropped it to ~2e-6. Descent direction on its logit:
    logits, init_probs = np.array([-9.0, 4.0, 3.0]), np.array([0.3, 0.4, 0.3])
    push = {name: -exact_expectation(fn, logits, init_probs)[1][0] for name, fn in
            [("forward", lambda a, b: forward_kl_term(a, b, "k3")), ("js", js_term), ("reverse", reverse_kl_term)]}
    assert push["forward"] == pytest.approx(0.3 - np_softmax(logits)[0], rel=1e-9)  # π0(a) − πθ(a)
    assert push["forward"] > 1000 * abs(push["reverse"]) and push["forward"] > 1000 * abs(push["js"])


# --- what distinguishes the three ----------------------------------------------------------------------


def test_forward_kl_pushes_initial_samples_up_and_the_push_does_not_fade():
    for log_u in (-0.1, -1.0, -5.0, -10.0):  # the policy below π0 on π0's own sample
        assert term_and_grad(forward_kl_term, log_u)[1] < 0  # descent raises log πθ
        assert term_and_grad(forward_kl_term, log_u, estimator="k1")[1] == -1.0
    assert term_and_grad(forward_kl_term, -10.0)[1] == pytest.approx(-1.0, abs=1e-4)
    assert term_and_grad(forward_kl_term, -10.0)[0] == pytest.approx(9.0000454, abs=1e-6)  # unbounded as u → 0


def test_forward_kl_has_no_cap_where_the_policy_dropped_a_sample():
    # verl caps k3 at 10 (and log u at −20), which would zero this gradient; DPH keeps it
    value, grad = term_and_grad(forward_kl_term, -12.0)
    assert value == pytest.approx(11.0000061, abs=1e-6) and grad == pytest.approx(-1.0, abs=1e-5)
    assert term_and_grad(forward_kl_term, -40.0)[1] == pytest.approx(-1.0, abs=1e-12)
    value, grad = term_and_grad(forward_kl_term, 25.0)  # log u is capped at 20 against overflow
    assert value == pytest.approx(math.exp(20) - 21) and grad == 0.0


def test_js_is_bounded_and_lets_go_of_abandoned_samples():
    values = [term_and_grad(js_term, float(x))[0] for x in np.linspace(-30, 0, 61)]
    assert max(values) <= LOG2 + 1e-12  # u ∈ (0, 1]: 0 <= term <= log 2
    assert term_and_grad(js_term, -30.0)[0] == pytest.approx(LOG2, abs=1e-9)  # u → 0 costs log 2, not ∞
    assert abs(term_and_grad(js_term, -15.0)[1]) < 1e-5  # and its gradient vanishes
    assert term_and_grad(js_term, 1.0)[1] > 0  # above π0 it is pulled back down


def test_reverse_kl_sign_pulls_toward_initial_policy_and_ignores_dropped_samples():
    assert term_and_grad(reverse_kl_term, 0.7)[1] > 0  # over-weighted sample: descent lowers it
    assert term_and_grad(reverse_kl_term, -0.7)[1] < 0  # under-weighted: raised ...
    assert abs(term_and_grad(reverse_kl_term, -15.0)[1]) < 1e-5  # ... but not once dropped (mode-seeking)
    assert term_and_grad(reverse_kl_term, -30.0)[0] == pytest.approx(1.0, abs=1e-9)


# --- the mixed batch -------------------------------------------------------------------------------------

NAN = float("nan")


def mixed_batch() -> PolicyBatch:
    """Rows 0, 2 exploration; rows 1, 3 rehearsal. Ignored entries are NaN to catch any leak."""
    return PolicyBatch(
        logprobs=t([[-1.0, -0.5, -2.0], [-0.7, -1.2, -9.0], [-0.3, -1.5, -9.0], [-2.0, -0.1, -0.4]]),
        old_logprobs=t([[-1.1, -0.5, -1.5], [NAN, NAN, NAN], [-0.6, -1.2, -0.1], [NAN, NAN, NAN]]),
        mask=t([[1, 1, 1], [1, 1, 0], [1, 1, 0], [1, 1, 1]]),
        advantages=t([1.0, NAN, -2.0, NAN]),
        stored_logprobs=t([[NAN, NAN, NAN], [-1.0, -1.0, NAN], [NAN, NAN, NAN], [-1.5, -0.1, -1.0]]),
        extra=torch.tensor([False, True, False, True]))


def pg_token(logp, old, advantage, eps_low=0.2, eps_high=0.28):
    ratio = math.exp(logp - old)
    return -min(ratio * advantage, min(max(ratio, 1 - eps_low), 1 + eps_high) * advantage)


def reference_token_losses(batch: PolicyBatch, weight: float, g) -> list[list[float]]:
    """Plain-Python ℓ per loss token: PG on exploration rows, η·g(u) on rehearsal rows."""
    rows = []
    for i in range(batch.logprobs.shape[0]):
        row = []
        for j in range(batch.logprobs.shape[1]):
            if not batch.mask[i, j]:
                continue
            logp = batch.logprobs[i, j].item()
            if batch.extra[i]:
                row.append(weight * g(math.exp(logp - batch.stored_logprobs[i, j].item())))
            else:
                row.append(pg_token(logp, batch.old_logprobs[i, j].item(), batch.advantages[i].item()))
        rows.append(row)
    return rows


GENERATORS = {"forward_kl": lambda u: u - 1 - math.log(u),
              "js": lambda u: u * math.log(u) - (u + 1) * math.log((u + 1) / 2),
              "reverse_kl": lambda u: u * math.log(u) - u + 1}


@pytest.mark.parametrize("divergence", list(GENERATORS))
@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_mixed_batch_loss_matches_independent_computation(divergence, loss_type):
    batch = mixed_batch()
    dph = DPH(DPHConfig(kind_averaging="pooled", divergence=divergence, weight=0.1, loss_type=loss_type))
    rows = reference_token_losses(batch, 0.1, GENERATORS[divergence])
    expected = {"dapo": sum(map(sum, rows)) / 10, "grpo": sum(sum(r) / len(r) for r in rows) / 4,
                "dr_grpo": sum(map(sum, rows)) / (4 * 3)}[loss_type]
    loss, _ = dph.loss_sum(batch)
    assert math.isfinite(loss.item())
    assert loss.item() / dph.normalizer(batch_stats(batch)) == pytest.approx(expected, abs=1e-12)


def test_rehearsal_rows_get_only_the_divergence_and_exploration_rows_only_the_policy_gradient():
    batch = mixed_batch()
    batch.logprobs.requires_grad_(True)
    dph = DPH(DPHConfig(kind_averaging="pooled", divergence="forward_kl", weight=0.1))  # dapo: divide by the 10 loss tokens
    loss, _ = dph.loss_sum(batch)
    (loss / dph.normalizer(batch_stats(batch))).backward()
    grad = batch.logprobs.grad
    assert torch.isfinite(grad).all()
    # rehearsal rows: η·(u − 1)/10 on their loss tokens, nothing on padding; no advantage involved
    for row in (1, 3):
        u = torch.exp(batch.logprobs[row].detach() - batch.stored_logprobs[row])
        expected = torch.where(batch.mask[row].bool(), 0.1 * (u - 1) / 10, torch.zeros_like(u))
        assert torch.allclose(grad[row], expected, atol=1e-12)
    # exploration rows: exactly GRPO's (β = 0) gradient for those rows with the same normalizer
    alone = PolicyBatch(logprobs=batch.logprobs.detach()[[0, 2]].clone().requires_grad_(True),
                        old_logprobs=batch.old_logprobs[[0, 2]], mask=batch.mask[[0, 2]],
                        advantages=batch.advantages[[0, 2]])
    stats = StepStats(num_sequences=4, num_tokens=10, max_completion_length=3)
    grpo_loss(alone, GRPOConfig(epsilon_high=0.28, loss_type="dapo"), stats).backward()
    assert torch.allclose(grad[[0, 2]], alone.logprobs.grad, atol=1e-12)


def test_without_rehearsal_rows_it_is_grpo_without_kl():
    batch = mixed_batch()
    plain = PolicyBatch(batch.logprobs[[0, 2]], batch.old_logprobs[[0, 2]], batch.mask[[0, 2]],
                        batch.advantages[[0, 2]])
    for loss_type in ("dapo", "grpo", "dr_grpo"):
        dph = DPH(DPHConfig(kind_averaging="pooled", loss_type=loss_type))
        expected = grpo_loss(plain, GRPOConfig(epsilon_high=0.28, loss_type=loss_type)).item()
        assert dph.loss_sum(plain)[0].item() / dph.normalizer(batch_stats(plain)) == pytest.approx(expected)
        no_rows = PolicyBatch(**{**plain.__dict__, "extra": torch.zeros(2, dtype=torch.bool)})
        assert dph.loss_sum(no_rows)[0].item() == pytest.approx(dph.loss_sum(plain)[0].item())


def test_zero_weight_leaves_rehearsal_rows_without_gradient():
    batch = mixed_batch()
    batch.logprobs.requires_grad_(True)
    DPH(DPHConfig(kind_averaging="pooled", weight=0.0)).loss_sum(batch)[0].backward()
    assert torch.all(batch.logprobs.grad[[1, 3]] == 0) and torch.any(batch.logprobs.grad[[0, 2]] != 0)


def test_rehearsal_rows_need_initial_logprobs_and_a_row_mask():
    batch = mixed_batch()
    with pytest.raises(ValueError, match="stored_logprobs"):
        DPH(DPHConfig(kind_averaging="pooled")).loss_sum(PolicyBatch(**{**batch.__dict__, "stored_logprobs": None}))
    with pytest.raises(ValueError, match=r"extra must be a \[B\] = \[4\]"):
        DPH(DPHConfig(kind_averaging="pooled")).loss_sum(PolicyBatch(**{**batch.__dict__, "extra": torch.ones(4, 3, dtype=torch.bool)}))


def test_metrics_are_token_weighted_and_split_by_kind():
    _, metrics = DPH(DPHConfig(kind_averaging="pooled", divergence="reverse_kl")).loss_sum(mixed_batch())
    assert metrics["rehearsal_token_fraction"] == pytest.approx(5 / 10)
    rows = reference_token_losses(mixed_batch(), 1.0, GENERATORS["reverse_kl"])
    assert metrics["divergence"] == pytest.approx((sum(rows[1]) + sum(rows[3])) / 10, abs=1e-12)
    log_ratios = [-0.7 + 1.0, -1.2 + 1.0, -2.0 + 1.5, -0.1 + 0.1, -0.4 + 1.0]
    assert metrics["log_ratio_init"] == pytest.approx(sum(log_ratios) / 10, abs=1e-12)
    # row 2 (A = −2), token 2: ρ = exp(−0.3) < 0.8 binds the lower clip; nothing else clips
    assert metrics["clip_fraction_low"] == pytest.approx(1 / 10) and metrics["clip_fraction_high"] == 0.0
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
def test_micro_batch_sums_over_normalizer_equal_the_whole_step(loss_type):
    batch = mixed_batch()
    dph = DPH(DPHConfig(kind_averaging="pooled", divergence="js", weight=0.2, loss_type=loss_type))
    stats = batch_stats(batch)

    def rows(index):
        return PolicyBatch(**{k: (v[index] if isinstance(v, torch.Tensor) else v) for k, v in batch.__dict__.items()})

    streamed = sum(dph.loss_sum(rows(index))[0] for index in ([0, 1], [2], [3])) / dph.normalizer(stats)
    assert streamed.item() == pytest.approx((dph.loss_sum(batch)[0] / dph.normalizer(stats)).item(), abs=1e-12)


def test_advantages_are_group_relative():
    advantages = DPH(DPHConfig()).compute_advantages(t([[1.0, 0.0, 0.0, 1.0]]))
    std = float(np.std([1, 0, 0, 1], ddof=1))
    assert torch.allclose(advantages, t([[0.5, -0.5, -0.5, 0.5]]) / (std + 1e-4))


# --- the split rule ---------------------------------------------------------------------------------------


def test_split_by_pass_rate_threshold():
    rates = [8 / 8, 6 / 8, 5 / 8, 0.0, 7 / 8]
    assert split_rehearsal(rates, threshold=0.75) == ([0, 1, 4], [2, 3])  # 6 of 8 is enough
    assert split_rehearsal(rates, threshold=0.875) == ([0, 4], [1, 2, 3])  # Qwen's 7 of 8
    assert split_rehearsal({"q7": 1.0, "q2": 0.5, "q9": 0.75}, threshold=1.0) == (["q7"], ["q2", "q9"])
    assert split_rehearsal({"a": 2 / 3}, threshold=2 / 3) == (["a"], [])
    assert split_rehearsal([], 0.75) == ([], [])


@pytest.mark.parametrize("rates, threshold, message", [
    ([0.5, 1.2], 0.75, "prompt 1 must be a number in"), ({"x": float("nan")}, 0.75, "prompt 'x'"),
    ([True], 0.75, "must be a number"), ([0.5], 0.0, "threshold must be in"), ([0.5], 1.5, "threshold"),
])
def test_split_refuses_bad_rates_and_thresholds(rates, threshold, message):
    with pytest.raises(ValueError, match=message):
        split_rehearsal(rates, threshold)


def test_confirmation_sample_keeps_only_prompts_whose_fresh_sample_is_correct():
    kept, dropped = confirm_rehearsal(["a", "b", "c"], {"a": True, "b": False})
    assert kept == ["a"] and dropped == ["b", "c"]


# --- registration and configuration ------------------------------------------------------------------------


def test_registered_reference_free_and_never_skipped():
    assert plugins.objectives.get("dph") is DPH
    dph = objective_from_config("dph", {"divergence": "js", "weight": 0.2})
    assert not dph.needs_reference() and not dph.zero_advantage_is_inert()
    assert dph.config == DPHConfig(divergence="js", weight=0.2)


def test_defaults_follow_the_official_scripts():
    config = DPHConfig()
    assert (config.divergence, config.weight, config.forward_kl_estimator) == ("forward_kl", 0.05, "k3")
    assert (config.epsilon, config.epsilon_high, config.loss_type, config.kind_averaging) == (0.2, 0.28, "dapo",
                                                                                             "per_kind")
    assert (config.pass_threshold, config.split_samples, config.rehearsal_samples) == (0.75, 8, 1)
    assert config.rehearsal_ratio == 256 / (128 * 16)


@pytest.mark.parametrize("params, error, message", [
    ({"divergence": "tv"}, ValueError, "'tv' is not one of: forward_kl, js, reverse_kl"),
    ({"kind_averaging": "mixed"}, ValueError, "'mixed' is not one of: per_kind, pooled"),
    ({"forward_kl_estimator": "k2"}, ValueError, "is not one of: k3, k1"),
    ({"loss_type": "bnpo"}, ValueError, "is not one of: grpo, dapo, dr_grpo"),
    ({"weight": -0.1}, ValueError, "weight must be >= 0"),
    ({"pass_threshold": 0}, ValueError, "pass_threshold must be in"),
    ({"pass_threshold": 1.1}, ValueError, "pass_threshold must be in"),
    ({"split_samples": 0}, ValueError, "split_samples and rehearsal_samples must be >= 1"),
    ({"rehearsal_ratio": -1}, ValueError, "rehearsal_ratio must be >= 0"),
    ({"epsilon": 1.0}, ValueError, "epsilon must be in"),
    ({"weigth": 0.1}, ValueError, r"'weigth'.*did you mean 'weight'"),
    ({"weight": "high"}, TypeError, r"weight: expected float"),
    ({"split_samples": 8.5}, TypeError, r"split_samples: expected int"),
])
def test_config_errors(params, error, message):
    with pytest.raises(error, match=message):
        objective_from_config("dph", params)


def test_config_fields_for_docs():
    fields = {name: (type_name, default, text) for name, type_name, default, text in objective_config_fields("dph")}
    assert list(fields)[:2] == ["divergence", "weight"]
    assert fields["epsilon_high"][:2] == ("float | None", 0.28)
    assert all(text for _, _, text in fields.values())


# --- the official micro-batch averaging: each kind token-meaned on its own ------------------------


def test_per_kind_averaging_by_hand():
    """Two exploration rows (3 and 5 tokens, token losses summing to 0.6 and 0.7) and one rehearsal row
    (4 tokens, divergence summing to 2.0), η = 0.05. Per kind: (N_e·mean_e + η·N_r·mean_r)/(N_e + N_r)
    = (2·1.3/8 + 0.05·1·2.0/4)/3 = (0.325 + 0.025)/3. Pooled: (1.3 + 0.05·2.0)/12."""
    divergence = t([[0.8, 0.4, 0.6, 0.2, 0.0]])
    # at ρ = 1 a token's loss is −A: A = −0.2 over 3 tokens sums to 0.6, A = −0.14 over 5 to 0.7
    mask = t([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    zeros = torch.zeros(3, 5, dtype=torch.float64)
    advantages = t([-0.2, -0.14, 0.0])
    # forward KL k1 = log π0 − log πθ: stored log π0 = the wanted divergence, πθ = 0 (log 1)
    batch = PolicyBatch(logprobs=zeros.clone(), old_logprobs=zeros.clone(), mask=mask, advantages=advantages,
                        stored_logprobs=torch.cat([zeros[:2], divergence]), extra=torch.tensor([False, False, True]),
                        step_stats=StepStats(num_sequences=2, num_tokens=8, max_completion_length=5,
                                             extra_sequences=1, extra_tokens=4))
    per_kind = DPH(DPHConfig(weight=0.05, forward_kl_estimator="k1"))
    loss, _ = per_kind.loss_sum(batch)
    step = StepStats(num_sequences=3, num_tokens=12, max_completion_length=5, extra_sequences=1, extra_tokens=4)
    assert (loss / per_kind.normalizer(step)).item() == pytest.approx((2 * 1.3 / 8 + 0.05 * 2.0 / 4) / 3)
    pooled = DPH(DPHConfig(weight=0.05, forward_kl_estimator="k1", kind_averaging="pooled"))
    loss, _ = pooled.loss_sum(batch)
    assert (loss / pooled.normalizer(step)).item() == pytest.approx((1.3 + 0.05 * 2.0) / 12)
    # a step without rehearsal rows is plain token-mean dapo either way
    assert per_kind.normalizer(StepStats(2, 8, 5)) == 8
    with pytest.raises(ValueError, match="per_kind needs the step's totals"):
        per_kind.loss_sum(PolicyBatch(**{**batch.__dict__, "step_stats": None}))
