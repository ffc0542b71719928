"""MicroBatchFeed: round robin over learner ranks, extra rows on each rank's last micro-batch, and the
whole step's totals sent with them (the last round is held until every group of the step is in)."""

from __future__ import annotations

from rlkit.data import Rollout, RolloutGroup
from rlkit.driver.pipeline import MicroBatchFeed


class FakeLearner:
    def __init__(self, rank: int, log: list):
        self.rank, self.log = rank, log
        self.train_micro_batch = self  # learner.train_micro_batch.remote(...)

    def remote(self, groups, extra=None, version=None, step_stats=None):
        self.log.append((self.rank, [g.prompt_index for g in groups], len(extra or ()), step_stats))
        return len(self.log)


def group(index: int, tokens: int, size: int = 2) -> RolloutGroup:
    rollouts = [Rollout(completion_ids=[1] * tokens, behavior_logprobs=[0.0] * tokens, entropies=[0.0] * tokens,
                        text="", truncated=False) for _ in range(size)]
    return RolloutGroup(prompt_index=index, prompt="", prompt_ids=[1], row={}, rollouts=rollouts, policy_version=0)


def test_extra_rows_wait_for_the_whole_step_and_carry_its_totals():
    log: list = []
    learners = [FakeLearner(0, log), FakeLearner(1, log)]
    extras = [group(100 + i, tokens=3, size=1) for i in range(3)]
    feed = MicroBatchFeed(learners, size=1, total_groups=4, version=7, extras=lambda: extras)
    feed.add([group(0, 2), group(1, 4)])  # two micro-batches: the first round goes at once
    assert [(rank, idx) for rank, idx, _, _ in log] == [(0, [0]), (1, [1])]
    feed.add([group(2, 1)])  # the last round's first micro-batch is held ...
    assert len(log) == 2
    feed.add([group(3, 5)])  # ... until the step's last group is in
    assert [(rank, idx, n) for rank, idx, n, _ in log[2:]] == [(0, [2], 2), (1, [3], 1)]  # extras 0, 2 | 1
    totals = {"num_sequences": 8, "num_tokens": 2 * (2 + 4 + 1 + 5), "extra_sequences": 3, "extra_tokens": 9}
    assert log[2][3] == log[3][3] == totals
    assert feed.step_stats(extras_count=True) == {**totals, "num_sequences": 11, "num_tokens": 33}


def test_without_extra_rows_nothing_is_held():
    log: list = []
    feed = MicroBatchFeed([FakeLearner(0, log), FakeLearner(1, log)], size=2, total_groups=4, version=0)
    feed.add([group(0, 1), group(1, 1), group(2, 1)])
    assert [(rank, idx, stats) for rank, idx, _, stats in log] == [(0, [0, 1], None)]
    feed.add([group(3, 1)])
    assert [(rank, idx) for rank, idx, _, _ in log] == [(0, [0, 1]), (1, [2, 3])]
