"""The two hooks through which an objective reaches past its loss, and what the run offers them.

* :class:`ExtraRows` (``Objective.extra_rows``): sequences the objective trains on besides the
  step's groups. It may narrow the training prompts before the first step (:meth:`ExtraRows.prepare`),
  hears about each step's prompts when their generation is submitted (:meth:`ExtraRows.submit`)
  and hands the step's extra rows over when the step's last micro-batches go to the learners
  (:meth:`ExtraRows.rows`).
* :class:`DriverState` (``Objective.driver_state``): state kept once, on the driver, updated from
  each step's statistics (reduced over learner ranks) and checkpointed with the driver's state.

Both run on the driver and reach the actors only through :class:`RunAccess`, so an objective's
file holds its whole story and the pipeline, trainer and learner never name an objective.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rlkit.config import RLConfig
    from rlkit.data import RolloutGroup


class GenerationHandle(Protocol):
    """An in-flight generation call; :meth:`RunAccess.results` turns it into groups."""


class RunAccess(Protocol):
    """What the run offers an objective's hooks on the driver."""

    config: RLConfig
    run_dir: Path

    def generate(self, items: list[tuple[int, dict[str, Any]]], *, seed_key: tuple[int, int],
                 temperature: float | None = None, group_size: int | None = None, what: str = "") -> GenerationHandle:
        """Sample groups for ``(prompt_index, row)`` items with the current weights, rewards scored.

        ``seed_key`` fixes the sampling seed (with the run's seed), so a resumed or repeated run
        samples the same; ``temperature`` and ``group_size`` default to the rollout config's. The
        call is sent again, with the same seed, if its worker dies meanwhile.
        """

    def results(self, handles: list[GenerationHandle | list[RolloutGroup]]) -> list[list[RolloutGroup]]:
        """The groups of each call (a list of groups passes through: what a checkpoint restored)."""

    def score(self, groups: list[RolloutGroup]) -> list[list[list[float]]]:
        """Per-token log-probs of every completion under the learners' current weights (at the
        rollout temperature), as ``[group][rollout][token]``; the learner ranks share the work."""

    def log(self, text: str) -> None:
        """A line for the user (the console of ``rlkit train``)."""


class ExtraRows:
    """Rows an objective trains on besides the step's groups, made on the driver.

    The rows are one-row :class:`RolloutGroup`s. They ride with each learner rank's last
    micro-batch of the step; the learner scores them like its own samples and the objective's
    ``combine_extra`` joins them to the micro-batch (marked in ``PolicyBatch.extra``).
    """

    # whether the rows count in the step's StepStats (the normalizer's sequences and tokens)
    counts_in_step_stats: bool = False

    def prepare(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Before the first step (and again on resume): the training rows the run samples from."""
        return rows

    def submit(self, step: int, items: list[tuple[int, dict[str, Any]]]) -> None:
        """The step's prompts, as their generation is submitted (before the step trains)."""
        del step, items

    def rows(self, step: int) -> list[RolloutGroup]:
        """The step's extra rows (called once per step, on the driver)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state


class DriverState:
    """An objective's state that lives once, on the driver (a controller, a schedule).

    :meth:`observe` takes each step's statistics reduced over the learner ranks (``loss``,
    ``entropy``, the objective's own metrics...) and returns values to log with the step.
    """

    def observe(self, step_stats: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state
