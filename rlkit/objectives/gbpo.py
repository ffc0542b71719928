"""GBPO: Group-relative Bounded Policy Optimization (Ao et al., 2026, "Bounded Ratio Reinforcement Learning").

BPO does not clip a surrogate as PPO does: it regresses the ratio ρ onto the analytic optimum of the
bounded-ratio problem, ρ* = 1 ± ε, with an |advantage|-weighted absolute (total-variation) error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rlkit.advantages import group_relative
from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer, token_means
from rlkit.objectives.base import Objective, PolicyBatch, StepStats, per_token
from rlkit.plugins import advantage_estimator, objective, policy_loss


@dataclass
class GBPOConfig:
    epsilon: float = field(default=0.3, metadata={
        "help": "lower ratio bound ε_low: completions below the group median are regressed to ρ* = 1-epsilon "
                "(0.3 in the paper's code, for MuJoCo/Atari BPO and LLM GBPO alike)"})
    epsilon_high: float | None = field(default=None, metadata={
        "help": "upper ratio bound ε_high: completions above the group median are regressed to "
                "ρ* = 1+epsilon_high (None = epsilon)"})
    loss_type: str = field(default="dapo", metadata={
        "help": "aggregation, as GRPO's: dapo (token sum / loss tokens of the step; the paper's code uses this "
                "token mean), grpo (token mean per sequence, then mean over sequences), "
                "dr_grpo (token sum / (sequences x max_completion_length))"})
    scale_rewards: bool = field(default=True, metadata={
        "help": "divide group-centred rewards by the group's std + 1e-4 for the weight |A_i| "
                "(False = Dr. GRPO's centring only)"})
    advantage_estimator: str = field(default="gbpo_median", metadata={
        "help": "advantage estimator (rlkit list estimators): gbpo_median (sign from the group median, "
                "weight |A_i|) by default; another one's sign then picks the bound"})

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of: {', '.join(LOSS_TYPES)}")
        if not 0 < self.epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1) so that the lower target 1-epsilon is a positive "
                             f"ratio below 1, got {self.epsilon}")
        if self.epsilon_high is not None and not self.epsilon_high > 0:
            raise ValueError(f"epsilon_high must be > 0 (or None for epsilon), got {self.epsilon_high}")


@advantage_estimator("gbpo_median")
def gbpo_median_estimator(rewards: torch.Tensor, config: Any) -> torch.Tensor:
    """GBPO's signed weights (:func:`signed_weights`), scaled as ``config.scale_rewards`` says."""
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


@policy_loss("bounded_ratio")
def per_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, weights: torch.Tensor,
                   eps_low: float, eps_high: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ℓ_t = |w| · |ρ_t − ρ*| with ρ* = 1+ε_high (w > 0) or 1−ε_low (w < 0), and per-token diagnostics.

    ``weights`` is ``[B]`` (one w per sequence) or ``[B, T]``; tensors over tokens are ``[B, T]``.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    w = per_token(weights).to(ratio.dtype)
    target = torch.where(w > 0, ratio.new_tensor(1 + eps_high), ratio.new_tensor(1 - eps_low)).expand_as(ratio)
    loss = w.abs() * (ratio - target).abs()
    ratio = ratio.detach()
    # "at the bound": the ratio has reached its target, so the gradient stops pushing it further
    # (at ρ = ρ* it is zero; beyond, it pulls the ratio back, where PPO's clip would only zero it)
    at_high = ((w > 0) & (ratio >= target)).float()
    at_low = ((w < 0) & (ratio <= target)).float()
    parts = {"bound_fraction_high": at_high, "bound_fraction_low": at_low,
             "bound_fraction": at_high + at_low, "ratio_mean": ratio,
             "outside_bounds_fraction": ((ratio > 1 + eps_high) | (ratio < 1 - eps_low)).float(),
             "zero_weight_fraction": (w == 0).float().expand_as(ratio)}
    return loss, parts


@objective("gbpo")
class GBPO(Objective):
    """Group-relative Bounded Policy Optimization (BRRL, Ao et al., 2026, arXiv 2604.18578).

    BRRL's bounded-ratio problem, max_π E_{π_0}[ρ·A] s.t. 1−ε ≤ ρ = π/π_0 ≤ 1+ε, has the analytic
    optimum ρ* = 1 + ε·sgn(Q − μ), μ the median of Q under π_0 (paper Thm 4.1; project page). BPO
    fits π_θ to it by minimizing the advantage-weighted total variation E[|A|·|ρ − ρ*|]; GBPO takes
    the group of G completions of a prompt as the samples of π_0. For prompt q with rewards r_i and
    token t of o_i:

        A_i     = (r_i − mean_j r_j) / (std_j r_j + 1e-4)           (no division when scale_rewards=False)
        Ã_i     = r_i − median_j r_j                               (median advantage: sets the bound)
        w_i     = sgn(Ã_i) · |A_i|                                 (what compute_advantages returns)
        ρ_{i,t} = exp(log π_θ(o_{i,t}) − log π_old(o_{i,t}))
        ρ*_i    = 1 + ε_high if w_i > 0,   1 − ε_low if w_i < 0
        ℓ_{i,t} = |w_i| · |ρ_{i,t} − ρ*_i|

    aggregated as GRPO's ``loss_type`` (dapo: Σ ℓ / Σ|o_i|; grpo: 1/N Σ_i mean_t ℓ; dr_grpo:
    Σ ℓ / (N·L_max)). On-policy (ρ = 1) the gradient w.r.t. log π is −w_i per token.

    Decisions. The paper's body was not available: the optimum and its median threshold are from the
    project page (bounded-ratio-rl.github.io/brrl), the rest from the authors' code
    (github.com/bounded-ratio-rl/bounded_ratio_rl), whose BPO (``src/sb3/BPO.py``) has the same form.
    - Target and weight: ``compute_policy_loss_gbpo`` in ``src/verl/trainer/ppo/core_algos.py`` uses
      ρ* = 1 − ε_low + (ε_low+ε_high)·σ(Ã/((std+1e-6)·λ)) and loss |ρ − ρ*|·|A|: the weight from the
      mean-centred A, the target from the median-centred Ã; the LLM scripts set λ = 1e-4, which
      makes σ a step. rlkit takes that step exactly (no temperature): PolicyBatch carries one number
      per sequence, so the sign of w carries the side of the bound and |w| the weight.
    - Completions exactly at the median (Ã = 0; e.g. the majority answer of a 0/1 group) get w = 0.
      The authors' code gives them target 1 + (ε_high−ε_low)/2 with weight |A|; with ε_low = ε_high
      on-policy that term has zero gradient (ρ = 1 = ρ*), so only off-policy runs (ratio ≠ 1)
      would differ.
    - Aggregation: verl's default ``loss_agg_mode: token-mean`` (rlkit's dapo), as in the authors' runs.
    - ε = 0.3 both sides: the README's GBPO table and ``ttrl/*/*.sh`` (``CLIP_RATIO_LOW/HIGH=0.3``).
    - The median is the interpolated one (``torch.quantile(·, 0.5)``), as in the authors' code.
    - The authors ran 5-10 PPO epochs per batch; rlkit steps once per batch, so on-policy GBPO is a
      policy gradient with weight w_i and the bounds act only off-policy (``rollout.max_staleness > 0``).
    """

    name = "gbpo"
    config_class = GBPOConfig

    def zero_advantage_is_inert(self) -> bool:
        return True  # ℓ = |w|·|ρ − ρ*| is exactly 0, and so is its gradient, when w = 0

    def bounds(self) -> tuple[float, float]:
        """(ε_low, ε_high)."""
        high = self.config.epsilon if self.config.epsilon_high is None else self.config.epsilon_high
        return self.config.epsilon, high

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        eps_low, eps_high = self.bounds()
        loss, parts = per_token_loss(batch.logprobs, batch.old_logprobs, batch.advantages, eps_low, eps_high)
        mask = batch.mask.to(loss.dtype)
        return aggregate(loss, mask, self.config.loss_type), token_means(parts, mask)

    def normalizer(self, stats: StepStats) -> float:
        return step_normalizer(self.config.loss_type, stats)
