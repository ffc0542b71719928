"""GRPO with TRL's knobs: clipping (with DAPO's clip-higher), k3 KL, three loss aggregations."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer, token_means
from rlkit.objectives.base import Objective, PolicyBatch, StepStats
from rlkit.objectives.losses import clipped_surrogate, k3_kl
from rlkit.plugins import objective



@dataclass
class GRPOConfig:
    epsilon: float = field(default=0.2, metadata={
        "help": "lower clip range ε_low: the ratio is clipped to [1-epsilon, 1+epsilon_high]"})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "upper clip range ε_high (None = epsilon); DAPO's clip-higher uses 0.28"})
    beta: float = field(default=0.0, metadata={
        "help": "weight of the k3 KL to the reference model (0 = no KL term and no reference model loaded)"})
    loss_type: str = field(default="grpo", metadata={
        "help": "aggregation: grpo (token mean per sequence, then mean over sequences), "
                "dapo (token sum / loss tokens of the step), dr_grpo (token sum / (sequences x max_completion_length))"})
    scale_rewards: bool = field(default=True, metadata={
        "help": "divide group-centred rewards by the group's std + 1e-4, as TRL (False = Dr. GRPO)"})
    advantage_estimator: str = field(default="group_relative", metadata={
        "help": "advantage estimator (rlkit list estimators): group_relative (GRPO's, with scale_rewards), "
                "rloo, gbpo_median, trloo (turn level), or a plugin's"})

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of: {', '.join(LOSS_TYPES)}")
        if not 0 <= self.epsilon < 1:
            raise ValueError(f"epsilon must be in [0, 1), got {self.epsilon}")
        if self.epsilon_high is not None and self.epsilon_high < 0:
            raise ValueError(f"epsilon_high must be >= 0 (or None for epsilon), got {self.epsilon_high}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def per_token_loss(batch: PolicyBatch, config: GRPOConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ℓ_t = −min(ρ_t·A, clip(ρ_t, 1−ε_low, 1+ε_high)·A) + β·kl_t, and per-token diagnostics."""
    eps_low = config.epsilon
    eps_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
    loss, parts = clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages, 1 - eps_low, 1 + eps_high)
    return add_kl_penalty(loss, parts, batch, config.beta)


def add_kl_penalty(loss: torch.Tensor, parts: dict[str, torch.Tensor], batch: PolicyBatch,
                   beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``loss + β·k3(π_θ‖π_ref)`` per token (unchanged when β = 0), with the KL among the diagnostics."""
    if beta > 0:
        if batch.ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs in the batch")
        kl, kl_parts = k3_kl(batch.logprobs, batch.ref_logprobs)
        loss = loss + beta * kl
        parts.update(kl_parts)
    return loss, parts


@objective("grpo")
class GRPO(Objective):
    """Group Relative Policy Optimization, with TRL ``GRPOTrainer``'s loss types.

    For prompt q with G completions o_1..o_G, rewards r_i, token t of o_i (|o_i| = its loss tokens):

        A_i     = (r_i − mean_j r_j) / (std_j r_j + 1e-4)       (no division when scale_rewards=False)
        ρ_{i,t} = exp(log π_θ(o_{i,t}) − log π_old(o_{i,t}))
        δ_{i,t} = log π_ref(o_{i,t}) − log π_θ(o_{i,t}),   kl_{i,t} = exp(δ) − δ − 1     (k3)
        ℓ_{i,t} = −min(ρ·A_i, clip(ρ, 1−ε_low, 1+ε_high)·A_i) + β·kl_{i,t}

    and, with N sequences, Σ|o_i| loss tokens and L_max = max_completion_length over the step:

        grpo:    L = 1/N · Σ_i (1/|o_i|) Σ_t ℓ_{i,t}
        dapo:    L = 1/Σ_i|o_i| · Σ_i Σ_t ℓ_{i,t}
        dr_grpo: L = 1/(N·L_max) · Σ_i Σ_t ℓ_{i,t}

    ``loss_sum`` returns the numerator for one micro-batch, ``normalizer`` the denominator.
    """

    name = "grpo"
    config_class = GRPOConfig

    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def zero_advantage_is_inert(self) -> bool:
        return self.config.beta == 0  # ℓ = −min(ρA, clip(ρ)A) is 0 with its gradient when A = 0

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, parts = per_token_loss(batch, self.config)
        mask = batch.mask.to(loss.dtype)
        return aggregate(loss, mask, self.config.loss_type), token_means(parts, mask)

    def normalizer(self, stats: StepStats) -> float:
        return step_normalizer(self.config.loss_type, stats)


def batch_stats(batch: PolicyBatch) -> StepStats:
    """The StepStats of a batch taken as a whole step (L_max = its padded length T)."""
    num_sequences, max_length = batch.logprobs.shape
    return StepStats(num_sequences=num_sequences, num_tokens=int(batch.mask.sum()),
                     max_completion_length=max_length)


def grpo_loss(batch: PolicyBatch, config: GRPOConfig, stats: StepStats | None = None) -> torch.Tensor:
    """The normalized GRPO loss of a whole batch: ``loss_sum / normalizer`` (tests, TRL integration)."""
    grpo = GRPO(config)
    loss, _ = grpo.loss_sum(batch)
    return loss / grpo.normalizer(stats if stats is not None else batch_stats(batch))
