"""Rows an objective trains on besides the step's groups (``Objective.extra_rows``).

* ``rehearsal`` (DPH-RL): samples of the initial policy, collected once before training with
  their initial-policy log-probs (``rlkit/rehearsal.py``); each step takes the next few from a
  pool reshuffled every pass.
* ``tempered`` (AEPO): each step resamples some of its own prompts at the temperature the
  objective sets, and the objective picks which of those samples it trains on.

Both hand the learner one-row :class:`RolloutGroup`s; the pipeline attaches them to each learner
rank's last micro-batch of the step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from rlkit.config import RLConfig
from rlkit.data import RolloutGroup


def one_row_groups(group: RolloutGroup, indices: list[int], source: str) -> list[RolloutGroup]:
    return [RolloutGroup(prompt_index=group.prompt_index, prompt=group.prompt, prompt_ids=group.prompt_ids,
                         row=group.row, rollouts=[group.rollouts[i]], policy_version=group.policy_version,
                         source=source) for i in indices]


class RehearsalRows:
    """Stored initial-policy samples, ``per_step`` a step, cycling through a seeded shuffle."""

    def __init__(self, pool: list[RolloutGroup], per_step: int, seed: int):
        if not pool:
            raise ValueError("the rehearsal pool is empty: the initial model solves none of the training "
                             "prompts reliably (lower objective.pass_threshold, or use grpo)")
        self.pool, self.per_step, self.seed = pool, per_step, seed
        self.epoch, self.cursor = 0, 0

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 7, self.epoch]).permutation(len(self.pool))

    def submit(self, step: int, items: list) -> None:
        del step, items  # nothing to generate

    def rows(self, step: int) -> list[RolloutGroup]:
        del step
        taken, order = [], self._order()
        while len(taken) < self.per_step:
            if self.cursor == len(self.pool):
                self.epoch, self.cursor = self.epoch + 1, 0
                order = self._order()
            taken.append(self.pool[order[self.cursor]])
            self.cursor += 1
        return taken

    def after_step(self, learner_out: dict[str, float]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]


class TemperedRows:
    """AEPO's regularizer samples: a fraction of the step's prompts resampled at the objective's temperature.

    The temperature comes from the driver's copy of the objective, which sees the step's entropy
    once the step is trained. The next step's generation is already queued by then (it starts
    as soon as the new weights are loaded), so a temperature chosen after step s applies from
    step s+2: one step later than in a fully sequential loop.
    """

    def __init__(self, config: RLConfig, objective, submit_chunk: Callable, fetch: Callable):
        self.config, self.objective = config, objective
        self.submit_chunk, self.fetch = submit_chunk, fetch
        self.pending: dict[int, Any] = {}

    def submit(self, step: int, items: list) -> None:
        count = self.objective.regularizer_prompt_count(len(items))
        temperature = self.objective.regularizer_temperature(self.config.rollout.temperature)
        self.pending[step] = self.submit_chunk(step, items[:count], temperature)

    def rows(self, step: int) -> list[RolloutGroup]:
        groups = self.fetch(self.pending.pop(step))
        rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)
        chosen = self.objective.select_regularizer_rows(rewards).tolist()
        size = len(groups[0].rollouts)
        rows = []
        for flat in chosen:
            rows += one_row_groups(groups[flat // size], [flat % size], source="tempered")
        return rows

    def after_step(self, learner_out: dict[str, float]) -> dict[str, float]:
        self.objective.observe_entropy(learner_out["entropy"])
        return self.objective.log_metrics()

    def state_dict(self) -> dict[str, Any]:
        # generation already submitted for later steps is kept as its result, like the main chunks
        return {"objective": self.objective.state_dict(),
                "pending": {step: self.fetch(chunk) for step, chunk in self.pending.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.objective.load_state_dict(state["objective"])
        self.pending = {int(step): list(groups) for step, groups in state["pending"].items()}  # fetch takes either
