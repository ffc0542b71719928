"""The optimizer the DeepSpeed engine drives, and the learning-rate schedule.

Learners back-propagate each micro-batch's *unnormalized* loss as it arrives (the step's token
count is unknown until generation ends), so the accumulated gradient must be divided by the
step's normalizer before clipping and the update. DeepSpeed (ZeRO 0-3) hands the base optimizer
the reduced gradients of the parameters (or partitions) it owns; doing the division and the
clipping here keeps every schedule and micro-batch order mathematically identical.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist


class NormalizedAdamW(torch.optim.AdamW):
    """AdamW that first scales gradients by ``gradient_multiplier`` and clips their global norm."""

    def __init__(self, params, *, max_grad_norm: float, partitioned: bool, **kwargs):
        super().__init__(params, **kwargs)
        self.gradient_multiplier = 1.0
        self.max_grad_norm = max_grad_norm
        self.partitioned = partitioned  # True when each rank holds only a slice of the gradients
        self.last_grad_norm = 0.0

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, self.gradient_multiplier)
            norm_sq = torch.stack([g.float().pow(2).sum() for g in grads]).sum()
        else:
            norm_sq = torch.zeros(())
        if self.partitioned and dist.is_initialized():
            dist.all_reduce(norm_sq)
        norm = norm_sq.sqrt().item()
        self.last_grad_norm = norm
        if not math.isfinite(norm):
            for g in grads:  # a non-finite step is skipped, never applied
                g.zero_()
            return None
        if self.max_grad_norm > 0 and norm > self.max_grad_norm:
            torch._foreach_mul_(grads, self.max_grad_norm / (norm + 1e-6))
        return super().step(closure)


def learning_rate_at(step: int, base_lr: float, schedule: str, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm-up, then constant/linear/cosine."""
    if warmup_steps and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    if schedule == "linear":
        return base_lr * (1.0 - progress)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
