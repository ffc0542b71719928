"""Advantage estimators: pure functions from ``[num_groups, G]`` rewards to advantages of the same shape.

Row g holds the G completions sampled for one prompt; every estimator works within a row.
"""

from __future__ import annotations

import torch


def group_relative(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO (as TRL): ``A_i = (r_i − mean_j r_j) / (std_j r_j + eps)`` within each group.

    ``std`` is the unbiased sample standard deviation (``torch.std``, divisor G−1), as TRL uses.
    A group whose rewards are all equal gets zero advantages. ``scale=False`` keeps only the
    centring, ``A_i = r_i − mean_j r_j`` (Dr. GRPO): it does not up-weight groups whose rewards
    barely differ.
    """
    rewards = _as_groups(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: ``A_i = r_i − 1/(G−1) · Σ_{j≠i} r_j``, which equals ``G/(G−1) · (r_i − mean_j r_j)``."""
    rewards = _as_groups(rewards)
    group = rewards.shape[1]
    return (rewards - rewards.mean(dim=1, keepdim=True)) * group / (group - 1)


def _as_groups(rewards: torch.Tensor) -> torch.Tensor:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [num_groups, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"a group-relative advantage needs G >= 2 completions per prompt, got {rewards.shape[1]}")
    return rewards if rewards.is_floating_point() else rewards.float()
