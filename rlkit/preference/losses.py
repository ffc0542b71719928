"""Offline preference losses over (chosen, rejected) pairs: DPO, and POWER with dynamic labels.

A loss sees a :class:`PairBatch`: each pair's summed log-probability of its chosen and rejected
responses under the policy (with gradient), their lengths in tokens, the frozen reference's sums
where the loss needs them, and each pair's current soft label. It returns the per-pair loss and
diagnostics; the trainer averages over pairs.

**DPO** (Rafailov et al., 2023), the baseline:

    L = −log σ(β · [(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))])

**POWER-DL** (Rashidinejad and Tian, 2024, arXiv 2412.09544, "Sail into the Headwind"). Only the
abstract and summaries were readable (searched again on 2026-11-30: pages and code stores hold
nothing past the paper's opening; no official code found). What follows is the reconstruction in
``specs/power-dl.md``; every choice the abstract does not fix is a named knob, and the defaults
are the spec's, **not verified against the paper**:

* POWER maximises reward plus Guiaşu's weighted entropy with weights w(y) = 1/|y|. Its implicit
  reward gives the pair margin, reference-free (as SimPO):

      h = β (log π(y⁺)/|y⁺| − log π(y⁻)/|y⁻|) + β (1/|y⁺| − 1/|y⁻|)        (``length_margin``: the second term)

* Robustness (pessimism over the reward's confidence set) adds an SFT-like term on the chosen
  response, η · (−log π(y⁺)/|y⁺|)                                         (``sft_weight`` = η)
* Dynamic labels: each pair carries a soft label l (1 at the start). The preference loss is the
  cross-entropy against it, −[l log σ(h) + (1 − l) log σ(−h)], whose gradient in h is σ(h) − l,
  and after each use the label moves toward its stationary value σ(h):

      l ← (1 − γ) l + γ σ(h)                                              (``label_rate`` = γ; 0: static labels)

  so a pair the model keeps disagreeing with fades instead of being forced.

Worked example (tests/test_preference_losses.py, the spec's): β = 2, η = 0.5, γ = 0.1, log π(y⁺) =
−2.0 over 4 tokens, log π(y⁻) = −3.0 over 5: h = 0.2 + 0.1 = 0.3, preference loss 0.554355 with
l = 1 (0.614355 with l = 0.8), total with the SFT term 0.804355, next label 0.957444.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rlkit.plugins import preference_loss, preference_losses


@dataclass
class PairBatch:
    """One batch of pairs; every tensor is ``[P]`` (one value per pair)."""

    chosen_logps: torch.Tensor  # Σ_t log π(y⁺_t), with gradient
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor  # tokens of y⁺ (> 0)
    rejected_lengths: torch.Tensor
    labels: torch.Tensor | None = None  # soft labels in [0, 1]; None: 1 for every pair
    ref_chosen_logps: torch.Tensor | None = None  # the frozen reference's sums, when the loss needs them
    ref_rejected_logps: torch.Tensor | None = None


@dataclass
class DPOConfig:
    beta: float = field(default=0.1, metadata={"help": "β, the inverse temperature of the implicit reward"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


@preference_loss("dpo")
class DPO:
    """DPO: −log σ(β·[(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))])."""

    config_class = DPOConfig
    needs_reference = True
    dynamic_labels = False

    def __init__(self, config: DPOConfig):
        self.config = config

    def margin(self, pairs: PairBatch) -> torch.Tensor:
        """β·[(log π(y⁺) − log π_ref(y⁺)) − (log π(y⁻) − log π_ref(y⁻))]: the implicit reward's margin."""
        if pairs.ref_chosen_logps is None or pairs.ref_rejected_logps is None:
            raise ValueError("dpo needs the reference model's log-probs of both responses")
        chosen = pairs.chosen_logps - pairs.ref_chosen_logps
        rejected = pairs.rejected_logps - pairs.ref_rejected_logps
        return self.config.beta * (chosen - rejected)

    def loss(self, pairs: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        margin = self.margin(pairs)
        return -F.logsigmoid(margin), {"margin": margin.detach(), "accuracy": (margin > 0).float().detach()}


@dataclass
class POWERConfig:
    beta: float = field(default=2.0, metadata={"help": "β of the weighted-entropy reward (spec's example; unverified)"})
    sft_weight: float = field(default=0.5, metadata={
        "help": "η, weight of the robustness term −log π(y⁺)/|y⁺| (spec's example; unverified)"})
    length_margin: bool = field(default=True, metadata={"help": "add β(1/|y⁺| − 1/|y⁻|) to the margin"})
    label_rate: float = field(default=0.1, metadata={
        "help": "γ of the dynamic labels, l ← (1−γ)l + γσ(h); 0 keeps the labels fixed (POWER without DL)"})

    def __post_init__(self):
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight must be >= 0, got {self.sft_weight}")
        if not 0 <= self.label_rate <= 1:
            raise ValueError(f"label_rate must be in [0, 1], got {self.label_rate}")


@preference_loss("power")
class POWER:
    """POWER with dynamic labels (POWER-DL; ``label_rate: 0`` is POWER alone); see the module docstring."""

    config_class = POWERConfig
    needs_reference = False
    dynamic_labels = True

    def __init__(self, config: POWERConfig):
        self.config = config

    def margin(self, pairs: PairBatch) -> torch.Tensor:
        config = self.config
        chosen_len, rejected_len = pairs.chosen_lengths.to(pairs.chosen_logps), pairs.rejected_lengths.to(
            pairs.chosen_logps)
        h = config.beta * (pairs.chosen_logps / chosen_len - pairs.rejected_logps / rejected_len)
        if config.length_margin:
            h = h + config.beta * (1 / chosen_len - 1 / rejected_len)
        return h

    def loss(self, pairs: PairBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.margin(pairs)
        labels = torch.ones_like(h) if pairs.labels is None else pairs.labels.to(h)
        preference = -(labels * F.logsigmoid(h) + (1 - labels) * F.logsigmoid(-h))
        sft = self.config.sft_weight * (-pairs.chosen_logps / pairs.chosen_lengths.to(h))
        return preference + sft, {"margin": h.detach(), "accuracy": (h > 0).float().detach(),
                                  "preference_loss": preference.detach(), "sft_loss": sft.detach()}

    def next_labels(self, pairs: PairBatch) -> torch.Tensor:
        """The pairs' labels after this use (detached), moved toward σ(h)."""
        with torch.no_grad():
            h = self.margin(pairs)
            labels = torch.ones_like(h) if pairs.labels is None else pairs.labels.to(h)
            return dynamic_label_update(labels, h, self.config.label_rate)


def dynamic_label_update(labels: torch.Tensor, margin: torch.Tensor, rate: float) -> torch.Tensor:
    """l ← (1 − γ)·l + γ·σ(h): each pair's label toward its stationary value σ(h)."""
    return (1 - rate) * labels + rate * torch.sigmoid(margin.detach())


def preference_loss_from_config(name: str, params: dict) -> "DPO | POWER":
    """The registered loss ``name`` built with its config dataclass from ``params`` (checked)."""
    cls = preference_losses.get(name)
    return cls(_build(cls, name, params))


def check_preference_params(name: str, params: dict) -> None:
    """What :func:`preference_loss_from_config` checks, without building the loss."""
    _build(preference_losses.get(name), name, params)


def _build(cls, name: str, params: dict):
    from rlkit.objectives.base import build_config

    return build_config(cls.config_class, params, owner=f"preference loss {name!r}")
