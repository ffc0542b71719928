"""Cutting a step's groups into learner micro-batches, and handing them to the learner ranks.

The micro-batch is a memory knob and nothing else. A step's loss is normalized over the whole step
(``Objective.normalizer``) and its advantages come from the driver, so how the groups are cut
changes float summation order, not the update. The cut is therefore free to follow memory:

* ``learner.micro_batch_tokens``: a micro-batch closes when the next group would take its padded
  size past this many tokens. Padded size is what the learner's input tensor holds, sequences x
  (longest prompt + longest completion), an upper bound on what its forward pass touches (prompts
  shared within a group and packed completions compute less).
* ``learner.micro_batch_size``: and, when set, when it would pass this many sequences.
* With several learner ranks, never more than a rank's share of the step's groups, so that every
  rank has work even when the whole step would fit one micro-batch.

A group is never split (its prompt is scored once for its G completions); a group larger than the
budget is a micro-batch alone. Groups are packed in the order they arrive, so under
``periodic_async`` the first micro-batch trains while later groups still decode.

The optimizer step, not a micro-batch count, is the accumulation boundary (DeepSpeed's
``managed_gradient_accumulation: false``), so ranks may run different numbers of micro-batches.
Under ZeRO-2/3 every backward pass is a collective, though, and some losses sum a statistic over
the ranks in every micro-batch (``Objective.micro_batches_in_lockstep``: a search over all ranks'
tokens); there each rank that ran fewer gets filler passes (one small group of the step,
advantages and loss multiplied by zero) until all ranks ran the same number. Otherwise only a rank with no
micro-batch at all gets one, to join the step's gradient all-reduce.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import ray

from rlkit.config import RLConfig
from rlkit.data import RolloutGroup


@dataclass(frozen=True)
class MicroBatchLimits:
    max_tokens: int  # padded tokens; 0 = no cap
    max_sequences: int = 0  # 0 = no cap
    max_groups: int = 0  # a learner rank's share of the step, so that every rank has work; 0 = no cap

    @classmethod
    def from_config(cls, config: RLConfig) -> MicroBatchLimits:
        ranks = config.learner.num_learners
        share = -(-config.rollout.prompts_per_step // ranks) if ranks > 1 else 0
        return cls(max_tokens=config.learner.micro_batch_tokens, max_sequences=config.learner.micro_batch_size,
                   max_groups=share)


def padded_tokens(groups: list[RolloutGroup]) -> int:
    """Tokens of the learner's input for these groups: rows x (longest prompt + longest completion)."""
    if not groups:
        return 0
    rows = sum(len(g.rollouts) for g in groups)
    prompt = max(len(g.prompt_ids) for g in groups)
    completion = max((len(r.completion_ids) for g in groups for r in g.rollouts), default=0)
    return rows * (prompt + completion)


class MicroBatchPacker:
    """Greedy packing in arrival order: a micro-batch closes when the next group would pass a limit."""

    def __init__(self, limits: MicroBatchLimits):
        self.limits = limits
        self.open: list[RolloutGroup] = []

    def add(self, group: RolloutGroup) -> list[RolloutGroup] | None:
        """Take one group; return the micro-batch it closed, if it closed one."""
        closed = None
        if self.open and not self._fits([*self.open, group]):
            closed, self.open = self.open, []
        self.open.append(group)
        return closed

    def flush(self) -> list[RolloutGroup] | None:
        closed, self.open = self.open or None, []
        return closed

    def _fits(self, groups: list[RolloutGroup]) -> bool:
        limits = self.limits
        if limits.max_groups and len(groups) > limits.max_groups:
            return False
        if limits.max_sequences and sum(len(g.rollouts) for g in groups) > limits.max_sequences:
            return False
        return not limits.max_tokens or padded_tokens(groups) <= limits.max_tokens


def pack(groups: list[RolloutGroup], limits: MicroBatchLimits) -> list[list[RolloutGroup]]:
    """All of ``groups`` cut into micro-batches, as the feed would cut them arriving in this order."""
    packer = MicroBatchPacker(limits)
    out = [mb for mb in map(packer.add, groups) if mb]
    last = packer.flush()
    return out + [last] if last else out


class MicroBatchFeed:
    """Hands one step's groups to the learners as they arrive, micro-batch by micro-batch, round
    robin over the ranks; :meth:`finish` once the step's last group is in.

    ``extras`` (resolved at :meth:`finish`) are the objective's extra rows of the step: they ride
    with each rank's last micro-batch. Each rank's latest micro-batch is therefore held back until
    a later one for the same rank exists or the step is complete, and the last ones go with the
    step's totals (``step_stats``: the step's own rows and the extra rows apart), so that a loss may
    weigh the two kinds of row by the whole step's counts. Without extras nothing is held.
    ``equal_passes`` (ZeRO-2/3, or a loss that reduces over ranks) tops every rank up to the same
    number of passes.
    """

    def __init__(self, learners: list, limits: MicroBatchLimits, version: int,
                 extras: Callable[[], list[RolloutGroup]] | None = None, equal_passes: bool = False):
        self.learners, self.version = learners, version
        self.packer = MicroBatchPacker(limits)
        self._resolve_extras = extras
        self.equal_passes = equal_passes
        self.extras: list[RolloutGroup] = []
        self.held: dict[int, list[RolloutGroup]] = {}  # rank -> its latest micro-batch, with extras on
        self.passes = [0] * len(learners)  # micro-batches given to each rank
        self.groups: list[RolloutGroup] = []
        self.calls: list[ray.ObjectRef] = []

    def add(self, groups: list[RolloutGroup]) -> None:
        for group in groups:
            self.groups.append(group)
            closed = self.packer.add(group)
            if closed:
                self._route(closed)

    def finish(self) -> None:
        """The step is complete: send what is left, with the extra rows and the step's totals."""
        last = self.packer.flush()
        if last:
            self._route(last)
        if self._resolve_extras is not None:
            self.extras = self._resolve_extras()
            stats = self.step_stats()
            holders = sorted(self.held)
            for offset, rank in enumerate(holders):
                self.calls.append(self.learners[rank].train_micro_batch.remote(
                    self.held[rank], self.extras[offset::len(holders)], version=self.version, step_stats=stats))
            self.held = {}
        # every rank takes part in the step's collectives: at least one pass each, and under
        # ZeRO-2/3 (a collective in every backward) as many passes as the busiest rank
        target = max(self.passes) if self.equal_passes else 1
        if self.groups and min(self.passes) < target:
            smallest = min(self.groups, key=lambda g: padded_tokens([g]))
            for rank, count in enumerate(self.passes):
                for _ in range(target - count):
                    self.calls.append(self.learners[rank].train_micro_batch.remote(
                        [smallest], version=self.version, filler=True))

    def _route(self, micro_batch: list[RolloutGroup]) -> None:
        rank = sum(self.passes) % len(self.learners)
        self.passes[rank] += 1
        if self._resolve_extras is not None:
            micro_batch, self.held[rank] = self.held.get(rank), micro_batch
            if micro_batch is None:
                return
        self.calls.append(self.learners[rank].train_micro_batch.remote(micro_batch, version=self.version))

    def step_stats(self, extras_count: bool = False) -> dict[str, int]:
        """The step's totals: its own rows, and the extra rows apart (and in the totals when
        ``extras_count``: ExtraRows.counts_in_step_stats)."""
        extra_sequences = sum(len(g.rollouts) for g in self.extras)
        extra_tokens = sum(g.num_tokens for g in self.extras)
        return {"num_sequences": sum(len(g.rollouts) for g in self.groups) + extras_count * extra_sequences,
                "num_tokens": sum(g.num_tokens for g in self.groups) + extras_count * extra_tokens,
                "extra_sequences": extra_sequences, "extra_tokens": extra_tokens}
