"""Per-role resources and the refusal of a run the cluster cannot hold, named by what is short."""

from __future__ import annotations

import pytest

from rlkit import placement
from rlkit.config import ConfigError
from rlkit.placement import Demand, check_placeable


@pytest.fixture
def two_nodes(monkeypatch):
    monkeypatch.setattr(placement.ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    monkeypatch.setattr(placement.ray, "nodes", lambda: [
        {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 4.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])  # a dead node counts for nothing


def test_a_run_that_fits_passes(two_nodes):
    check_placeable([Demand("learner", 2, 2.0, 0.5), Demand("rollout worker", 4, 1.0, 0.25)])


def test_too_many_cpus_in_total_are_named(two_nodes):
    with pytest.raises(ConfigError, match=r"it needs 10 CPUs, the cluster has 8 \(2 learners x 1 CPU, 8 rollout "
                                          r"workers x 1 CPU\)"):
        check_placeable([Demand("learner", 2, 1.0, 0.0), Demand("rollout worker", 8, 1.0, 0.0)])


def test_an_actor_larger_than_any_node_is_named(two_nodes):
    with pytest.raises(ConfigError, match="a learner needs 1 CPU and 2 GPU on one node, and no node has that much"):
        check_placeable([Demand("learner", 1, 1.0, 2.0)])
    with pytest.raises(ConfigError, match=r"it needs 3 GPUs, the cluster has 2"):
        check_placeable([Demand("learner", 3, 1.0, 1.0)])


def test_the_pack_placement_group_holds_every_actor_and_a_run_uses_it(tmp_path):
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    config = load_config(None, {"max_steps": "2", "save_steps": "0", "data.eval_limit": "20", "output_dir": str(tmp_path),
                                "rollout.prompts_per_step": "8", "rollout.num_workers": "2",
                                "cluster.placement": "pack", "cluster.worker_cpus": "0.5",
                                "logging.progress": "false", "logging.tensorboard": "false"})
    summary = RLTrainer(args=config).train()
    assert summary["steps"] == 2 and len(read_metrics(tmp_path / "metrics.jsonl")) == 2


def test_reward_actors_reserve_what_cluster_reward_cpus_says_and_count_in_the_refusal(two_nodes):
    from rlkit.cluster import reward_actors_per_worker
    from rlkit.validation import load_config

    config = load_config(None, {"rewards.num_workers": "2"})
    # a pool of min(2, 3) actors for the rewards, and min(2, 1) for evaluation's own
    assert reward_actors_per_worker(config, ["a", "b", "c"], ["exact"]) == 3
    assert reward_actors_per_worker(config, ["a"], None) == 1
    assert reward_actors_per_worker(load_config(None, {"rewards.num_workers": "0"}), ["a"], ["b"]) == 0
    check_placeable([Demand("rollout worker", 4, 1.0, 0.0), Demand("reward actor", 8, 0.0, 0.0)])  # reserve nothing
    with pytest.raises(ConfigError, match=r"it needs 12 CPUs, the cluster has 8 \(4 rollout workers x 1 CPU, "
                                          r"8 reward actors x 1 CPU\)"):
        check_placeable([Demand("rollout worker", 4, 1.0, 0.0), Demand("reward actor", 8, 1.0, 0.0)])


def test_a_reward_pool_actor_holds_its_cpus_while_it_lives():
    import ray

    from rlkit.config import RewardsConfig
    from rlkit.reward_pool import RewardPool, build_reward_scorer

    def one(prompts, completions, **kwargs):
        return [1.0] * len(completions)

    def assigned(actor) -> dict:
        return ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_assigned_resources()))

    with build_reward_scorer([("one", one)], None, RewardsConfig(num_workers=1), cpus=1.5) as pool:
        assert isinstance(pool, RewardPool)
        assert assigned(pool._actors[0]) == {"CPU": 1.5}
        assert pool.score(["p"], ["c"], [[1]], [{}]).totals == [1.0]
    with build_reward_scorer([("one", one)], None, RewardsConfig(num_workers=1)) as pool:
        assert assigned(pool._actors[0]) == {}  # by default a reward actor reserves nothing
