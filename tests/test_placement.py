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
