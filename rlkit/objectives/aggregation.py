"""How token losses become a micro-batch's ``loss_sum`` and a step's normalizer, shared by the
GRPO-style objectives (``loss_type``: grpo, dapo, dr_grpo, seq_mean_token_sum; see
docs/objectives/grpo.md)."""

from __future__ import annotations

import torch

from rlkit.objectives.base import StepStats

LOSS_TYPES = ("grpo", "dapo", "dr_grpo", "seq_mean_token_sum")


def aggregate(loss: torch.Tensor, mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Σ over sequences of each sequence's token sum (dapo, dr_grpo, seq_mean_token_sum) or token mean (grpo)."""
    mask = mask.to(loss.dtype)
    per_sequence = (loss * mask).sum(dim=1)
    if loss_type == "grpo":
        per_sequence = per_sequence / mask.sum(dim=1).clamp(min=1)
    return per_sequence.sum()


def step_normalizer(loss_type: str, stats: StepStats) -> float:
    """N sequences (grpo, seq_mean_token_sum), loss tokens (dapo) or N · L_max (dr_grpo) of the whole step."""
    if loss_type in ("grpo", "seq_mean_token_sum"):
        return float(max(stats.num_sequences, 1))
    if loss_type == "dapo":
        return float(max(stats.num_tokens, 1))
    return float(max(stats.num_sequences * stats.max_completion_length, 1))


def token_means(parts: dict[str, torch.Tensor], mask: torch.Tensor) -> dict[str, float]:
    """Each per-token diagnostic averaged over the loss tokens (the learner weights by tokens)."""
    tokens = mask.sum().clamp(min=1)
    return {name: float((value * mask).sum() / tokens) for name, value in parts.items()}
