"""GBPO: Group-relative Bounded Policy Optimization (Ao et al., 2026, "Bounded Ratio Reinforcement Learning").

BPO does not clip a surrogate as PPO does: it regresses the ratio ρ onto the analytic optimum of the
bounded-ratio problem, a target ρ* in [1 − ε_low, 1 + ε_high], with an |advantage|-weighted absolute
(total-variation) error. Defaults reproduce the authors' code (docs/objectives/gbpo.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlkit.advantages import group_relative
from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer, token_means
from rlkit.objectives.base import Objective, PolicyBatch, StepStats, per_token
from rlkit.objectives.losses import k3_kl
from rlkit.plugins import advantage_estimator, objective, policy_loss

TARGET = "gbpo_target"  # the estimator's extra: the median-centred, std-scaled reward that sets ρ*
MAX_LOG_RATIO = 20.0  # the official code clamps log ρ to ±20 before exp, as verl does for PPO
STD_EPS = 1e-6  # the official estimator divides by std + 1e-6 (GRPO's in rlkit is + 1e-4, as TRL)


@dataclass
class GBPOConfig:
    epsilon: float = field(default=0.2, metadata={
        "help": "ε_low: the lowest target ratio is 1-epsilon (the official default and the scripts that run "
                "GBPO; the README's 0.3 is in scripts that run GRPO)"})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "ε_high: the highest target ratio is 1+epsilon_high (None = epsilon)"})
    temperature: float = field(default=1.0, metadata={
        "help": "λ of the soft target ρ* = 1-ε_low + (ε_low+ε_high)·σ(t/λ), t the median-centred scaled reward "
                "(the official gbpo_temperature: 1.0, 1e-4 in Qwen2.5-Math/math.sh); 0 = the step limit "
                "(ρ* = 1±ε by the side of the median, 1 at the median)"})
    beta: float = field(default=0.001, metadata={
        "help": "weight of the k3 KL to the reference model, with verl's low_var_kl clamps (every official "
                "script sets use_kl_loss with 0.001); 0 = no KL and no reference model"})
    loss_type: str = field(default="dapo", metadata={
        "help": "aggregation, as GRPO's: dapo (token sum / loss tokens of the step; the official token-mean), "
                "grpo (token mean per sequence, then mean over sequences), "
                "dr_grpo (token sum / (sequences x max_completion_length))"})
    scale_rewards: bool = field(default=True, metadata={
        "help": "divide the centred rewards by the group's std + 1e-6, in the weight and the target alike "
                "(the official norm_adv_by_std_in_grpo)"})
    advantage_estimator: str = field(default="gbpo_median", metadata={
        "help": "advantage estimator (rlkit list estimators): gbpo_median (the official: weight from the mean, "
                "target from the median) by default; gbpo_signed is rlkit's step reading (signed weights); "
                "with any other, the advantage's sign picks the bound"})

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of: {', '.join(LOSS_TYPES)}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1) so that the lower target 1-epsilon is a positive "
                             f"ratio below 1, got {self.epsilon}")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise ValueError(f"epsilon_high must be > 0 (or None for epsilon), got {self.epsilon_high}")
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = the step target), got {self.temperature}")
        if not self.beta >= 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


@advantage_estimator("gbpo_median")
def gbpo_median_estimator(rewards: torch.Tensor, config: Any) -> dict[str, torch.Tensor]:
    """The official estimator: per group, with σ the unbiased std (+ 1e-6; no division when
    ``scale_rewards`` is False) and m the interpolated median,

        A_i = (r_i − mean_j r_j) / σ      (the weight |A_i|)
        t_i = (r_i − m) / σ               (sets the target ρ*_i; the loss divides it by λ)
    """
    advantages = group_relative(rewards, scale=False)  # checks the shape and G >= 2
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    median = torch.quantile(rewards, 0.5, dim=1, keepdim=True)
    spread = rewards.std(dim=1, keepdim=True) + STD_EPS if getattr(config, "scale_rewards", True) else 1.0
    return {"advantages": advantages / spread, TARGET: (rewards - median) / spread}


@advantage_estimator("gbpo_signed")
def gbpo_signed_estimator(rewards: torch.Tensor, config: Any) -> torch.Tensor:
    """rlkit's step reading (:func:`signed_weights`): one signed number per completion, the sign
    from the median and the magnitude GRPO's |A_i| (std + 1e-4); 0 at the median."""
    return signed_weights(rewards, scale=getattr(config, "scale_rewards", True))


def signed_weights(rewards: torch.Tensor, scale: bool = True) -> torch.Tensor:
    """``[num_groups, G]`` rewards -> w_i = sgn(r_i − median_j r_j) · |A_i|, A_i GRPO's advantage.

    The sign says which bound the completion's target ratio sits on (BRRL's threshold is the
    median, not the mean); the magnitude is the group-relative advantage that weights the loss.
    The median is ``torch.quantile(·, 0.5)``: the mean of the two middle rewards when G is even.
    """
    advantages = group_relative(rewards, scale=scale)  # checks the shape and G >= 2
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    median = torch.quantile(rewards, 0.5, dim=1, keepdim=True)
    return torch.sign(rewards - median).to(advantages.dtype) * advantages.abs()


def target_ratio(target_adv: torch.Tensor, eps_low: float, eps_high: float, temperature: float) -> torch.Tensor:
    """ρ* = 1 − ε_low + (ε_low + ε_high)·σ(t/λ); λ = 0 is the step limit (σ → 1, 0, or ½ at t = 0)."""
    if temperature > 0:
        side = torch.sigmoid(target_adv / temperature)
    else:
        side = (torch.sign(target_adv) + 1) / 2
    return 1 - eps_low + (eps_low + eps_high) * side


@policy_loss("bounded_ratio")
def per_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, weights: torch.Tensor,
                   eps_low: float, eps_high: float,
                   target: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ℓ_t = |w| · |ρ_t − ρ*|, ρ_t = exp(clamp(log π_θ − log π_old, ±20)), and per-token diagnostics.

    ``weights`` is ``[B]`` (one per sequence) or ``[B, T]``. ``target`` is ρ* per sequence (or
    token); without it, ρ* = 1+ε_high where w > 0 and 1−ε_low where w < 0 (the step target of a
    signed weight).
    """
    ratio = torch.exp((logprobs - old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))
    w = per_token(weights).to(ratio.dtype)
    if target is None:
        target = torch.where(w > 0, ratio.new_tensor(1 + eps_high), ratio.new_tensor(1 - eps_low))
    target = per_token(target).to(ratio.dtype).expand_as(ratio)
    loss = w.abs() * (ratio - target).abs()
    ratio = ratio.detach()
    # "at the bound": the ratio has reached its target on the side the target sits, so the gradient
    # stops pushing it further (at ρ = ρ* it is zero; beyond, it pulls back, where PPO's clip would
    # only zero it)
    at_high = ((target > 1) & (ratio >= target) & (w != 0)).to(ratio.dtype)
    at_low = ((target < 1) & (ratio <= target) & (w != 0)).to(ratio.dtype)
    parts = {"bound_fraction_high": at_high, "bound_fraction_low": at_low,
             "bound_fraction": at_high + at_low, "ratio_mean": ratio,
             "outside_bounds_fraction": ((ratio > 1 + eps_high) | (ratio < 1 - eps_low)).to(ratio.dtype),
             "zero_weight_fraction": (w == 0).to(ratio.dtype).expand_as(ratio)}
    return loss, parts


@objective("gbpo")
class GBPO(Objective):
    """Group-relative Bounded Policy Optimization (BRRL, Ao et al., 2026, arXiv 2604.18578).

    BRRL's bounded-ratio problem, max_π E_{π_0}[ρ·A] s.t. 1−ε ≤ ρ = π/π_0 ≤ 1+ε, has the analytic
    optimum ρ* = 1 + ε·sgn(Q − μ), μ the median of Q under π_0 (paper Thm 4.1; project page). BPO
    fits π_θ to it by minimizing the advantage-weighted total variation E[|A|·|ρ − ρ*|]; GBPO takes
    the group of G completions of a prompt as the samples of π_0, and the official code smooths the
    step with a sigmoid of temperature λ. For prompt q with rewards r_i, σ = std_j r_j + 1e-6:

        A_i     = (r_i − mean_j r_j) / σ                     (the weight)
        t_i     = (r_i − median_j r_j) / σ                   (the side of the median)
        ρ*_i    = 1 − ε_low + (ε_low + ε_high) · sigmoid(t_i / λ)
        ρ_{i,t} = exp(clamp(log π_θ(o_{i,t}) − log π_old(o_{i,t}), −20, 20))
        ℓ_{i,t} = |A_i| · |ρ_{i,t} − ρ*_i|  +  β · k3(π_θ ‖ π_ref)

    aggregated as GRPO's ``loss_type`` (dapo by default: the official token mean).

    Defaults are the authors' code (``bounded-ratio-rl/bounded_ratio_rl``,
    ``src/verl/trainer/ppo/core_algos.py``: ``compute_gbpo_outcome_advantage_and_target``,
    ``compute_policy_loss_gbpo``; the LLM scripts under ``ttrl/``): ε = 0.2 both sides and λ = 1
    (the config defaults, which the scripts that run GBPO keep; ``Qwen2.5-Math/math.sh`` sets
    λ = 1e-4), the ±20 clamp, and the KL loss every script turns on (0.001, ``low_var_kl``).
    rlkit's own variant, named options: ``temperature: 0`` (the exact step, the λ → 0 limit) and
    ``advantage_estimator: gbpo_signed`` (one signed weight per completion, 0 at the median, GRPO's
    std + 1e-4); with ``beta: 0`` no reference model is loaded. On-policy (ρ = 1) with symmetric ε
    the gradient w.r.t. log π is −|A_i|·sgn(ρ*_i − 1) per token, so the weight of a completion at the
    median vanishes only through ρ* = 1.
    """

    name = "gbpo"
    config_class = GBPOConfig

    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def zero_advantage_is_inert(self) -> bool:
        return self.config.beta == 0  # ℓ = |A|·|ρ − ρ*| is exactly 0, with its gradient, when A = 0

    def bounds(self) -> tuple[float, float]:
        """(ε_low, ε_high)."""
        high = self.config.epsilon if self.config.epsilon_high is None else self.config.epsilon_high
        return self.config.epsilon, high

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        eps_low, eps_high = self.bounds()
        target_adv = (batch.advantage_extras or {}).get(TARGET)
        target = None if target_adv is None else target_ratio(target_adv, eps_low, eps_high, self.config.temperature)
        loss, parts = per_token_loss(batch.logprobs, batch.old_logprobs, batch.advantages, eps_low, eps_high, target)
        if self.config.beta > 0:
            if batch.ref_logprobs is None:
                raise ValueError("beta > 0 needs ref_logprobs in the batch")
            kl, kl_parts = k3_kl(batch.logprobs, batch.ref_logprobs, clamp=True)
            loss = loss + self.config.beta * kl
            parts.update(kl_parts)
        mask = batch.mask.to(loss.dtype)
        return aggregate(loss, mask, self.config.loss_type), token_means(parts, mask)

    def normalizer(self, stats: StepStats) -> float:
        return step_normalizer(self.config.loss_type, stats)
