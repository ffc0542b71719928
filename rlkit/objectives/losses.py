"""Policy losses: the second half of every objective (the advantage estimator is the first).

A policy loss maps one micro-batch's tensors to a per-token loss ``[B, T]`` and per-token
diagnostics; the objective aggregates it (``aggregation.py``) and pairs it with an estimator. The
clipped surrogate is the one primitive shared by grpo, dapo, dr_grpo, rloo, bapo, aepo, dph and
trloo; a method's own terms are registered next to it in the method's file (``bounded_ratio`` in
``gbpo.py``, the f-divergences in ``dph.py``, the tempered regularizer in ``aepo.py``).
``rlkit list losses`` shows them all.
"""

from __future__ import annotations

import torch

from rlkit.objectives.base import per_token
from rlkit.plugins import policy_loss


@policy_loss("clipped_surrogate")
def clipped_surrogate(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                      clip_low: float, clip_high: float, *, max_log_ratio: float | None = None,
                      dual_clip: float | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate with ratio bounds [clip_low, clip_high] (e.g. 1 − ε_low, 1 + ε_high):

        ρ_t = exp(log π_θ − log π_old)            (log-ratio clamped to ±max_log_ratio first, if given)
        ℓ_t = −min(ρ_t·A, clip(ρ_t, clip_low, clip_high)·A)
        ℓ_t = min(ℓ_t, −c·A)  where A < 0          (dual clip c > 1, if given: verl's clip_ratio_c)

    ``advantages`` is ``[B]`` (one per sequence) or ``[B, T]`` (per token). Diagnostics: the
    fractions of tokens whose gradient the clip zeroes on each side (only the side the advantage
    pushes toward binds), the dual clip's fraction, and the ratio.
    """
    log_ratio = logprobs - old_logprobs
    if max_log_ratio is not None:
        log_ratio = log_ratio.clamp(-max_log_ratio, max_log_ratio)
    ratio = torch.exp(log_ratio)
    advantages = per_token(advantages)
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, clip_low, clip_high) * advantages)
    clip_low_hit = ((ratio < clip_low) & (advantages < 0)).to(loss.dtype)
    clip_high_hit = ((ratio > clip_high) & (advantages > 0)).to(loss.dtype)
    parts = {"clip_fraction_low": clip_low_hit, "clip_fraction_high": clip_high_hit,
             "clip_fraction": clip_low_hit + clip_high_hit, "ratio_mean": ratio.detach()}
    if dual_clip is not None:
        cap = -dual_clip * advantages
        capped = (advantages < 0) & (loss > cap)
        loss = torch.where(capped, cap.expand_as(loss), loss)
        parts["dual_clip_fraction"] = capped.to(loss.dtype)
    return loss, parts


@policy_loss("k3_kl")
def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, *,
          clamp: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """k3 = exp(δ) − δ − 1 with δ = log π_ref − log π_θ: an unbiased, always >= 0 per-token
    estimate of KL(π_θ‖π_ref) on π_θ's samples. ``clamp``: verl's ``low_var_kl`` exactly, δ
    clamped to ±20 and k3 to [−10, 10] (flat, so no gradient, where a clamp binds)."""
    delta = ref_logprobs - logprobs
    if clamp:
        delta = delta.clamp(-20.0, 20.0)
    kl = torch.exp(delta) - delta - 1
    if clamp:
        kl = kl.clamp(-10.0, 10.0)
    return kl, {"kl": kl.detach()}
