"""A third objective, written in this file alone, uses both hooks of the Objective contract.

``EchoGRPO`` is GRPO that also trains on extra rows it makes itself (each step, two fresh
samples of the step's first prompt at a hotter temperature) and keeps driver state (a count of
the steps it has observed, and their summed entropy). Nothing outside this file knows it: the run
names it as ``tests/test_objective_hooks.py:EchoGRPO``, and the learners load it the same way.
"""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from rlkit.objectives.grpo import GRPO
from rlkit.objectives.hooks import DriverState, ExtraRows, RunAccess

pytestmark = pytest.mark.slow

EXTRA_PER_STEP = 2
HOT = 1.5


class EchoRows(ExtraRows):
    """Keeps the first half of the training rows; each step resamples its first prompt at HOT."""

    def __init__(self, run: RunAccess):
        self.run = run
        self.pending: dict[int, Any] = {}
        self.submitted: list[int] = []

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.kept = rows[: len(rows) // 2]
        return self.kept

    def submit(self, step: int, items: list[tuple[int, dict[str, Any]]]) -> None:
        self.submitted.append(step)
        self.pending[step] = self.run.generate(items[:1], seed_key=(step, 55), temperature=HOT,
                                               group_size=EXTRA_PER_STEP, what="echo rows")

    def rows(self, step: int):
        (groups,) = self.run.results([self.pending.pop(step)])
        assert len(groups) == 1 and len(groups[0].rollouts) == EXTRA_PER_STEP
        # the step's prompts come from the rows prepare() kept (a failed assert here fails the run)
        assert groups[0].row in self.kept
        return groups[0].one_row_groups(list(range(EXTRA_PER_STEP)), source="echo")

    def state_dict(self) -> dict[str, Any]:
        steps = list(self.pending)
        self.pending = dict(zip(steps, self.run.results([self.pending[s] for s in steps])))
        return {"pending": dict(self.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pending = dict(state["pending"])


class StepCount(DriverState):
    def __init__(self):
        self.steps, self.entropy_sum = 0, 0.0

    def observe(self, step_stats: dict[str, float]) -> dict[str, float]:
        self.steps += 1
        self.entropy_sum += step_stats["entropy"]
        return {"echo_steps": float(self.steps), "echo_entropy_sum": self.entropy_sum}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "entropy_sum": self.entropy_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.entropy_sum = state["steps"], state["entropy_sum"]


class EchoGRPO(GRPO):
    name = "echo_grpo"

    def extra_rows(self, run: RunAccess) -> ExtraRows:
        return EchoRows(run)

    def driver_state(self) -> DriverState:
        return StepCount()

    def loss_sum(self, batch):
        loss, metrics = super().loss_sum(batch)
        # rows the learner joined through combine_extra, per loss token (the step's mean is exact)
        extra = 0.0 if batch.extra is None else float((batch.mask * batch.extra.unsqueeze(1)).sum())
        metrics["echo_extra_token_share"] = extra / float(batch.mask.sum())
        return loss, metrics


def test_a_third_objective_uses_both_hooks_with_no_change_outside_its_file(tmp_path):
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    settings = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false",
                "data.eval_limit": "20", "objective.name": f"{__file__}:EchoGRPO", "rollout.prompts_per_step": "8",
                "learner.num_learners": "2", "save_steps": "1", "output_dir": str(tmp_path / "run")}
    RLTrainer(args=load_config(None, {**settings, "max_steps": "2"})).train()
    run = tmp_path / "run"
    metrics = read_metrics(run / "metrics.jsonl")
    # extra rows: two a step, split over the two learner ranks, joined to the loss's batch
    assert [m["extra_rows"] for m in metrics] == [EXTRA_PER_STEP, EXTRA_PER_STEP]
    assert all(0 < m["echo_extra_token_share"] < 1 for m in metrics)
    # driver state: observed once a step, with the step's entropy over both ranks
    assert [m["echo_steps"] for m in metrics] == [1.0, 2.0]
    assert metrics[1]["echo_entropy_sum"] == pytest.approx(metrics[0]["entropy"] + metrics[1]["entropy"], rel=1e-6)
    # ... and checkpointed once, with the driver (step 1: the only checkpoint before the end)
    with open(run / "checkpoints" / "step-000001" / "driver.pkl", "rb") as f:
        driver = pickle.load(f)
    assert driver["pipeline"]["objective"] == {"steps": 1, "entropy_sum": pytest.approx(metrics[0]["entropy"])}
    # step 2's generation was submitted before the checkpoint: its extra rows are kept as generated
    (pending,) = driver["pipeline"]["extras"]["pending"].values()
    assert len(pending) == 1 and len(pending[0].rollouts) == EXTRA_PER_STEP

    # resumed from step 1 for two more steps: the driver state goes on from the checkpoint
    resumed = RLTrainer.from_run(run, {"max_steps": "3"})
    resumed.train(resume=True)
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["echo_steps"] for m in metrics] == [1.0, 2.0, 3.0]
