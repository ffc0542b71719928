"""Micro-batches: packed by a padded-token budget (and optional sequence and per-rank caps), handed
round robin over learner ranks; extra rows on each rank's last micro-batch with the whole step's
totals; filler passes so that every rank takes part (and, under ZeRO-2/3, runs as many passes)."""

from __future__ import annotations

import pytest

from rlkit.config import ConfigError
from rlkit.data import Rollout, RolloutGroup
from rlkit.driver.micro_batches import MicroBatchFeed, MicroBatchLimits, MicroBatchPacker, pack, padded_tokens
from rlkit.validation import load_config


class FakeLearner:
    def __init__(self, rank: int, log: list):
        self.rank, self.log = rank, log
        self.train_micro_batch = self  # learner.train_micro_batch.remote(...)

    def remote(self, groups, extra=None, version=None, step_stats=None, filler=False):
        self.log.append((self.rank, [g.prompt_index for g in groups], len(extra or ()), step_stats, filler))
        return len(self.log)


def group(index: int, tokens: int, size: int = 2, prompt: int = 1) -> RolloutGroup:
    rollouts = [Rollout(completion_ids=[1] * tokens, behavior_logprobs=[0.0] * tokens, entropies=[0.0] * tokens,
                        text="", truncated=False) for _ in range(size)]
    return RolloutGroup(prompt_index=index, prompt="", prompt_ids=[1] * prompt, row={}, rollouts=rollouts,
                        policy_version=0)


def indices(micro_batches):
    return [[g.prompt_index for g in mb] for mb in micro_batches]


def test_padded_tokens_is_rows_times_longest_prompt_plus_longest_completion():
    # 2 + 3 rows; longest prompt 4, longest completion 6: 5 x 10
    assert padded_tokens([group(0, 6, size=2, prompt=1), group(1, 2, size=3, prompt=4)]) == 50
    assert padded_tokens([]) == 0


def test_groups_are_packed_until_the_next_would_pass_the_token_budget():
    groups = [group(0, 3), group(1, 3), group(2, 5), group(3, 1), group(4, 9)]
    # padded: {0,1} = 4 rows x 4 = 16; +{2} = 6 x 6 = 36 > 30 closes; {2,3} = 4 x 6 = 24; +{4} = 6 x 10 = 60
    assert indices(pack(groups, MicroBatchLimits(max_tokens=30))) == [[0, 1], [2, 3], [4]]
    # a group over the budget on its own is a micro-batch alone, never split
    assert indices(pack([group(0, 1), group(1, 40), group(2, 1)], MicroBatchLimits(max_tokens=30))) == [[0], [1], [2]]
    # the sequence cap and the per-rank group cap close micro-batches too
    assert indices(pack(groups, MicroBatchLimits(max_tokens=0, max_sequences=4))) == [[0, 1], [2, 3], [4]]
    assert indices(pack(groups, MicroBatchLimits(max_tokens=0, max_groups=3))) == [[0, 1, 2], [3, 4]]
    assert indices(pack(groups, MicroBatchLimits(max_tokens=0))) == [[0, 1, 2, 3, 4]]


def test_a_packer_closes_a_micro_batch_only_when_a_group_does_not_fit():
    packer = MicroBatchPacker(MicroBatchLimits(max_tokens=16))
    assert packer.add(group(0, 3)) is None and packer.add(group(1, 3)) is None
    assert indices([packer.add(group(2, 3))]) == [[0, 1]]
    assert indices([packer.flush()]) == [[2]] and packer.flush() is None


def test_limits_come_from_the_config_with_a_rank_share_only_for_several_ranks():
    config = load_config(None, {"learner.micro_batch_tokens": "4096", "learner.num_learners": "3",
                                "rollout.prompts_per_step": "32"})
    assert MicroBatchLimits.from_config(config) == MicroBatchLimits(max_tokens=4096, max_sequences=0, max_groups=11)
    assert MicroBatchLimits.from_config(load_config(None, {})).max_groups == 0


def test_a_budget_smaller_than_one_group_is_named_in_a_warning(caplog):
    with caplog.at_level("WARNING", logger="rlkit.config"):
        load_config(None, {"learner.micro_batch_tokens": "40"})
    assert "learner.micro_batch_tokens (40) may not hold one group" in caplog.text and "= 72 padded" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rlkit.config"):
        load_config(None, {})  # the default budget holds a default group
    assert "micro_batch_tokens" not in caplog.text
    with pytest.raises(ConfigError, match="learner.micro_batch_size"):
        load_config(None, {"learner.micro_batch_size": "12"})
    # prompts_per_step no longer has to divide into micro-batches
    load_config(None, {"learner.micro_batch_size": "24", "rollout.prompts_per_step": "5"})


def test_extra_rows_wait_for_the_whole_step_and_carry_its_totals():
    log: list = []
    learners = [FakeLearner(0, log), FakeLearner(1, log)]
    extras = [group(100 + i, tokens=3, size=1) for i in range(3)]
    feed = MicroBatchFeed(learners, MicroBatchLimits(max_tokens=0, max_groups=1), version=7, extras=lambda: extras)
    feed.add([group(0, 2), group(1, 4)])  # one closed micro-batch ({0}), held for rank 0; {1} still open
    assert log == []
    feed.add([group(2, 1)])  # closes {1} for rank 1 (held)
    feed.add([group(3, 5)])  # closes {2} for rank 0: rank 0's {0} goes, {2} is held in its place
    assert [(rank, idx, n) for rank, idx, n, _, _ in log] == [(0, [0], 0)]
    feed.finish()  # {3} for rank 1 releases {1}; then the last ones with extras 0, 2 | 1 and the totals
    assert [(rank, idx, n) for rank, idx, n, _, _ in log[1:]] == [(1, [1], 0), (0, [2], 2), (1, [3], 1)]
    totals = {"num_sequences": 8, "num_tokens": 2 * (2 + 4 + 1 + 5), "extra_sequences": 3, "extra_tokens": 9}
    assert log[2][3] == log[3][3] == totals and log[0][3] is None
    assert feed.step_stats(extras_count=True) == {**totals, "num_sequences": 11, "num_tokens": 33}


def test_without_extra_rows_nothing_is_held():
    log: list = []
    feed = MicroBatchFeed([FakeLearner(0, log), FakeLearner(1, log)], MicroBatchLimits(max_tokens=8), version=0)
    feed.add([group(0, 1), group(1, 1), group(2, 1)])  # {0,1} = 4 x 2 = 8 fits; +{2} = 12 closes it
    assert [(rank, idx, stats) for rank, idx, _, stats, _ in log] == [(0, [0, 1], None)]
    feed.add([group(3, 1)])
    feed.finish()
    assert [(rank, idx) for rank, idx, _, _, _ in log] == [(0, [0, 1]), (1, [2, 3])]


def test_every_rank_takes_part_and_zero_2_3_ranks_run_as_many_passes():
    def run(equal_passes: bool) -> list:
        log: list = []
        feed = MicroBatchFeed([FakeLearner(r, log) for r in range(3)], MicroBatchLimits(max_tokens=8),
                              version=0, equal_passes=equal_passes)
        # {0,1} = 4 rows x 2 = 8 fits the budget; each 3-token group (2 x 4 = 8) is alone
        feed.add([group(0, 1), group(1, 1), group(2, 1), group(3, 3), group(4, 3), group(5, 3)])
        feed.finish()
        return [(rank, idx, filler) for rank, idx, _, _, filler in log]

    real = [(0, [0, 1], False), (1, [2], False), (2, [3], False), (0, [4], False), (1, [5], False)]
    assert run(equal_passes=False) == real  # every rank already has a pass: nothing added
    # ZeRO-2/3: rank 2 ran one pass fewer; it gets one with the step's smallest group, marked filler
    assert run(equal_passes=True) == real + [(2, [0], True)]
    log: list = []
    feed = MicroBatchFeed([FakeLearner(r, log) for r in range(2)], MicroBatchLimits(max_tokens=0), version=0)
    feed.add([group(0, 2)])
    feed.finish()  # one micro-batch for two ranks: rank 1 joins the step's collectives with a filler
    assert [(rank, idx, filler) for rank, idx, _, _, filler in log] == [(0, [0], False), (1, [0], True)]
