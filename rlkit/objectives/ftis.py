"""F-TIS: filtered, truncated importance sampling for samples shared by other models.

F-TIS (Blagoev, Ersoy, Boehmer, Chen, 2026, arXiv 2605.22537) trains one model on its own groups
and on whole groups sampled by collaborators running other models (``rollout.collaborators``,
:mod:`rlkit.rollout.collaborators`). A shared sample i arrives with its tokens and the log-probs
``g_{i,t}`` its generator sampled them with; the learner scores it under its own policy,
``ℓ_{i,t}`` (``ℓ^old`` detached), and:

    w_{i,t} = min(exp(ℓ^old_{i,t} − g_{i,t}), C)                     truncated IS weight, C = 2 (detached)
    D_i     = Σ_t (g_{i,t} − ℓ^old_{i,t})                              divergence along the sample
    keep_i  = local_i  or  Â_i > 0  or  D_i ≤ γ                        γ = 50
    L       = −1/|K| Σ_{i∈K} 1/|o_i| Σ_t w_{i,t} · min(r_{i,t} Â_i, clip(r_{i,t}, 1−ε, 1+ε) Â_i)

with Â the group-relative advantage within each (single-generator) group and r = π_θ/π_old.
A foreign sample that is both wrong-signed (Â ≤ 0) and far from the local policy (D > γ) is
dropped: pushing down text the model would never write teaches it nothing. Positively
advantaged foreign samples are always kept (cheap demonstrations, weighed down by w).

Sources and decisions (the paper body was not reachable; its abstract and blog, two summaries and
TIS's own paper, Yao et al. 2025, are what this follows; see specs/rollout-periodic-async-ftis-ettrl.md §2):

* The weight multiplies the usual clipped term (standard TIS), rather than sitting inside the
  clip; the other reading would clip most foreign tokens' gradient to zero.
* D is a sequence-level sum (γ = 50 only makes sense summed); ``divergence: linear`` is the
  plain Monte-Carlo estimate above, ``k3`` the non-negative ``Σ_t (ρ − 1 − log ρ)``, ρ = e^{ℓ−g}.
* Local samples are never filtered; the weight applies to them too (``weigh_local: true``): on
  the policy's own samples w ≈ 1 and it absorbs any engine/learner mismatch, TIS's first purpose.
* The mean is over kept samples (``normalize_over: kept``, the spec's 1/|K|); ``all`` counts the
  dropped ones as zero-loss rows instead (ours).
* No KL to a reference by default (``beta: 0``), as in the reported runs.

Logged each step: ``ftis_shared_kept`` (share of shared samples the filter kept),
``ftis_weight_mean`` (mean w over shared tokens), ``ftis_divergence_mean`` (mean D over shared
samples). Each is averaged over micro-batches, weighted by their tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlkit.objectives.aggregation import aggregate, step_normalizer, token_means
from rlkit.objectives.base import PolicyBatch, StepStats
from rlkit.objectives.bapo import sum_over_ranks
from rlkit.objectives.grpo import GRPO, GRPOConfig, add_kl_penalty
from rlkit.objectives.losses import clipped_surrogate
from rlkit.plugins import objective

DIVERGENCES = ("linear", "k3")
NORMALIZE_OVER = ("kept", "all")


@dataclass
class FTISConfig(GRPOConfig):
    truncation: float = field(default=2.0, metadata={"help": "TIS cap C: w = min(π_local / π_generator, C)"})
    filter_threshold: float = field(default=50.0, metadata={
        "help": "γ: a shared sample with advantage <= 0 and divergence > γ is dropped"})
    divergence: str = field(default="linear", metadata={
        "help": "the divergence D summed over a sample's tokens: linear (Σ g − ℓ) or k3 (Σ ρ − 1 − log ρ)"})
    weigh_local: bool = field(default=True, metadata={
        "help": "apply the truncated weight to the policy's own samples too (w ≈ 1 there)"})
    normalize_over: str = field(default="kept", metadata={
        "help": "kept: the step's mean is over kept samples (1/|K|); all: dropped samples count as zero (ours)"})

    def __post_init__(self):
        super().__post_init__()
        if self.truncation <= 0:
            raise ValueError(f"truncation must be > 0, got {self.truncation}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {', '.join(DIVERGENCES)}, got {self.divergence!r}")
        if self.normalize_over not in NORMALIZE_OVER:
            raise ValueError(f"normalize_over must be one of {', '.join(NORMALIZE_OVER)}, got {self.normalize_over!r}")


def importance_weights(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """w = min(exp(ℓ^old − g), C) per token, detached."""
    return torch.exp(old_logprobs - behavior_logprobs).clamp(max=cap).detach()


def sample_divergence(old_logprobs: torch.Tensor, behavior_logprobs: torch.Tensor, mask: torch.Tensor,
                      kind: str = "linear") -> torch.Tensor:
    """D_i per sample ``[B]``: Σ_t (g − ℓ^old) (linear) or Σ_t (ρ − 1 − log ρ), ρ = e^{ℓ^old − g} (k3)."""
    log_ratio = (old_logprobs - behavior_logprobs).detach()
    per_token_d = -log_ratio if kind == "linear" else torch.exp(log_ratio) - 1 - log_ratio
    return (per_token_d * mask).sum(dim=1)


def keep_mask(advantages: torch.Tensor, divergence: torch.Tensor, shared: torch.Tensor | None,
              threshold: float) -> torch.Tensor:
    """[B] bool: local samples, positively advantaged ones, and those within γ are kept."""
    advantage = advantages if advantages.dim() == 1 else advantages.amax(dim=1)
    keep = (advantage > 0) | (divergence <= threshold)
    return keep if shared is None else keep | ~shared.to(keep.device)


@objective("ftis")
class FTIS(GRPO):
    """F-TIS: GRPO whose every token is weighed by a truncated importance ratio to its generator,
    with shared samples that are wrong-signed and too divergent dropped (see the module docstring)."""

    name = "ftis"
    config_class = FTISConfig

    def __init__(self, config: FTISConfig):
        super().__init__(config)
        self._dropped = torch.zeros(2, dtype=torch.float64)  # sequences, tokens dropped this step (this rank)

    def zero_advantage_is_inert(self) -> bool:
        # a group whose rewards are all equal carries no gradient, but its shared samples still go
        # through the filter, so that ftis_shared_kept counts every shared sample
        return False

    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        config = self.config
        mask = batch.mask.to(batch.logprobs.dtype)
        behavior = batch.behavior_logprobs.to(batch.old_logprobs.device)
        weights = importance_weights(batch.old_logprobs, behavior, config.truncation)
        divergence = sample_divergence(batch.old_logprobs, behavior, mask, config.divergence)
        keep = keep_mask(batch.advantages, divergence, batch.shared, config.filter_threshold)
        shared = torch.zeros_like(keep) if batch.shared is None else batch.shared.to(keep.device)
        if not config.weigh_local:
            weights = torch.where(shared.unsqueeze(1), weights, torch.ones_like(weights))
        eps_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
        surrogate, parts = clipped_surrogate(batch.logprobs, batch.old_logprobs, batch.advantages,
                                             1 - config.epsilon, 1 + eps_high)
        loss, parts = add_kl_penalty(weights * surrogate, parts, batch, config.beta)  # w weighs the surrogate only
        kept_mask = mask * keep.unsqueeze(1).to(mask.dtype)
        dropped = ~keep
        self._dropped += torch.tensor([float(dropped.sum()), float((mask * dropped.unsqueeze(1)).sum())],
                                      dtype=torch.float64)
        metrics = token_means(parts, mask)
        if bool(shared.any()):
            shared_tokens = mask * shared.unsqueeze(1).to(mask.dtype)
            metrics["ftis_shared_kept"] = float(keep[shared].float().mean())
            metrics["ftis_weight_mean"] = float((weights * shared_tokens).sum() / shared_tokens.sum().clamp(min=1))
            metrics["ftis_divergence_mean"] = float(divergence[shared].mean())
        return aggregate(loss, kept_mask, config.loss_type), metrics

    def normalizer(self, stats: StepStats) -> float:
        dropped = sum_over_ranks(self._dropped.clone()) if self.config.normalize_over == "kept" else None
        self._dropped.zero_()
        if dropped is not None:
            stats = StepStats(num_sequences=stats.num_sequences - int(dropped[0]),
                              num_tokens=stats.num_tokens - int(dropped[1]),
                              max_completion_length=stats.max_completion_length)
        return step_normalizer(self.config.loss_type, stats)
