"""Reward execution: a reward that raises, hangs, dies or returns junk is a counted failure with its
sample kept, the other rewards still count with their weights, and the next call works again.
Run for the Ray actor pool (num_workers >= 1) and in-process (num_workers = 0)."""

from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest
import ray

from rlkit.config import RewardsConfig
from rlkit.validation import load_config
from rlkit.reward_pool import RewardPool, build_reward_scorer
from rlkit.reward_runner import RewardRunner, resolve_reward_funcs


@pytest.fixture(scope="module", autouse=True)
def ray_session():
    from rlkit.cluster import start_ray

    started = start_ray(load_config(None, {}))  # the project's in-process cluster: 2 CPUs on loopback
    # Ray's workers cannot import this test module: ship its reward functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    if started:
        ray.shutdown()


def exact(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def flaky(prompts, completions, mode, **kwargs):
    """Misbehaves as the batch's ``mode`` column says; otherwise scores 1.0 when the completion is short."""
    mode = mode[0]
    if mode == "raise":
        raise ValueError("bad reward")
    if mode == "hang":
        time.sleep(60)
    if mode == "exit":
        os._exit(1)
    values = [float(len(c) <= 2) for c in completions]
    if mode == "short":
        return values[:-1]
    if mode in ("string", "nan", "none"):
        values[1] = {"string": "oops", "nan": math.nan, "none": None}[mode]
    return values


def batch(mode: str):
    rows = [{"prompt": "2+3=", "answer": "5", "mode": mode, "meta": {1, 2}}] * 3  # a set: not JSON
    return ["2+3="] * 3, ["5", "55", "6"], [[7], [7, 7], [8]], rows


WEIGHTS = [2.0, 0.5]
# exact: 1, 0, 0; flaky when well-behaved: 1, 1, 1 -> totals 2*exact + 0.5*flaky
GOOD_TOTALS = [2.5, 0.5, 0.5]


@pytest.fixture(scope="module", params=[0, 1, 2], ids=["inline", "pool1", "pool2"])
def scorer(request):
    # long enough that no well-behaved call on a busy machine runs into it; the hanging reward sleeps 60 s
    config = RewardsConfig(timeout_s=5.0, num_workers=request.param)
    scorer = build_reward_scorer([("exact", exact), ("flaky", flaky)], WEIGHTS, config)
    assert isinstance(scorer, RewardRunner if request.param == 0 else RewardPool)
    yield scorer
    scorer.close()


def test_weighted_totals_are_the_hand_computed_ones(scorer):
    outcome = scorer.score(*batch("ok"))
    assert outcome.totals == GOOD_TOTALS
    assert outcome.components == [{"exact": 1.0, "flaky": 1.0}, {"exact": 0.0, "flaky": 1.0},
                                  {"exact": 0.0, "flaky": 1.0}]
    assert outcome.failures == {} and outcome.failure_examples == []


@pytest.mark.parametrize("mode, error", [("raise", "ValueError: bad reward"), ("hang", "timeout after 5s"),
                                         ("short", "expected a list of 3 numbers, got list of length 2"),
                                         ("exit", "reward process died")])
def test_a_failed_call_counts_once_keeps_the_sample_and_the_next_call_works(scorer, mode, error, caplog):
    if mode == "exit" and isinstance(scorer, RewardRunner):
        pytest.skip("os._exit in-process would end the test run itself")
    with caplog.at_level("WARNING", logger="rlkit.rewards"):
        outcome = scorer.score(*batch(mode))
    assert f"reward 'flaky' failed on a batch of 3: {error}" in caplog.text
    assert outcome.failures == {"flaky": 1}
    assert outcome.totals == [2.0, 0.0, 0.0]  # exact still counts, with its weight
    assert [c["flaky"] for c in outcome.components] == [None] * 3
    (example,) = outcome.failure_examples
    assert example["reward"] == "flaky" and example["error"].startswith(error)
    assert example["scope"] == "call" and example["prompt"] == "2+3=" and example["completion"] == "5"
    assert example["row"]["mode"] == mode
    json.dumps(example)
    assert scorer.score(*batch("ok")).totals == GOOD_TOTALS  # the hung or dead actor was replaced


@pytest.mark.parametrize("mode, error", [("string", "non-numeric value 'oops'"), ("nan", "non-finite value nan")])
def test_a_bad_value_counts_for_its_completion_only(scorer, mode, error):
    outcome = scorer.score(*batch(mode))
    assert outcome.failures == {"flaky": 1}
    assert outcome.totals == [2.5, 0.0, 0.5]
    assert outcome.components[1] == {"exact": 0.0, "flaky": None}
    (example,) = outcome.failure_examples
    assert example == {"reward": "flaky", "error": error, "scope": "item", "index": 1, "batch_size": 3,
                       "prompt": "2+3=", "completion": "55", "row": {"prompt": "2+3=", "answer": "5", "mode": mode,
                                                                     "meta": "{1, 2}"}}


def test_none_means_not_applicable_and_is_no_failure(scorer):
    outcome = scorer.score(*batch("none"))
    assert outcome.totals == [2.5, 0.0, 0.5] and outcome.failures == {}
    assert outcome.components[1] == {"exact": 0.0, "flaky": None}


@pytest.mark.parametrize("mode", ["hang", "exit"])
def test_calls_queued_behind_a_killed_call_run_on_the_replacement(mode):
    config = RewardsConfig(timeout_s=5.0, num_workers=1)  # one actor: exact waits behind flaky
    with build_reward_scorer([("flaky", flaky), ("exact", exact)], [0.5, 2.0], config) as pool:
        outcome = pool.score(*batch(mode))
        assert outcome.failures == {"flaky": 1} and outcome.totals == [2.0, 0.0, 0.0]
        assert pool.score(*batch("ok")).totals == GOOD_TOTALS


def test_weights_must_match_the_functions():
    with pytest.raises(ValueError, match="rewards.weights has 3 entries for 2 reward functions"):
        build_reward_scorer([("exact", exact), ("flaky", flaky)], [1.0, 1.0, 1.0], RewardsConfig(num_workers=0))


class Contains:
    """A class-based reward plugin: built with its ``rewards.args``."""

    def __init__(self, needle: str):
        self.needle = needle

    def __call__(self, prompts, completions, **kwargs):
        return [float(self.needle in c) for c in completions]


def test_references_and_classes_are_resolved_where_the_rewards_run(tmp_path):
    plugin = tmp_path / "my_rewards.py"
    plugin.write_text("class Contains:\n    def __init__(self, needle):\n        self.needle = needle\n"
                      "    def __call__(self, prompts, completions, **kwargs):\n"
                      "        return [float(self.needle in c) for c in completions]\n")
    funcs = [("contains", f"{plugin}:Contains"), ("local", Contains)]
    args = {"contains": {"needle": "5"}, "local": {"needle": "6"}}
    assert [name for name, _ in resolve_reward_funcs(funcs, args)] == ["contains", "local"]
    with build_reward_scorer(funcs, [1.0, 10.0], RewardsConfig(num_workers=1, args=args)) as pool:
        assert pool.score(*batch("ok")).totals == [1.0, 1.0, 10.0]


def test_an_actor_out_of_reach_is_waited_for_and_the_call_sent_again(monkeypatch):
    """ActorUnavailableError (a network hiccup: reward actors are never restarted by Ray) is no
    failure: the pool waits until the actor answers and sends the same call to it again."""
    config = RewardsConfig(timeout_s=30.0, num_workers=1)
    with build_reward_scorer([("exact", exact), ("flaky", flaky)], WEIGHTS, config) as pool:
        real_get, lost = ray.get, []

        def get_losing_the_first_result(refs, *args, **kwargs):
            if not lost and isinstance(refs, ray.ObjectRef) and not args and not kwargs:
                lost.append(refs)
                raise ray.exceptions.ActorUnavailableError("connection reset", None)
            return real_get(refs, *args, **kwargs)

        monkeypatch.setattr(ray, "get", get_losing_the_first_result)
        outcome = pool.score(*batch("ok"))
    assert lost and outcome.totals == GOOD_TOTALS and outcome.failures == {}
    (retry,) = outcome.retries
    assert retry["kind"] == "actor_retry" and retry["actor"] == "reward actor 0" and retry["call"] == "exact"
    assert retry["error"] == "ActorUnavailableError" and not retry["restarted"] and retry["waited_s"] >= 0


def test_a_call_whose_actor_was_lost_with_its_node_is_sent_to_the_replacement(monkeypatch):
    """An actor that died with its node is not the reward's doing: the call goes to the replacement
    and scores as if nothing happened (a process that died on a live node is a failure, above)."""
    import rlkit.reward_pool as reward_pool

    config = RewardsConfig(timeout_s=30.0, num_workers=1)
    with build_reward_scorer([("exact", exact), ("flaky", flaky)], WEIGHTS, config) as pool:
        lost_node = pool._nodes[0]
        monkeypatch.setattr(reward_pool, "_node_alive", lambda node: node != lost_node)
        ray.kill(pool._actors[0], no_restart=True)  # as the node's loss would
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the kill lands asynchronously: wait until it has
            try:
                ray.get(pool._actors[0].__ray_ready__.remote(), timeout=30)
            except ray.exceptions.ActorDiedError:
                break
            time.sleep(0.05)
        outcome = pool.score(*batch("ok"))
    assert outcome.totals == GOOD_TOTALS and outcome.failures == {}
    (retry,) = outcome.retries
    assert retry["actor"] == "reward actor 0" and retry["call"] == "exact" and retry["restarted"] and retry["replaced"]
    assert retry["detail"].startswith("its node was lost")
