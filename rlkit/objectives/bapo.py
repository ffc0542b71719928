"""BAPO: PPO-style clipping whose bounds are searched per batch to balance positive and negative tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer, token_means
from rlkit.objectives.base import Objective, PolicyBatch, StepStats
from rlkit.objectives.losses import clipped_surrogate
from rlkit.plugins import objective

CONTRIBUTIONS = ("gradient", "surrogate")
MAX_LOG_RATIO = 20.0  # exp(±20) stays finite: a replayed token far off-policy cannot overflow the ratio


@dataclass
class BAPOConfig:
    positive_share_target: float = field(default=0.4, metadata={
        "help": "ρ0: the share of the loss contribution that positive-advantage tokens must reach (paper: 0.4)"})
    clip_low_start: float = field(default=0.6, metadata={
        "help": "a−: the lower ratio bound c_low every search starts from"})
    clip_low_max: float = field(default=0.9, metadata={
        "help": "b−: the highest c_low the search may reach (must be < 1)"})
    clip_low_step: float = field(default=0.02, metadata={"help": "δ2: the step c_low is raised by"})
    clip_high_start: float = field(default=1.2, metadata={
        "help": "a+: the upper ratio bound c_high every search starts from (must be > 1)"})
    clip_high_max: float = field(default=3.0, metadata={"help": "b+: the highest c_high the search may reach"})
    clip_high_step: float = field(default=0.05, metadata={"help": "δ1: the step c_high is raised by"})
    contribution: str = field(default="gradient", metadata={
        "help": "what a token contributes to ρ: gradient (|A|·r on tokens the clip leaves a gradient, "
                "paper Eq. 5) or surrogate (|clipped surrogate| on every token, Eq. 8 as printed)"})
    weight_by_rollout_prob: bool = field(default=True, metadata={
        "help": "weight each token's contribution by π_old(token), as in Eq. 8 (False = the official "
                "verl port, which weights tokens equally)"})
    loss_type: str = field(default="dapo", metadata={
        "help": "aggregation, as GRPO's: grpo (token mean per sequence, then mean over sequences), "
                "dapo (token sum / loss tokens of the step), "
                "dr_grpo (token sum / (sequences x max_completion_length))"})
    scale_rewards: bool = field(default=True, metadata={
        "help": "GRPO advantages: divide group-centred rewards by the group's std + 1e-4"})
    advantage_estimator: str = field(default="group_relative", metadata={
        "help": "advantage estimator (rlkit list estimators): group_relative (GRPO's) by default, e.g. rloo"})

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of: {', '.join(LOSS_TYPES)}")
        if self.contribution not in CONTRIBUTIONS:
            raise ValueError(f"contribution {self.contribution!r} is not one of: {', '.join(CONTRIBUTIONS)}")
        if not 0 <= self.positive_share_target <= 1:
            raise ValueError(f"positive_share_target must be in [0, 1], got {self.positive_share_target}")
        for name in ("clip_low_step", "clip_high_step"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.clip_low_start <= self.clip_low_max < 1:
            raise ValueError("need 0 <= clip_low_start <= clip_low_max < 1, got "
                             f"clip_low_start={self.clip_low_start}, clip_low_max={self.clip_low_max}")
        if not 1 < self.clip_high_start <= self.clip_high_max:
            raise ValueError("need 1 < clip_high_start <= clip_high_max, got "
                             f"clip_high_start={self.clip_high_start}, clip_high_max={self.clip_high_max}")


@dataclass
class ClipBounds:
    """One search's result; ``positive``/``negative`` are Σ contributions under the chosen bounds."""

    clip_low: float
    clip_high: float
    positive: float
    negative: float
    initial_positive: float  # the same sums under the start bounds (a−, a+)
    initial_negative: float

    @property
    def positive_share(self) -> float:
        return share(self.positive, self.negative)

    @property
    def initial_share(self) -> float:
        return share(self.initial_positive, self.initial_negative)


def share(positive: float, negative: float) -> float:
    """ρ = P / (P + N); 1 when nothing is negative (the target is met, nothing needs balancing)."""
    return positive / (positive + negative) if positive + negative > 0 else 1.0


def bound_grid(start: float, stop: float, step: float) -> list[float]:
    """start, start+step, ... while <= stop: the values a bound takes (no float drift past stop)."""
    count = math.floor((stop - start) / step + 1e-9)
    return [min(round(start + k * step, 12), stop) for k in range(count + 1)]


def _side_sums(ratio, magnitude, selected, bounds, upper: bool, mode: str) -> torch.Tensor:
    """Σ contribution of the selected tokens (one sign of A) for each candidate bound of their side."""
    sums = []
    for bound in bounds:
        if mode == "gradient":  # only tokens whose clipped term still depends on θ count
            kept = ratio < bound if upper else ratio > bound
            sums.append((magnitude * ratio * (selected & kept)).sum())
        else:  # |min(r·A, clip(r, c_low, c_high)·A)| = |A|·min(r, c_high) for A > 0, |A|·max(r, c_low) for A < 0
            clipped = ratio.clamp(max=bound) if upper else ratio.clamp(min=bound)
            sums.append((magnitude * clipped * selected).sum())
    return torch.stack(sums)


def search_clip_bounds(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, config: BAPOConfig,
                       weight: torch.Tensor | None = None) -> ClipBounds:
    """Algorithm 1's bound search on one batch of tokens (detached; one host sync).

    ``ratio``, ``mask``, ``weight`` are ``[B, T]``; ``advantages`` is ``[B]`` or ``[B, T]``.
    The search walks c_high up its grid with c_low = a−, then c_low up its grid with c_high at its
    last value, and stops at the first point where ρ >= ρ0 (or at the end of the walk).
    """
    ratio = ratio.detach().double()
    advantages = advantages.detach().double()
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    advantages = advantages.expand_as(ratio)
    magnitude = advantages.abs() * mask.detach().double()
    if weight is not None:
        magnitude = magnitude * weight.detach().double()
    highs = bound_grid(config.clip_high_start, config.clip_high_max, config.clip_high_step)
    lows = bound_grid(config.clip_low_start, config.clip_low_max, config.clip_low_step)
    positive = _side_sums(ratio, magnitude, advantages > 0, highs, True, config.contribution)  # P(c_high)
    negative = _side_sums(ratio, magnitude, advantages < 0, lows, False, config.contribution)  # N(c_low)
    # the walk: (a−, highs[0..]) then (lows[1..], highs[-1]); P depends only on c_high, N only on c_low
    walk_p = torch.cat([positive, positive[-1:].expand(len(lows) - 1)])
    walk_n = torch.cat([negative[:1].expand(len(highs)), negative[1:]])
    total = walk_p + walk_n
    rho = torch.where(total > 0, walk_p / total.clamp(min=1e-300), torch.ones_like(total))
    unmet = rho < config.positive_share_target
    index = unmet.long().cumprod(0).sum().clamp(max=len(rho) - 1)  # first point that meets ρ0, else the last
    idx, p, n, p0, n0 = torch.stack([index.double(), walk_p[index], walk_n[index], walk_p[0], walk_n[0]]).tolist()
    idx = int(idx)
    low = lows[0] if idx < len(highs) else lows[idx - len(highs) + 1]
    return ClipBounds(clip_low=low, clip_high=highs[min(idx, len(highs) - 1)], positive=p, negative=n,
                      initial_positive=p0, initial_negative=n0)


def policy_ratio(batch: PolicyBatch) -> torch.Tensor:
    """r = π_θ / π_old per token (log-ratio clamped to ±20 first, as verl and the official port do)."""
    return torch.exp((batch.logprobs - batch.old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def per_token_loss(batch: PolicyBatch, clip_low: float, clip_high: float) -> tuple[torch.Tensor, dict]:
    """ℓ_t = −min(r_t·A, clip(r_t, c_low, c_high)·A) (r's log clamped to ±20), and per-token diagnostics."""
    return clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages, clip_low, clip_high,
                             max_log_ratio=MAX_LOG_RATIO)


@objective("bapo")
class BAPO(Objective):
    """BAPO (Xi et al., 2025, arXiv 2510.18927): clipped policy gradient with per-batch adaptive bounds.

    For token t of completion o_i (advantage A_i, GRPO's), π_old = ``old_logprobs`` (the behavior
    policy off-policy, the current weights on-policy), w_t = π_old(o_t) (1 if weight_by_rollout_prob=false):

        r_t = exp(clamp(log π_θ(o_t) − log π_old(o_t), −20, 20))
        ℓ_t = −min(r_t·A_i, clip(r_t, c_low, c_high)·A_i)
        g_t = w_t·|A_i|·r_t·𝕀[A_i>0 & r_t<c_high  or  A_i<0 & r_t>c_low]      (contribution=gradient)
        g_t = w_t·|min(r_t·A_i, clip(r_t, c_low, c_high)·A_i)|                 (contribution=surrogate)
        ρ(c_low, c_high) = Σ_{A>0} g_t / Σ_{A≠0} g_t   (1 when the sum is 0)

    Before each micro-batch's loss (Algorithm 1): c_low = a−, c_high = a+; while ρ < ρ0: raise c_high
    by δ1 if that stays <= b+, else raise c_low by δ2 if that stays <= b−, else stop. The loss is
    then aggregated by ``loss_type`` exactly as GRPO's (``loss_sum`` / ``normalizer``).

    Decisions (sources: paper §4.2 Eq. 5, Eq. 8, Algorithm 1, §5.1; official port WooooDyy/BAPO
    ``recipe/bapo/policy_loss.py``):
    - ρ is a share in [0, 1] (Eq. 8; ρ0 = 0.4, §5.1). The port targets P/N instead
      (``adv_ratio_target``); a P/N target t is the share t/(1+t).
    - contribution=gradient by default. Eq. 8 prints the clipped surrogate's value, under which a
      clipped negative token counts c_low·|A|, so raising c_low (Algorithm 1 line 15) *lowers* ρ and
      always runs to b−. Eq. 5 and §4.2 ("filters out more low-probability negative tokens") count
      only tokens that keep a gradient; with that reading both moves raise ρ. ``surrogate`` keeps
      Eq. 8 as printed, which is also what the port measures.
    - w_t = π_old(o_t) (Eq. 8's π_rollout factor; note w_t·r_t = π_θ(o_t), Eq. 5's factor). The port omits it.
    - Upper bound first, then lower (Algorithm 1 lines 12-15). The port raises the lower bound first.
    - Every search restarts from (a−, a+) (Algorithm 1 line 9, and the port); no bound carries
      over between batches, so ``state_dict`` only keeps the last logged values.
    - "The batch" is one ``loss_sum`` call: this rank's micro-batch, searched on its own detached
      ratios and advantages before its loss (the port searches per verl micro-batch too; it
      all-reduces P and N over data-parallel ranks, which an rlkit objective cannot).
    - Algorithm 1's loop also requires c_low + δ2 <= b−, which freezes c_high when a− = b−; here the
      walk stops only when neither bound can move (identical whenever a− + δ2 <= b−).
    - Bounds are a + k·δ, never past b; defaults are §5.1's. loss_type=dapo is the port's verl
      token-mean. No dual clip (verl's clip_ratio_c in the port, not in the paper) and no KL (§5.1: 0).
    """

    name = "bapo"
    config_class = BAPOConfig

    def __init__(self, config: BAPOConfig):
        super().__init__(config)
        # before any search: the start bounds, and ρ of an empty batch (share(0, 0) = 1)
        self._last = {"bapo_clip_low": config.clip_low_start, "bapo_clip_high": config.clip_high_start,
                      "bapo_positive_share": 1.0, "bapo_positive_share_initial": 1.0, "bapo_target_met": 1.0}
        self._searches: list[ClipBounds] = []

    def zero_advantage_is_inert(self) -> bool:
        return True  # A = 0 gives ℓ = 0 with zero gradient and no contribution to ρ

    def search(self, batch: PolicyBatch) -> ClipBounds:
        """The bounds for this micro-batch, from its own detached ratios, advantages and π_old."""
        with torch.no_grad():
            weight = torch.exp(batch.old_logprobs) if self.config.weight_by_rollout_prob else None
            return search_clip_bounds(policy_ratio(batch), batch.advantages, batch.mask, self.config, weight)

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        bounds = self.search(batch)
        if bounds.positive + bounds.negative > 0:  # an all-zero-advantage batch tells nothing
            self._searches.append(bounds)
        loss, parts = per_token_loss(batch, bounds.clip_low, bounds.clip_high)
        mask = batch.mask.to(loss.dtype)
        return aggregate(loss, mask, self.config.loss_type), token_means(parts, mask)

    def normalizer(self, stats: StepStats) -> float:
        return step_normalizer(self.config.loss_type, stats)

    def log_metrics(self) -> dict[str, float]:
        """The step's mean bounds and its achieved ρ (ΣP / Σ(P+N) over its searches); starts a new step.

        A step without a search (every group inert) repeats the previous values.
        """
        searches, self._searches = self._searches, []
        if searches:
            count = len(searches)
            positive, negative = sum(s.positive for s in searches), sum(s.negative for s in searches)
            self._last = {
                "bapo_clip_low": sum(s.clip_low for s in searches) / count,
                "bapo_clip_high": sum(s.clip_high for s in searches) / count,
                "bapo_positive_share": share(positive, negative),
                "bapo_positive_share_initial": share(sum(s.initial_positive for s in searches),
                                                     sum(s.initial_negative for s in searches)),
                "bapo_target_met": sum(s.positive_share >= self.config.positive_share_target
                                       for s in searches) / count,
            }
        return dict(self._last)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._last)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._last = {key: float(state.get(key, value)) for key, value in self._last.items()}
        self._searches = []
