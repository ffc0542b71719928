"""The run as an objective's hooks see it (:class:`rlkit.objectives.hooks.RunAccess`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray

from rlkit.config import RLConfig
from rlkit.data import RolloutGroup
from rlkit.driver.recovery import RolloutFleet, WorkerCall
from rlkit.seeding import chunk_seed


class PipelineRunAccess:
    """Generation on the rollout fleet (round robin over workers), scoring on the learners."""

    def __init__(self, config: RLConfig, run_dir: Path, fleet: RolloutFleet, learners: list, log=print):
        self.config, self.run_dir = config, Path(run_dir)
        self.fleet, self.learners = fleet, learners
        self._log = log
        self._calls = 0

    def generate(self, items: list[tuple[int, dict[str, Any]]], *, seed_key: tuple[int, int],
                 temperature: float | None = None, group_size: int | None = None, what: str = "") -> WorkerCall:
        worker = self._calls % len(self.fleet)
        self._calls += 1
        options = {k: v for k, v in (("temperature", temperature), ("group_size", group_size)) if v is not None}
        return self.fleet.generate(worker, items, chunk_seed(self.config.seed, *seed_key),
                                   what=what or f"{len(items)} prompts", **options)

    def results(self, handles: list[WorkerCall | list[RolloutGroup]]) -> list[list[RolloutGroup]]:
        return [h if isinstance(h, list) else self.fleet.result(h) for h in handles]

    def score(self, groups: list[RolloutGroup]) -> list[list[list[float]]]:
        """Each learner rank scores a contiguous share; every rank gets the same number of groups
        (the last one repeated), since under ZeRO-3 each forward is a collective of all ranks."""
        if not groups:
            return []
        ranks = len(self.learners)
        share = -(-len(groups) // ranks)
        shares = [groups[r * share:(r + 1) * share] for r in range(ranks)]
        padded = [part + [groups[-1]] * (share - len(part)) for part in shares]
        scored = ray.get([learner.score.remote(part) for learner, part in zip(self.learners, padded)])
        return [logprobs for part, out in zip(shares, scored) for logprobs in out[:len(part)]]

    def log(self, text: str) -> None:
        self._log(text)
