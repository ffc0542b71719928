"""Advantage estimators: the first half of every objective (the policy loss is the second).

An objective is a named pairing of an estimator and a loss, with defaults; its config's
``advantage_estimator`` key picks the estimator, so e.g. BAPO with RLOO advantages is
``--objective.advantage_estimator rloo``, not a new class. Estimators live in a registry
(``rlkit list estimators``); the generic ones are here, a method's own next to its loss
(``gbpo_median`` in ``gbpo.py``, ``trloo`` in ``trloo.py``).

An estimator maps a step's ``[num_groups, G]`` rewards to advantages of the same shape (or, turn
level, ``[num_groups, G, T]`` per-turn rewards to per-turn advantages). It reads the knobs it knows
from the objective's config (``scale_rewards``...) and takes its own default where the objective
has none. Every built-in works within a group, so a group's advantages are known the moment the
group is: the driver computes them once per step, as groups join it (``rlkit/driver/pipeline.py``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from rlkit.advantages import group_relative, leave_one_out
from rlkit.plugins import PluginNotFoundError, advantage_estimator, advantage_estimators

Estimator = Callable[..., torch.Tensor]


@advantage_estimator("group_relative")
def group_relative_estimator(rewards: torch.Tensor, config: Any) -> torch.Tensor:
    """GRPO: (r_i − mean_j r_j) / (std_j r_j + 1e-4); centring only when ``scale_rewards`` is False."""
    return group_relative(rewards, scale=getattr(config, "scale_rewards", True))


@advantage_estimator("rloo")
def leave_one_out_estimator(rewards: torch.Tensor, config: Any) -> torch.Tensor:
    """RLOO: r_i − mean_{j≠i} r_j = G/(G−1) · (r_i − mean_j r_j); no scaling."""
    del config
    return leave_one_out(rewards)


def estimator_named(name: str) -> Estimator:
    """The registered estimator ``name``; a clear error naming the registered ones otherwise."""
    try:
        return advantage_estimators.get(name)
    except PluginNotFoundError as exc:
        raise ValueError(f"advantage_estimator: {exc}") from None


def is_turn_level(estimator: Estimator) -> bool:
    return bool(getattr(estimator, "turn_level", False))
