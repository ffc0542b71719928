"""AEPO: GRPO plus a REINFORCE regularizer on temperature-adjusted samples, whose temperature is
switched so that the policy's entropy settles at a target.

Sources: Wang et al., "Arbitrary Entropy Policy Optimization" (arXiv 2510.08141), the equations of
its README ("Method Overview"), and its official code, github.com/597358816/AEPO
(``verl/trainer/ray_trainer.py`` ``RayPPOTrainer.fit``, ``verl/trainer/config.py``). Where this
module departs from that code, the docstring says so and why (see also ``docs/objectives/aepo.md``).

The loss needs samples the ordinary batch does not hold: completions drawn at the regulated
temperature. :class:`TemperedRows` (the objective's extra rows) samples them on the driver each
step; ``combine_extra`` hands them to the loss as a ``RegularizerBatch`` in an ``AEPOPolicyBatch``.
The temperature controller is the objective's driver state (:class:`EntropyControl`): it lives once,
on the driver, is fed each step's measured entropy and is checkpointed with the driver.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rlkit.advantages import group_relative
from rlkit.data import RolloutGroup
from rlkit.metric_names import ENTROPY
from rlkit.objectives.aggregation import aggregate
from rlkit.objectives.base import PolicyBatch
from rlkit.objectives.grpo import GRPO, GRPOConfig, per_token_loss
from rlkit.objectives.hooks import DriverState, ExtraRows, RunAccess
from rlkit.plugins import objective, policy_loss

TEMPERATURE_RULES = ("switch", "proportional")
ENTROPY_MEASURES = ("sampled", "exact")
# the learner's step mean of this metric (weighted by the tokens each micro-batch trained, main and
# regularizer rows alike) is the official code's entropy estimate
SAMPLED_ENTROPY = "aepo_sampled_entropy"


@dataclass
class AEPOConfig(GRPOConfig):
    loss_type: str = field(default="dapo", metadata={
        "help": "aggregation: dapo (token mean over the step's loss tokens: the official code's per-micro-"
                "batch token mean), grpo (per-sequence token mean, then mean over sequences) or dr_grpo"})
    entropy_measure: str = field(default="sampled", metadata={
        "help": "what the controller compares with target_entropy: sampled (the official code: the token mean "
                "of -log π(sampled token) over the step's main and regularizer rows, under the trained policy) "
                "or exact (rlkit's: the exact entropy of the next-token distribution over the main rows only)"})
    target_entropy: float = field(default=0.5, metadata={
        "help": "H: the token-mean entropy (nats) of the trained policy to hold; the official code's "
                "default is 0.5, the paper's best run used 0.75"})
    temperature_high: float = field(default=1.2, metadata={
        "help": "T_high: regularizer samples are drawn this much hotter than the policy while its "
                "entropy is at or below the target (>= 1)"})
    temperature_low: float = field(default=0.8, metadata={
        "help": "T_low: the same, while the entropy is above the target (<= 1)"})
    temperature_rule: str = field(default="switch", metadata={
        "help": "switch (the paper: T = T_high if entropy <= target else T_low) or proportional "
                "(rlkit extension: T = 1 + temperature_gain x (target - entropy), kept in [T_low, T_high])"})
    temperature_gain: float = field(default=2.0, metadata={
        "help": "proportional rule only: temperature above 1 per nat of entropy below the target"})
    regularizer_coef: float = field(default=1.0, metadata={
        "help": "α: weight of a regularizer sample relative to a main sample in the loss "
                "(1 = the official code, where both sit in one batch)"})
    max_regularizer_sequences: int = field(default=60, metadata={
        "help": "K: regularizer samples per optimizer step at most, halved while entropy is above "
                "the target (official: 60 per step of 2,560 sequences)"})
    regularizer_prompt_fraction: float = field(default=0.25, metadata={
        "help": "share of the step's prompts resampled at the regulated temperature (official: 1/4)"})
    regularizer_rows: str = field(default="positive", metadata={
        "help": "which tempered samples the regularizer trains on: positive (the official code: those whose "
                "advantage exceeds regularizer_advantage_threshold, reward 1) or all (rlkit extension: every "
                "sample, reward 1, so the pull is toward the tempered policy itself; use it where right answers "
                "are unique, as in arith, and reinforcing them only sharpens the policy)"})
    regularizer_advantage_threshold: float = field(default=0.05, metadata={
        "help": "a regularizer sample is used when its group-relative advantage within its tempered "
                "group exceeds this (one-sided: only better-than-average samples)"})

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.target_entropy) and self.target_entropy > 0):
            raise ValueError(f"target_entropy must be > 0 (nats per token), got {self.target_entropy}")
        if not 0 < self.temperature_low <= 1 <= self.temperature_high or self.temperature_low == self.temperature_high:
            raise ValueError("temperatures must satisfy 0 < temperature_low <= 1 <= temperature_high with "
                             f"low < high, got low={self.temperature_low}, high={self.temperature_high}")
        if self.temperature_rule not in TEMPERATURE_RULES:
            raise ValueError(f"temperature_rule {self.temperature_rule!r} is not one of: "
                             f"{', '.join(TEMPERATURE_RULES)}")
        if self.temperature_gain <= 0:
            raise ValueError(f"temperature_gain must be > 0, got {self.temperature_gain}")
        if self.regularizer_coef < 0:
            raise ValueError(f"regularizer_coef must be >= 0, got {self.regularizer_coef}")
        if self.max_regularizer_sequences < 0:
            raise ValueError(f"max_regularizer_sequences must be >= 0, got {self.max_regularizer_sequences}")
        if not 0 < self.regularizer_prompt_fraction <= 1:
            raise ValueError(f"regularizer_prompt_fraction must be in (0, 1], got {self.regularizer_prompt_fraction}")
        if self.regularizer_rows not in ("positive", "all"):
            raise ValueError(f"regularizer_rows {self.regularizer_rows!r} is not one of: positive, all")
        if self.regularizer_advantage_threshold < 0:
            raise ValueError("regularizer_advantage_threshold must be >= 0 (the regularizer is one-sided), "
                             f"got {self.regularizer_advantage_threshold}")
        if self.entropy_measure not in ENTROPY_MEASURES:
            raise ValueError(f"entropy_measure {self.entropy_measure!r} is not one of: {', '.join(ENTROPY_MEASURES)}")


class TemperatureController:
    """The regularizer's sampling temperature T as a function of the measured entropy H.

    switch (paper):       T = T_high if H <= H* else T_low
    proportional (rlkit): T = clip(1 + gain·(H* − H), T_low, T_high)

    switch is proportional with an infinite gain: it chatters around H*. The proportional rule
    settles instead (T → 1 where the regularizer's expected pull vanishes, or the T that balances
    the GRPO update's own entropy drift), at the cost of a small steady offset under such drift.

    T is relative to the trained policy: it tempers π_θ, not the raw logits. Before any
    measurement T = T_high and the entropy counts as below target: the official code starts its
    entropy variable at 0, so its first step samples at T_high with the full budget K.
    """

    def __init__(self, target_entropy: float, temperature_low: float, temperature_high: float,
                 rule: str = "switch", gain: float = 2.0):
        if rule not in TEMPERATURE_RULES:
            raise ValueError(f"rule {rule!r} is not one of: {', '.join(TEMPERATURE_RULES)}")
        if not 0 < temperature_low < temperature_high:
            raise ValueError(f"need 0 < temperature_low < temperature_high, got {temperature_low}, {temperature_high}")
        self.target_entropy = target_entropy
        self.low, self.high = temperature_low, temperature_high
        self.rule, self.gain = rule, gain
        self.temperature = temperature_high
        self.last_entropy: float | None = None
        self.updates = 0

    @property
    def below_target(self) -> bool:
        """Whether the last measured entropy was at or below the target (True before any)."""
        return self.last_entropy is None or self.last_entropy <= self.target_entropy

    def update(self, measured_entropy: float | torch.Tensor) -> float:
        """Take one step's measured token-mean entropy; return the temperature for the next samples."""
        entropy = float(measured_entropy)
        if not math.isfinite(entropy) or entropy < 0:
            raise ValueError(f"measured entropy must be a finite number >= 0, got {entropy}")
        self.last_entropy = entropy
        self.updates += 1
        if self.rule == "switch":
            self.temperature = self.high if entropy <= self.target_entropy else self.low
        else:
            wanted = 1.0 + self.gain * (self.target_entropy - entropy)
            self.temperature = min(max(wanted, self.low), self.high)
        return self.temperature

    def regularizer_count(self, available: int, max_sequences: int) -> int:
        """How many of ``available`` eligible samples to use: min(K, available), halved (floor) above target."""
        count = min(max_sequences, available)
        return count if self.below_target else count // 2

    def state_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "last_entropy": self.last_entropy, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"temperature", "last_entropy", "updates"} - set(state)
        if missing:
            raise KeyError(f"temperature controller state lacks {sorted(missing)}")
        # a resumed run may have changed the bounds: the saved temperature is kept within the new ones
        self.temperature = min(max(float(state["temperature"]), self.low), self.high)
        self.last_entropy = None if state["last_entropy"] is None else float(state["last_entropy"])
        self.updates = int(state["updates"])


def sampled_entropy(batch: PolicyBatch, regularizer: RegularizerBatch | None) -> float:
    """−mean log π_θ(sampled token) over the main and regularizer loss tokens: the official code's
    entropy estimate (unbiased for the policy's own samples; the tempered ones pull it away)."""
    nll = -(batch.logprobs.detach() * batch.mask).sum()
    tokens = batch.mask.sum()
    if regularizer is not None and regularizer.logprobs.shape[0]:
        nll = nll - (regularizer.logprobs.detach() * regularizer.mask).sum()
        tokens = tokens + regularizer.mask.sum()
    return float(nll / tokens.clamp(min=1))


@dataclass
class RegularizerBatch:
    """Regularizer samples of one micro-batch; per-token tensors are ``[R, T_r]`` over completion positions.

    The samples were drawn at the regulated temperature; their log-probs are scored exactly like the
    main batch's (logits divided by ``rollout.temperature``, i.e. under the trained policy π_θ).
    """

    logprobs: torch.Tensor  # log π_θ(o_t), with gradient
    old_logprobs: torch.Tensor  # detached; ``logprobs.detach()`` makes the term plain REINFORCE (ratio 1)
    mask: torch.Tensor  # 1 (or True) on the sample's completion tokens
    weights: torch.Tensor  # [R] the REINFORCE reward; 1.0 for every selected sample (official code)


@dataclass
class AEPOPolicyBatch(PolicyBatch):
    """A :class:`PolicyBatch` with the micro-batch's regularizer samples (None when it has none)."""

    regularizer: RegularizerBatch | None = None


def with_regularizer(batch: PolicyBatch, regularizer: RegularizerBatch | None) -> AEPOPolicyBatch:
    """The learner's policy batch with regularizer samples attached."""
    fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(PolicyBatch)}
    return AEPOPolicyBatch(**fields, regularizer=regularizer)


def eligible_regularizer_rows(rewards: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """Flat row indices (``g·G + i``, in order) of tempered samples whose advantage exceeds ``threshold``.

    ``rewards`` is ``[num_groups, G]``: G samples per prompt at the regulated temperature. The
    advantage is GRPO's, scaled by the group std, as the official code computes it; a group whose
    samples all scored the same has none eligible.
    """
    advantages = group_relative(rewards, scale=True)
    return torch.nonzero(advantages.reshape(-1) > threshold).reshape(-1)


@policy_loss("tempered_reinforce")
def regularizer_token_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, weights: torch.Tensor,
                           config: GRPOConfig) -> torch.Tensor:
    """Per-token REINFORCE regularizer on tempered samples: the clipped surrogate with the sample's
    weight w_j as its advantage, the objective's clip range and no KL."""
    rows = PolicyBatch(logprobs=logprobs, old_logprobs=old_logprobs, mask=torch.ones_like(logprobs), advantages=weights)
    loss, _ = per_token_loss(rows, dataclasses.replace(config, beta=0.0))
    return loss


def regularizer_loss_sum(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
                         weights: torch.Tensor, config: GRPOConfig) -> torch.Tensor:
    """Unnormalized REINFORCE regularizer, aggregated like the main loss (``config.loss_type``):

        ℓ^reg_{j,t} = −min(ρ_{j,t}·w_j, clip(ρ_{j,t}, 1−ε_low, 1+ε_high)·w_j),  ρ = exp(logp − old)

    With ρ ≡ 1 (``old_logprobs = logprobs.detach()``) its gradient is −Σ w_j ∇log π_θ(o_{j,t}).

    No KL term: the README's regularizer is pure policy gradient; the KL (β) belongs to the GRPO part.
    """
    return aggregate(regularizer_token_loss(logprobs, old_logprobs, weights, config), mask, config.loss_type)


@objective("aepo")
class AEPO(GRPO):
    """Arbitrary Entropy Policy Optimization (Wang et al., 2025).

    Gradient (README, "Method Overview"), with π_θ^T the trained policy tempered by T:

        ∇J_AEPO = ∇J_GRPO + α · E_{q, o ~ π_θ^T}[ ∇ log π_θ(o|q) · R(q, o) ]
        T = T_high if H(π_θold) <= H* else T_low          (switch rule; official code uses <=)

    Loss of one step, main samples i (the GRPO batch) and regularizer samples j:

        ℓ_{i,t}     = GRPO's clipped token loss with advantage A_i (+ β·k3 KL)
        ℓ^reg_{j,t} = −min(ρ_{j,t}·w_j, clip(ρ_{j,t}, 1−ε_low, 1+ε_high)·w_j),   w_j = 1
        L = ( agg_i ℓ_{i,t} + α · agg_j ℓ^reg_{j,t} ) / normalizer(main-batch StepStats)

    where agg is the ``loss_type`` aggregation (token sum, or token mean per sequence for grpo).
    Regularizer samples (official code): for a quarter of the step's prompts, G fresh completions
    at T, scored by the reward; those whose group-relative advantage exceeds 0.05 are eligible
    (one-sided: R = 1 for them, nothing for the rest); the first min(K, eligible) are used,
    half that when the entropy is above target. H is the token-mean entropy of the trained policy
    measured on the previous step; α = 1 weighs a regularizer row exactly like a main row.
    """

    name = "aepo"
    config_class = AEPOConfig

    def __init__(self, config: AEPOConfig):
        super().__init__(config)
        self.controller = TemperatureController(config.target_entropy, config.temperature_low,
                                                config.temperature_high, config.temperature_rule,
                                                config.temperature_gain)

    def extra_rows(self, run: RunAccess) -> ExtraRows:
        """Each step, some of its prompts resampled at ``regularizer_temperature`` (:class:`TemperedRows`)."""
        return TemperedRows(self, run)

    def driver_state(self) -> DriverState:
        """The temperature controller, fed the step's measured entropy (:class:`EntropyControl`)."""
        return EntropyControl(self.controller, self.config.entropy_measure)

    def combine_extra(self, batch: PolicyBatch, extra: PolicyBatch) -> PolicyBatch:
        """Regularizer rows ride apart from the main rows: REINFORCE with weight 1, ratio 1."""
        weights = torch.ones(extra.logprobs.shape[0], dtype=extra.logprobs.dtype, device=extra.logprobs.device)
        return with_regularizer(batch, RegularizerBatch(logprobs=extra.logprobs, old_logprobs=extra.logprobs.detach(),
                                                        mask=extra.mask, weights=weights))

    def zero_advantage_is_inert(self) -> bool:
        return False  # the regularizer does not scale with the main batch's advantages

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = super().loss_sum(batch)
        reg = getattr(batch, "regularizer", None)
        metrics["regularizer_token_share"] = 0.0
        metrics[SAMPLED_ENTROPY] = sampled_entropy(batch, reg)
        if reg is None or reg.logprobs.shape[0] == 0:
            return loss, metrics
        if reg.weights.shape != reg.logprobs.shape[:1]:
            raise ValueError(f"regularizer weights must be [R] = {tuple(reg.logprobs.shape[:1])}, "
                             f"got {tuple(reg.weights.shape)}")
        reg_sum = regularizer_loss_sum(reg.logprobs, reg.old_logprobs, reg.mask, reg.weights, self.config)
        # per main loss token, so that the learner's token-weighted step mean is Σ reg tokens / Σ main tokens
        metrics["regularizer_token_share"] = float(reg.mask.sum() / batch.mask.sum().clamp(min=1))
        return loss + self.config.regularizer_coef * reg_sum, metrics

    # --- what the rollout side asks of the objective ------------------------------------------

    def observe_entropy(self, measured_entropy: float) -> float:
        """Feed the step's token-mean entropy (all ranks); returns T for the next regularizer samples."""
        return self.controller.update(measured_entropy)

    def regularizer_temperature(self, rollout_temperature: float) -> float:
        """The engine's sampling temperature for regularizer samples: T · rollout.temperature.

        The learner scores π_θ = softmax(z / rollout.temperature); tempering that by T is
        softmax(z / (T · rollout.temperature)).
        """
        return self.controller.temperature * rollout_temperature

    def regularizer_prompt_count(self, prompts_per_step: int) -> int:
        """Prompts of a step to resample at T: ⌊fraction · prompts⌋, at least 1."""
        return max(1, int(self.config.regularizer_prompt_fraction * prompts_per_step))

    def select_regularizer_rows(self, rewards: torch.Tensor) -> torch.Tensor:
        """Flat indices of the step's regularizer samples, given their ``[num_groups, G]`` rewards."""
        if self.config.regularizer_rows == "all":
            eligible = torch.arange(rewards.numel())
        else:
            eligible = eligible_regularizer_rows(rewards, self.config.regularizer_advantage_threshold)
        count = self.controller.regularizer_count(len(eligible), self.config.max_regularizer_sequences)
        return eligible[:count]



class EntropyControl(DriverState):
    """AEPO's driver state: the temperature controller, updated with each step's token-mean entropy
    over all ranks (the policy's own samples only), and what it logs."""

    def __init__(self, controller: TemperatureController, measure: str = "sampled"):
        self.controller, self.measure = controller, measure

    def observe(self, step_stats: dict[str, float]) -> dict[str, float]:
        self.controller.update(step_stats[SAMPLED_ENTROPY if self.measure == "sampled" else ENTROPY])
        values = {"aepo_temperature": self.controller.temperature,
                  "aepo_below_target": float(self.controller.below_target)}
        if self.controller.last_entropy is not None:
            values["aepo_measured_entropy"] = self.controller.last_entropy
        return values

    def state_dict(self) -> dict[str, Any]:
        return {"temperature_controller": self.controller.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.controller.load_state_dict(state["temperature_controller"])


class TemperedRows(ExtraRows):
    """AEPO's regularizer samples: a fraction of the step's prompts resampled at the controller's temperature.

    The temperature is the driver's controller's when the step's generation is submitted. The next
    step's generation is already queued when a step's entropy is observed (it starts as soon as the
    new weights are loaded), so a temperature chosen after step s applies from step s+2: one step
    later than in a fully sequential loop.
    """

    def __init__(self, objective: AEPO, run: RunAccess):
        self.objective, self.run = objective, run
        self.pending: dict[int, Any] = {}

    def submit(self, step: int, items: list[tuple[int, dict[str, Any]]]) -> None:
        count = self.objective.regularizer_prompt_count(len(items))
        temperature = self.objective.regularizer_temperature(self.run.config.rollout.temperature)
        self.pending[step] = self.run.generate(items[:count], seed_key=(step, 100_000), temperature=temperature,
                                               what=f"{count} tempered prompts")

    def rows(self, step: int) -> list[RolloutGroup]:
        (groups,) = self.run.results([self.pending.pop(step)])
        rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        chosen = self.objective.select_regularizer_rows(rewards).tolist()
        size = len(groups[0].rollouts)
        rows = []
        for flat in chosen:
            rows += groups[flat // size].one_row_groups([flat % size], source="tempered")
        return rows

    def state_dict(self) -> dict[str, Any]:
        # generation already submitted for later steps is kept as its result, like the main chunks
        steps = list(self.pending)
        self.pending = dict(zip(steps, self.run.results([self.pending[s] for s in steps])))
        return {"pending": dict(self.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = {int(step): list(groups) for step, groups in state["pending"].items()}  # results() takes either
