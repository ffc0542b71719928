"""TRLOO: turn-level REINFORCE leave-one-out advantages for multi-turn episodes (Dr. Kernel).

Decisions, from the paper's abstract and its official code (hkust-nlp/KernelGYM, the
``trloo`` advantage estimator and the ``geometric`` rollout rejection of its 8B recipe):

* Returns are taken per turn, ``G_{i,t} = r_{i,t} + γ·G_{i,t+1}`` (γ = 1 by default); a turn the
  episode never reached has reward 0 and no advantage.
* The baseline of episode i at turn t is the mean return at turn t of the *other* episodes of its
  group that reached turn t. An episode alone at its turn keeps its return as advantage (no
  baseline can be formed), as the official code does. No division by a standard deviation.
* GRPO's self-inclusive baseline (``baseline: group_mean``) is kept for comparison: with n
  episodes at a turn it scales every advantage by (n−1)/n, and an episode alone at its turn gets
  advantage 0: the bias the paper removes.
* Mismatch correction: the rollout engine's log-probs and the learner's can differ (kernels,
  precision). Per episode, the geometric mean of the ratio π_learner/π_rollout over its model
  tokens must lie within [mismatch_low, mismatch_high], or the episode is left out of the loss;
  a token whose ratio falls under ``mismatch_veto`` leaves its turn out (the official code keeps
  each turn as a row of its own and vetoes rows). Rejection, not reweighting. The defaults are the
  paper recipe's (0.999, 1.001, 1e-4).
* The policy loss is the dual-clip surrogate with clip-higher (ε 0.2 / 0.28, c = 3, as the
  recipe), aggregated ``seq-mean-token-sum`` as the recipe: each episode's token sum, averaged
  over the step's episodes (officially over turn rows, with a constant denominator under dynamic
  batching; rlkit's episode count per step is a constant too, so the two differ by a constant).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.objectives.aggregation import LOSS_TYPES, aggregate, step_normalizer, token_means
from rlkit.objectives.base import Objective, PolicyBatch, StepStats
from rlkit.objectives.losses import clipped_surrogate
from rlkit.plugins import advantage_estimator, objective

BASELINES = ("leave_one_out", "group_mean")
MISMATCH_MODES = ("reject", "none")


@dataclass
class TRLOOConfig:
    gamma: float = field(default=1.0, metadata={"help": "discount of later turns' rewards in a turn's return"})
    baseline: str = field(default="leave_one_out", metadata={
        "help": "leave_one_out (TRLOO: the other episodes at the same turn) or group_mean (GRPO's "
                "self-inclusive baseline, for comparison)"})
    scale_by_std: bool = field(default=False, metadata={
        "help": "divide advantages by the std of the returns at the turn + 1e-4 (GRPO-style scaling; not in TRLOO)"})
    epsilon: float = field(default=0.2, metadata={"help": "lower clip range ε_low"})
    epsilon_high: float = field(default=0.28, metadata={"help": "upper clip range ε_high (clip-higher)"})
    loss_type: str = field(default="seq_mean_token_sum", metadata={
        "help": "aggregation: seq_mean_token_sum (each episode's token sum, averaged over the step's episodes: the "
                "official code's seq-mean-token-sum), dapo (token sum / loss tokens of the step), grpo or dr_grpo"})
    advantage_estimator: str = field(default="trloo", metadata={
        "help": "advantage estimator (rlkit list estimators): trloo (turn level, with gamma, baseline and "
                "scale_by_std) by default"})
    mismatch: str = field(default="reject", metadata={
        "help": "reject: leave out episodes whose rollout log-probs disagree with the learner's "
                "(geometric-mean ratio outside [mismatch_low, mismatch_high], or a token under "
                "mismatch_veto); none: no correction"})
    mismatch_low: float = field(default=0.999, metadata={"help": "lowest geometric-mean ratio kept"})
    mismatch_high: float = field(default=1.001, metadata={"help": "highest geometric-mean ratio kept"})
    mismatch_veto: float = field(default=1e-4, metadata={"help": "a token ratio under this rejects its turn"})
    dual_clip: float | None = field(default=3.0, metadata={
        "help": "c: a negative-advantage token's loss is capped at -c·A (verl's clip_ratio_c, as the recipe); "
                "None = no cap"})

    def __post_init__(self):
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline {self.baseline!r} is not one of: {', '.join(BASELINES)}")
        if self.mismatch not in MISMATCH_MODES:
            raise ValueError(f"mismatch {self.mismatch!r} is not one of: {', '.join(MISMATCH_MODES)}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r} is not one of: {', '.join(LOSS_TYPES)}")
        if not 0 <= self.gamma <= 1:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0 < self.mismatch_low <= 1 <= self.mismatch_high:
            raise ValueError("need 0 < mismatch_low <= 1 <= mismatch_high")
        if self.dual_clip is not None and not self.dual_clip > 1:
            raise ValueError(f"dual_clip must be > 1 (or None for no cap), got {self.dual_clip}")


def turn_returns(turn_rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = r_t + γ·G_{t+1}`` along the last dimension (turns)."""
    returns = torch.zeros_like(turn_rewards)
    running = torch.zeros_like(turn_rewards[..., 0])
    for t in reversed(range(turn_rewards.shape[-1])):
        running = turn_rewards[..., t] + gamma * running
        returns[..., t] = running
    return returns


def turn_advantages(turn_rewards: torch.Tensor, reached: torch.Tensor, config: TRLOOConfig) -> torch.Tensor:
    """``[num_groups, G, T]`` per-turn rewards -> per-turn advantages (0 on turns not reached).

    leave_one_out:  A_{i,t} = G_{i,t} − Σ_{j∈S_t, j≠i} G_{j,t} / (n_t − 1),   A_{i,t} = G_{i,t} if n_t = 1
    group_mean:     A_{i,t} = G_{i,t} − Σ_{j∈S_t} G_{j,t} / n_t

    and with ``scale_by_std`` either is divided by std_{j∈S_t} G_{j,t} + 1e-4 (unbiased std), except
    where n_t = 1: a lone episode has no spread to divide by and keeps its advantage.

    where S_t is the set of the group's episodes that reached turn t and n_t = |S_t|.
    """
    if turn_rewards.dim() != 3 or turn_rewards.shape != reached.shape:
        raise ValueError(f"turn rewards and reached must both be [num_groups, G, T], got "
                         f"{tuple(turn_rewards.shape)} and {tuple(reached.shape)}")
    reached = reached.to(torch.bool)
    weight = reached.to(turn_rewards.dtype)
    returns = turn_returns(turn_rewards * weight, config.gamma) * weight
    count = weight.sum(dim=1, keepdim=True)  # n_t per group and turn
    total = returns.sum(dim=1, keepdim=True)
    mean = total / count.clamp(min=1)
    if config.baseline == "leave_one_out":
        others = (count - 1).clamp(min=1)
        baseline = torch.where(count > 1, (total - returns) / others, torch.zeros_like(returns))
        advantages = (returns - baseline) * weight
    else:
        advantages = (returns - mean) * weight
    if config.scale_by_std:
        variance = (((returns - mean) * weight) ** 2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        # an episode alone at its turn has no spread to divide by: its advantage stays as it is
        # (dividing by the 1e-4 floor would multiply a lone TRLOO return by 10^4)
        spread = torch.where(count > 1, variance.sqrt() + 1e-4, torch.ones_like(variance))
        advantages = advantages / spread
    return advantages


@advantage_estimator("trloo", turn_level=True)
def trloo_estimator(turn_rewards: torch.Tensor, reached: torch.Tensor, config) -> torch.Tensor:
    """:func:`turn_advantages` with the objective's gamma, baseline and scale_by_std (TRLOO's
    defaults where the objective pairing it has no such keys)."""
    if not isinstance(config, TRLOOConfig):
        config = TRLOOConfig(**{key: getattr(config, key) for key in ("gamma", "baseline", "scale_by_std")
                                if hasattr(config, key)})
    return turn_advantages(turn_rewards, reached, config)


def mismatch_keep(logprobs_learner: torch.Tensor, logprobs_rollout: torch.Tensor, mask: torch.Tensor,
                  config: TRLOOConfig, token_turns: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(``[B, T]`` bool tokens kept, ``[B]`` geometric-mean ratio) of the rollout-vs-learner check.

    As the official code: an episode (a row) whose token-mean log-ratio puts the geometric mean
    outside [mismatch_low, mismatch_high] is dropped whole; a token whose ratio is under
    ``mismatch_veto`` drops its turn (every token of that turn, ``token_turns``; the whole row
    when single-turn), not the episode.
    """
    mask = mask.to(logprobs_learner.dtype)
    log_ratio = (logprobs_learner - logprobs_rollout).detach() * mask
    tokens = mask.sum(dim=1)
    geometric = torch.exp(log_ratio.sum(dim=1) / tokens.clamp(min=1))
    vetoed = (log_ratio < torch.log(torch.tensor(config.mismatch_veto))) & (mask > 0)
    turns = torch.zeros_like(vetoed, dtype=torch.long) if token_turns is None else token_turns.long()
    hit_turns = torch.zeros((vetoed.shape[0], int(turns.max()) + 1), dtype=torch.bool, device=vetoed.device)
    hit_turns.scatter_reduce_(1, turns, vetoed, reduce="amax")
    inside = (geometric >= config.mismatch_low) & (geometric <= config.mismatch_high)
    return inside.unsqueeze(1) & ~hit_turns.gather(1, turns), geometric


@objective("trloo")
class TRLOO(Objective):
    """Turn-level REINFORCE leave-one-out (TRLOO) for multi-turn environments.

    For a group of N episodes of one prompt, r_{i,t} the reward of episode i at turn t:

        G_{i,t} = Σ_{t'≥t} γ^{t'−t} r_{i,t'}
        A_{i,t} = G_{i,t} − 1/(n_t−1) · Σ_{j≠i, j reached t} G_{j,t}
        ρ_{i,k} = π_θ(o_{i,k}) / π_old(o_{i,k}) for each model token k of turn t(k)
        ℓ_{i,k} = −min(ρ·A_{i,t(k)}, clip(ρ, 1−ε_low, 1+ε_high)·A_{i,t(k)})

    Environment tokens are masked out; episodes failing the mismatch check are left out.
    On single-turn groups it is RLOO with a clipped surrogate.
    """

    name = "trloo"
    config_class = TRLOOConfig

    def zero_advantage_is_inert(self) -> bool:
        return True  # no term besides the advantage-weighted surrogate

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        loss, parts = clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages, 1 - config.epsilon,
                                        1 + config.epsilon_high, dual_clip=config.dual_clip)
        mask = batch.mask.to(loss.dtype)
        metrics_mask = mask
        if config.mismatch == "reject" and batch.behavior_logprobs is not None:
            keep, geometric = mismatch_keep(batch.old_logprobs, batch.behavior_logprobs, batch.mask, config,
                                            batch.token_turns)
            mask = mask * keep.to(loss.dtype)
            parts["mismatch_rejected_tokens"] = (~keep).to(loss.dtype)
            parts["mismatch_ratio"] = geometric.unsqueeze(1).expand_as(loss)
        return aggregate(loss, mask, config.loss_type), token_means(parts, metrics_mask)

    def normalizer(self, stats: StepStats) -> float:
        return step_normalizer(self.config.loss_type, stats)
