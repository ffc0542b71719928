"""Offline preference losses pinned to hand-computed values: the spec's POWER-DL example
(specs/power-dl.md) and our own for DPO and POWER."""

from __future__ import annotations

import pytest
import torch

from rlkit.plugins import preference_losses
from rlkit.preference import DPO, POWER, PairBatch, dynamic_label_update
from rlkit.preference.losses import DPOConfig, POWERConfig


def _pairs(chosen, rejected, chosen_len, rejected_len, labels=None, **ref):
    return PairBatch(chosen_logps=torch.tensor([chosen], requires_grad=True), rejected_logps=torch.tensor([rejected]),
                     chosen_lengths=torch.tensor([chosen_len]), rejected_lengths=torch.tensor([rejected_len]),
                     labels=None if labels is None else torch.tensor([labels]),
                     **{k: torch.tensor([v]) for k, v in ref.items()})


def test_power_dl_on_the_spec_example():
    power = POWER(POWERConfig(beta=2.0, sft_weight=0.5, label_rate=0.1))
    pairs = _pairs(-2.0, -3.0, 4, 5)
    assert power.margin(pairs).item() == pytest.approx(0.3)  # 0.2, plus the length margin 0.1
    loss, parts = power.loss(pairs)
    assert parts["preference_loss"].item() == pytest.approx(0.554355, abs=1e-6)
    assert parts["sft_loss"].item() == pytest.approx(0.25)
    assert loss.item() == pytest.approx(0.804355, abs=1e-6)
    assert power.next_labels(pairs).item() == pytest.approx(0.957444, abs=1e-6)
    soft = _pairs(-2.0, -3.0, 4, 5, labels=0.8)
    assert power.loss(soft)[1]["preference_loss"].item() == pytest.approx(0.614355, abs=1e-6)
    no_margin = POWER(POWERConfig(beta=2.0, sft_weight=0.5, length_margin=False))
    loss, parts = no_margin.loss(_pairs(-2.0, -3.0, 4, 5))
    assert (parts["preference_loss"].item(), loss.item()) == pytest.approx((0.598139, 0.848139), abs=1e-6)


def test_the_preference_gradient_in_the_margin_is_sigma_minus_the_label():
    power = POWER(POWERConfig(beta=2.0, sft_weight=0.0))
    for label, expected in ((1.0, -0.425557), (0.8, -0.225557)):
        h = torch.tensor([0.3], requires_grad=True)
        labels = torch.tensor([label])
        loss = -(labels * torch.nn.functional.logsigmoid(h) + (1 - labels) * torch.nn.functional.logsigmoid(-h))
        loss.backward()
        assert h.grad.item() == pytest.approx(expected, abs=1e-6)
    # through the loss: dL/d log π(y⁺) = (σ(h) − l) · β / |y⁺| with no SFT term
    pairs = _pairs(-2.0, -3.0, 4, 5)
    power.loss(pairs)[0].sum().backward()
    assert pairs.chosen_logps.grad.item() == pytest.approx(-0.425557 * 2.0 / 4, abs=1e-6)


def test_power_on_our_own_example():
    # β = 1, no SFT term, no length margin: h = −3/3 − (−2/1) = 1, loss = −log σ(1)
    power = POWER(POWERConfig(beta=1.0, sft_weight=0.0, length_margin=False, label_rate=0.5))
    pairs = _pairs(-3.0, -2.0, 3, 1)
    assert power.loss(pairs)[0].item() == pytest.approx(0.3132617, abs=1e-6)
    assert power.next_labels(pairs).item() == pytest.approx(0.5 + 0.5 * 0.7310586, abs=1e-6)


def test_dynamic_labels_settle_at_their_stationary_value_and_rate_zero_keeps_them():
    labels, margin = torch.tensor([1.0, 0.0, 0.5]), torch.tensor([-2.0, 0.0, 3.0])
    for _ in range(400):
        labels = dynamic_label_update(labels, margin, 0.1)
    assert torch.allclose(labels, torch.sigmoid(margin), atol=1e-6)
    assert torch.equal(dynamic_label_update(torch.tensor([1.0]), torch.tensor([-5.0]), 0.0), torch.tensor([1.0]))


def test_dpo_on_our_own_example():
    # β = 0.1: chosen gains 1.0 over the reference, rejected 0.5 less: margin 0.15, loss log(1 + e^−0.15)
    dpo = DPO(DPOConfig(beta=0.1))
    loss, parts = dpo.loss(_pairs(-5.0, -7.0, 3, 3, ref_chosen_logps=-6.0, ref_rejected_logps=-6.5))
    assert parts["margin"].item() == pytest.approx(0.15)
    assert loss.item() == pytest.approx(0.6209570, abs=1e-6)
    with pytest.raises(ValueError, match="reference"):
        dpo.loss(_pairs(-5.0, -7.0, 3, 3))


def test_the_losses_are_registered_plugins_and_refuse_bad_settings():
    assert preference_losses.get("dpo") is DPO and preference_losses.get("power") is POWER
    with pytest.raises(ValueError, match="label_rate"):
        POWERConfig(label_rate=1.5)
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
