"""DPH-RL's extra rows: stored samples of the initial policy π0 for the prompts it already solves.

Before the first step, :meth:`RehearsalRows.prepare` splits the training prompts by π0's pass rate
(the rollout workers and learners still hold the initial weights) and stores correct π0 samples,
with their π0 log-probs, for the solved ones; only the unsolved ones stay training prompts. The
result is saved in the run folder, so a resumed run reads it back instead of sampling again. Each
step then takes the next few stored samples from a pool reshuffled every pass.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlkit.config import ConfigError
from rlkit.data import RolloutGroup
from rlkit.objectives.hooks import ExtraRows, RunAccess

FILE_NAME = "rehearsal.pkl"
CHUNK = 64  # prompts per generation call while measuring


@dataclass
class Rehearsal:
    exploration_rows: list[dict[str, Any]]  # the prompts the run samples from
    pool: list[RolloutGroup]  # one-row groups: a correct initial-policy sample, its log-probs as stored_logprobs
    summary: dict[str, int]


class RehearsalRows(ExtraRows):
    """``per_step`` stored π0 samples a step, cycling through a seeded shuffle of the pool."""

    counts_in_step_stats = True  # both kinds of row share the normalizer

    def __init__(self, objective, run: RunAccess):
        self.objective, self.run = objective, run
        config = run.config
        per_step = round(objective.config.rehearsal_ratio * config.rollout.prompts_per_step
                         * config.rollout.num_generations)
        self.per_step = max(per_step, config.learner.num_learners)  # every rank gets one at least
        self.seed = config.seed
        self.pool: list[RolloutGroup] = []
        self.epoch, self.cursor = 0, 0

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rehearsal = prepare_rehearsal(self.run, rows, self.objective)
        self.pool = rehearsal.pool
        return rehearsal.exploration_rows

    def _order(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 7, self.epoch]).permutation(len(self.pool))

    def rows(self, step: int) -> list[RolloutGroup]:
        del step
        if not self.pool:
            raise ValueError("the rehearsal pool is empty: the initial model solves none of the training "
                             "prompts reliably (lower objective.pass_threshold, or use grpo)")
        taken, order = [], self._order()
        while len(taken) < self.per_step:
            if self.cursor == len(self.pool):
                self.epoch, self.cursor = self.epoch + 1, 0
                order = self._order()
            taken.append(self.pool[order[self.cursor]])
            self.cursor += 1
        return taken

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = state["epoch"], state["cursor"]


def prepare_rehearsal(run: RunAccess, rows: list[dict[str, Any]], objective) -> Rehearsal:
    path = Path(run.run_dir) / FILE_NAME
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    cfg, config = objective.config, run.config
    order = np.random.default_rng([config.seed, 11]).permutation(len(rows))
    measured = [rows[i] for i in (order[:cfg.split_prompts] if cfg.split_prompts else order)]
    threshold = config.rewards.pass_threshold
    run.log(f"DPH-RL: sampling the initial model {cfg.split_samples}x on {len(measured)} training prompts "
            "to split them into rehearsal and exploration sets")
    groups = _generate(run, list(enumerate(measured)), cfg.split_samples, salt=1)
    rates = [sum(r >= threshold for r in g.rewards) / cfg.split_samples for g in groups]
    rehearsal_ids, exploration_ids = objective.split_prompts(rates)
    fresh = _generate(run, [(i, measured[i]) for i in rehearsal_ids], cfg.rehearsal_samples, salt=2)
    pool = []
    for group in fresh:  # only correct fresh samples are stored; prompts with none are dropped
        pool += group.one_row_groups([k for k, r in enumerate(group.rewards) if r >= threshold], source="initial")
    if not pool:
        best = sorted(rates, reverse=True)[:max(1, len(rates) // 20)]
        raise ConfigError(
            f"DPH-RL: none of the {len(measured)} measured prompts has a stored rehearsal sample: "
            f"{len(rehearsal_ids)} reached objective.pass_threshold={cfg.pass_threshold} and none of their fresh "
            f"samples was correct, or none reached it (the best 5% of pass rates are {min(best):.3f} or more); "
            "lower objective.pass_threshold or raise objective.split_prompts")
    # the learner's own log-probs under the initial weights: u = πθ/π0 is exactly 1 at step 0
    for group, logprobs in zip(pool, run.score(pool)):
        group.rollouts[0].stored_logprobs = logprobs[0]
    summary = {"measured_prompts": len(measured), "rehearsal_prompts": len({g.prompt_index for g in pool}),
               "rehearsal_samples": len(pool), "exploration_prompts": len(exploration_ids),
               "dropped_prompts": len(rehearsal_ids) - len({g.prompt_index for g in pool})}
    run.log("DPH-RL: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()))
    result = Rehearsal([measured[i] for i in exploration_ids], pool, summary)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    tmp.replace(path)
    return result


def _generate(run: RunAccess, items: list, group_size: int, salt: int) -> list[RolloutGroup]:
    calls = [run.generate(items[start:start + CHUNK], seed_key=(10**6 + salt, c), group_size=group_size,
                          what=f"{len(items[start:start + CHUNK])} prompts to split")
             for c, start in enumerate(range(0, len(items), CHUNK))]
    return [group for chunk in run.results(calls) for group in chunk]
