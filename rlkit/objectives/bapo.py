"""BAPO: PPO-style clipping whose bounds are searched per batch to balance positive and negative tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer, token_means
from rlkit.objectives.base import Objective, PolicyBatch, StepStats
from rlkit.objectives.losses import clipped_surrogate
from rlkit.plugins import objective

CONTRIBUTIONS = ("gradient", "surrogate")
SEARCH_ORDERS = ("lower_first", "upper_first")
MAX_LOG_RATIO = 20.0  # exp(±20) stays finite: a replayed token far off-policy cannot overflow the ratio


@dataclass
class BAPOConfig:
    # Defaults: the authors' verl port (WooooDyy/BAPO, recipe/bapo: policy_loss.py and the shipped
    # config/bapo_trainer.yaml). The paper's reading (Eq. 5/8, Algorithm 1) is a set of options.
    positive_share_target: float = field(default=0.5, metadata={
        "help": "ρ0: the share P/(P+N) of the loss contribution that positive-advantage tokens must reach; "
                "0.5 is the port's P/N target of 1 (a P/N target t is the share t/(1+t)); the paper uses 0.4"})
    clip_low_start: float = field(default=0.6, metadata={
        "help": "a−: the lower ratio bound c_low every search starts from"})
    clip_low_max: float = field(default=0.8, metadata={
        "help": "b−: the highest c_low the search may reach (must be < 1; the paper: 0.9)"})
    clip_low_step: float = field(default=0.05, metadata={"help": "δ2: the step c_low is raised by (the paper: 0.02)"})
    clip_high_start: float = field(default=1.2, metadata={
        "help": "a+: the upper ratio bound c_high every search starts from (must be > 1)"})
    clip_high_max: float = field(default=2.0, metadata={
        "help": "b+: the highest c_high the search may reach (the paper: 3.0)"})
    clip_high_step: float = field(default=0.05, metadata={"help": "δ1: the step c_high is raised by"})
    contribution: str = field(default="surrogate", metadata={
        "help": "what a token contributes to ρ: surrogate (|clipped surrogate| on every token: Eq. 8 and the port) "
                "or gradient (rlkit's reading of Eq. 5: |A|·r on tokens the clip leaves a gradient)"})
    weight_by_rollout_prob: bool = field(default=False, metadata={
        "help": "weight each token's contribution by π_old(token), as Eq. 8 prints it (the port does not)"})
    search_order: str = field(default="lower_first", metadata={
        "help": "lower_first (the port: c_low is raised to the target or its max, then c_high) or upper_first "
                "(the paper's Algorithm 1: c_high first, then c_low)"})
    reduce_over_ranks: bool = field(default=True, metadata={
        "help": "sum P and N over the data-parallel learner ranks before comparing, so every rank picks the "
                "same bounds (the port); false: each rank searches on its own micro-batch"})
    dual_clip: float | None = field(default=3.0, metadata={
        "help": "c: a negative-advantage token's loss is capped at -c·A (the port's verl clip_ratio_c); None = off"})
    loss_type: str = field(default="dapo", metadata={
        "help": "aggregation, as GRPO's: grpo (token mean per sequence, then mean over sequences), "
                "dapo (token sum / loss tokens of the step: the port's token-mean), "
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
        if self.search_order not in SEARCH_ORDERS:
            raise ValueError(f"search_order {self.search_order!r} is not one of: {', '.join(SEARCH_ORDERS)}")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be > 1 (or None for no cap), got {self.dual_clip}")
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
    """start, start+step, ... and then stop itself: the values a bound takes when each move is
    ``c = min(c + step, stop)``, as the port moves it (no float drift past stop)."""
    count = math.floor((stop - start) / step + 1e-9)
    grid = [min(round(start + k * step, 12), stop) for k in range(count + 1)]
    return grid if grid[-1] >= stop - 1e-12 else grid + [stop]


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
                       weight: torch.Tensor | None = None,
                       reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ClipBounds:
    """Algorithm 1's bound search on one batch of tokens (detached; one host sync).

    ``ratio``, ``mask``, ``weight`` are ``[B, T]``; ``advantages`` is ``[B]`` or ``[B, T]``.
    Every candidate's P(c_high) and N(c_low) is computed at once (P depends only on c_high, N only
    on c_low), summed over ranks by ``reduce`` when given (one collective), and the walk is read
    off them. ``search_order`` lower_first walks c_low up its grid with c_high = a+, then c_high up
    with c_low at its last value; upper_first the other way round. The walk stops at the first
    point where ρ >= ρ0, or at its end.
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
    if reduce is not None:
        positive, negative = reduce(torch.cat([positive, negative])).split([len(highs), len(lows)])
    if config.search_order == "upper_first":  # (a−, highs[0..]) then (lows[1..], highs[-1])
        walk = [(0, h) for h in range(len(highs))] + [(lo, len(highs) - 1) for lo in range(1, len(lows))]
    else:  # (lows[0..], a+) then (lows[-1], highs[1..])
        walk = [(lo, 0) for lo in range(len(lows))] + [(len(lows) - 1, h) for h in range(1, len(highs))]
    low_index = torch.tensor([lo for lo, _ in walk])
    high_index = torch.tensor([h for _, h in walk])
    walk_p, walk_n = positive[high_index], negative[low_index]
    total = walk_p + walk_n
    rho = torch.where(total > 0, walk_p / total.clamp(min=1e-300), torch.ones_like(total))
    unmet = rho < config.positive_share_target
    index = unmet.long().cumprod(0).sum().clamp(max=len(rho) - 1)  # first point that meets ρ0, else the last
    idx, p, n, p0, n0 = torch.stack([index.double(), walk_p[index], walk_n[index], walk_p[0], walk_n[0]]).tolist()
    low, high = walk[int(idx)]
    return ClipBounds(clip_low=lows[low], clip_high=highs[high], positive=p, negative=n,
                      initial_positive=p0, initial_negative=n0)


def sum_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the data-parallel ranks (itself when torch.distributed is not running)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    summed = values.clone()
    if dist.get_backend() == "nccl" and not summed.is_cuda:  # NCCL reduces GPU tensors only
        summed = summed.cuda()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(values.device)


def policy_ratio(batch: PolicyBatch) -> torch.Tensor:
    """r = π_θ / π_old per token (log-ratio clamped to ±20 first, as verl and the official port do)."""
    return torch.exp((batch.logprobs - batch.old_logprobs).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO))


def per_token_loss(batch: PolicyBatch, clip_low: float, clip_high: float,
                   dual_clip: float | None = None) -> tuple[torch.Tensor, dict]:
    """ℓ_t = −min(r_t·A, clip(r_t, c_low, c_high)·A), capped at −c·A for A < 0 when ``dual_clip``
    is given (r's log clamped to ±20), and per-token diagnostics."""
    return clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages, clip_low, clip_high,
                             max_log_ratio=MAX_LOG_RATIO, dual_clip=dual_clip)


@objective("bapo")
class BAPO(Objective):
    """BAPO (Xi et al., 2025, arXiv 2510.18927): clipped policy gradient with per-batch adaptive bounds.

    For token t of completion o_i (advantage A_i, GRPO's), π_old = ``old_logprobs`` (the behavior
    policy off-policy, the current weights on-policy), w_t = π_old(o_t) when weight_by_rollout_prob, else 1:

        r_t = exp(clamp(log π_θ(o_t) − log π_old(o_t), −20, 20))
        ℓ_t = −min(r_t·A_i, clip(r_t, c_low, c_high)·A_i),   at most −c·A_i when A_i < 0 (dual clip c)
        g_t = w_t·|min(r_t·A_i, clip(r_t, c_low, c_high)·A_i)|                 (contribution=surrogate)
        g_t = w_t·|A_i|·r_t·𝕀[A_i>0 & r_t<c_high  or  A_i<0 & r_t>c_low]      (contribution=gradient)
        ρ(c_low, c_high) = Σ_{A>0} g_t / Σ_{A≠0} g_t   (1 when the sum is 0)

    Before each micro-batch's loss: c_low = a−, c_high = a+; the sums are taken over every rank's
    micro-batch of the same index (reduce_over_ranks); then, lower_first (the port): raise c_low by
    δ2 until ρ >= ρ0 or c_low = b−, then c_high by δ1 until ρ >= ρ0 or c_high = b+; upper_first
    (Algorithm 1): c_high first, then c_low. The loss is aggregated by ``loss_type`` as GRPO's.

    Defaults reproduce the authors' verl port (WooooDyy/BAPO ``recipe/bapo/policy_loss.py`` and its
    shipped ``config/bapo_trainer.yaml``): surrogate contribution without π_old weights, ρ0 = 0.5
    as a share (the port's P/N target 1), c_low 0.6→0.8 and c_high 1.2→2.0 in steps of 0.05, lower
    bound first, P and N all-reduced over data-parallel ranks, dual clip c = 3, ±20 log-ratio
    clamp, token-mean aggregation, no KL. Notes (docs/objectives/bapo.md has the whole account):
    - Under surrogate contributions raising c_low can only raise N (a clipped negative token counts
      c_low·|A|), so the port's first loop never meets the target: c_low ends at b− whenever the
      start misses ρ0, and c_high does the work. That is the port's behaviour, kept as its default.
    - The paper's reading is a set of options: ``contribution: gradient`` (rlkit's reading of Eq. 5
      and §4.2, "filters out more low-probability negative tokens": only tokens the clip leaves a
      gradient count, so both moves raise ρ), ``weight_by_rollout_prob: true`` (Eq. 8's π_rollout
      factor), ``search_order: upper_first`` (Algorithm 1), ρ0 0.4 and ranges [0.6, 0.9] step 0.02,
      [1.2, 3.0] step 0.05 (§5.1), ``dual_clip: null``.
    - A move is c = min(c + δ, b), so b is always reached (the port's loop); every search restarts
      from (a−, a+), so no bound carries over and ``state_dict`` only keeps the last logged values.
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

    def micro_batches_in_lockstep(self) -> bool:
        return self.config.reduce_over_ranks  # P and N are all-reduced in every micro-batch's loss

    def search(self, batch: PolicyBatch) -> ClipBounds:
        """The bounds for this micro-batch, from its own detached ratios, advantages and π_old."""
        with torch.no_grad():
            weight = torch.exp(batch.old_logprobs) if self.config.weight_by_rollout_prob else None
            reduce = sum_over_ranks if self.config.reduce_over_ranks else None
            return search_clip_bounds(policy_ratio(batch), batch.advantages, batch.mask, self.config, weight, reduce)

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        bounds = self.search(batch)
        if bounds.positive + bounds.negative > 0:  # an all-zero-advantage batch tells nothing
            self._searches.append(bounds)
        loss, parts = per_token_loss(batch, bounds.clip_low, bounds.clip_high, self.config.dual_clip)
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
