"""DPH-RL's preparation: split the training prompts by the initial model's pass rate and store
samples of the initial policy, with their log-probs, for the prompts it already solves.

Runs once, before the first step, on the run's actors (the rollout workers and learners still
hold the initial weights). The result is saved in the run folder, so a resumed run reads it back
instead of sampling again.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray

from rlkit.config import ConfigError
from rlkit.data import RolloutGroup
from rlkit.rollout.extras import one_row_groups
from rlkit.rollout.schedule import chunk_seed

FILE_NAME = "rehearsal.pkl"
CHUNK = 64  # prompts per generation call while measuring


@dataclass
class Rehearsal:
    exploration_rows: list[dict[str, Any]]  # the prompts the run samples from
    pool: list[RolloutGroup]  # one-row groups: a correct initial-policy sample, its log-probs as behavior_logprobs
    summary: dict[str, int]


def prepare_rehearsal(run_dir: Path, rows: list[dict[str, Any]], objective, actors, config, log=print) -> Rehearsal:
    path = Path(run_dir) / FILE_NAME
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    cfg = objective.config
    order = np.random.default_rng([config.seed, 11]).permutation(len(rows))
    measured = [rows[i] for i in (order[:cfg.split_prompts] if cfg.split_prompts else order)]
    threshold = config.rewards.pass_threshold
    log(f"DPH-RL: sampling the initial model {cfg.split_samples}x on {len(measured)} training prompts "
        "to split them into rehearsal and exploration sets")
    groups = _generate(actors.fleet, list(enumerate(measured)), cfg.split_samples, config.seed, salt=1)
    rates = [sum(r >= threshold for r in g.rewards) / cfg.split_samples for g in groups]
    rehearsal_ids, exploration_ids = objective.split_prompts(rates)
    fresh = _generate(actors.fleet, [(i, measured[i]) for i in rehearsal_ids], cfg.rehearsal_samples,
                      config.seed, salt=2)
    pool = []
    for group in fresh:  # only correct fresh samples are stored; prompts with none are dropped
        pool += one_row_groups(group, [k for k, r in enumerate(group.rewards) if r >= threshold], source="initial")
    if not pool:
        best = sorted(rates, reverse=True)[:max(1, len(rates) // 20)]
        raise ConfigError(
            f"DPH-RL: none of the {len(measured)} measured prompts has a stored rehearsal sample: "
            f"{len(rehearsal_ids)} reached objective.pass_threshold={cfg.pass_threshold} and none of their fresh "
            f"samples was correct, or none reached it (the best 5% of pass rates are {min(best):.3f} or more); "
            "lower objective.pass_threshold or raise objective.split_prompts")
    if pool:
        # the learner's own log-probs under the initial weights: u = πθ/π0 is exactly 1 at step 0
        scores = ray.get([learner.score.remote(pool) for learner in actors.learners])[0]
        for group, logprobs in zip(pool, scores):
            group.rollouts[0].behavior_logprobs = logprobs[0]
    summary = {"measured_prompts": len(measured), "rehearsal_prompts": len({g.prompt_index for g in pool}),
               "rehearsal_samples": len(pool), "exploration_prompts": len(exploration_ids),
               "dropped_prompts": len(rehearsal_ids) - len({g.prompt_index for g in pool})}
    log("DPH-RL: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items()))
    result = Rehearsal([measured[i] for i in exploration_ids], pool, summary)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    tmp.replace(path)
    return result


def _generate(fleet, items: list, group_size: int, seed: int, salt: int) -> list[RolloutGroup]:
    calls = [fleet.generate(c % len(fleet), items[start:start + CHUNK], chunk_seed(seed, 10**6 + salt, c),
                            group_size=group_size, what=f"{len(items[start:start + CHUNK])} prompts to split")
             for c, start in enumerate(range(0, len(items), CHUNK))]
    return [group for chunk in fleet.results(calls) for group in chunk]
