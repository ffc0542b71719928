"""How actors ask Ray for GPUs: every request must fit the cluster, learners never share a GPU."""

from __future__ import annotations

import pytest

from rlkit.cluster import gpu_shares
from rlkit.config import ConfigError


def first_fit(gpus: int, learners: int, workers: int) -> list[list[str]]:
    """Place the actors the way Ray packs fractional GPUs (first fit); fail when one cannot be placed."""
    learner_share, worker_share = gpu_shares(gpus, learners, workers)
    free = [1.0] * gpus
    placed: list[list[str]] = [[] for _ in range(gpus)]
    for name, share in [("learner", learner_share)] * learners + [("worker", worker_share)] * workers:
        slot = next((i for i in range(gpus) if free[i] >= share - 1e-9), None)
        assert slot is not None, f"a {name} asking for {share} GPU would wait forever"
        free[slot] -= share
        placed[slot].append(name)
    return placed


@pytest.mark.parametrize("gpus, learners, workers", [
    (1, 1, 1), (1, 1, 3), (2, 2, 1), (2, 2, 2), (2, 2, 5), (4, 2, 2), (4, 2, 6), (8, 4, 4), (3, 1, 7),
])
def test_every_actor_fits_and_no_gpu_holds_two_learners(gpus, learners, workers):
    placed = first_fit(gpus, learners, workers)
    assert all(device.count("learner") <= 1 for device in placed)


def test_enough_gpus_means_a_whole_gpu_each():
    assert gpu_shares(4, 2, 2) == (1.0, 1.0)
    assert gpu_shares(1, 1, 1) == (0.5, 0.5)


def test_fewer_gpus_than_learner_ranks_is_refused_with_the_key_to_change():
    with pytest.raises(ConfigError, match="learner.num_learners=2 needs 2 GPUs"):
        gpu_shares(1, 2, 1)
