"""The learner in-process: skipping groups that carry no gradient, cutting the step into other
micro-batches, and filler passes all leave the update unchanged."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from rlkit import models
from rlkit.validation import load_config
from rlkit.learner.learner import Learner
from rlkit.rollout.worker import RolloutWorker
from rlkit.trainer import RLTrainer


@pytest.fixture(scope="module")
def config_and_groups():
    config = load_config(None, {"learner.micro_batch_size": "16"})
    trainer = RLTrainer(args=config)
    worker = RolloutWorker(config, trainer.reward_funcs, threads=0)
    groups = worker.generate_groups(list(enumerate(trainer.train_rows[:4])), seed=3)
    # two groups every completion of which scored the same (all right, all wrong), two mixed
    for group, rewards in zip(groups, ([1.0] * 8, [0.0] * 8, [1.0, 0.0] * 4, [0.0] * 7 + [1.0])):
        for rollout, reward in zip(group.rollouts, rewards):
            rollout.reward = reward
    return config, groups


def one_update(config, groups, *, skip: bool) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    learner = Learner(config, rank=0, world_size=1, threads=0)
    learner.connect(*learner.rendezvous_address(loopback=True))
    if not skip:
        learner.objective.zero_advantage_is_inert = lambda: False
    learner.train_micro_batch(groups[:2])  # both inert: one is trained anyway, one skipped
    learner.train_micro_batch(groups[2:])
    out = learner.step({"num_sequences": 32, "num_tokens": sum(g.num_tokens for g in groups)}, 0)
    weights = {k: v.detach().clone() for k, v in learner.engine.module.state_dict().items()}
    return weights, out


def accumulated(config, groups, cut, fillers: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The gradient and totals a learner accumulates over ``cut`` (after ``fillers`` filler passes),
    with the policy in float64 so that what differs between cuts is not float summation order."""
    learner = Learner(config, rank=0, world_size=1, threads=0)
    load = models.load_model
    with mock.patch.object(models, "load_model", lambda *a, **k: load(*a, **k).double()):
        learner.connect(*learner.rendezvous_address(loopback=True))
    learner.objective.zero_advantage_is_inert = lambda: False
    for _ in range(fillers):  # a filler pass (a ZeRO-2/3 rank's top-up) on a group that carries gradient
        learner.train_micro_batch(groups[2:3], filler=True)
    for start, end in cut:
        learner.train_micro_batch(groups[start:end])
    gradients = {name: p.grad.detach().clone() for name, p in learner.engine.module.named_parameters()
                 if p.grad is not None}
    return gradients, dict(learner._sums)


def test_skipping_zero_advantage_groups_leaves_the_update_and_metrics_unchanged(config_and_groups):
    config, groups = config_and_groups
    full_weights, full = one_update(config, groups, skip=False)
    fast_weights, fast = one_update(config, groups, skip=True)
    assert full["skipped_groups"] == 0 and fast["skipped_groups"] == 1
    assert fast["trained_tokens"] == full["trained_tokens"] - groups[1].num_tokens
    assert fast["tokens"] == full["tokens"] == sum(g.num_tokens for g in groups)
    assert full["grad_norm"] > 0
    assert fast["grad_norm"] == pytest.approx(full["grad_norm"], rel=1e-5)
    assert fast["loss_sum"] == pytest.approx(full["loss_sum"], abs=1e-6)
    # the skipped group's entropy comes from the rollout: the same policy at the same temperature
    assert fast["entropy_sum"] == pytest.approx(full["entropy_sum"], rel=1e-4)
    for name, value in full_weights.items():
        torch.testing.assert_close(fast_weights[name], value, atol=1e-6, rtol=1e-5)


def test_objectives_with_a_kl_term_train_every_group():
    from rlkit.objectives import objective_from_config

    assert objective_from_config("grpo", {"beta": 0.04}).zero_advantage_is_inert() is False
    assert objective_from_config("grpo", {}).zero_advantage_is_inert() is True



def test_the_update_does_not_depend_on_how_the_step_is_cut(config_and_groups):
    """The micro-batch is a memory knob: one micro-batch of four groups, four of one, and a cut
    with two filler passes in front all accumulate the same gradient and step totals. (In float32
    the packed scoring's attention makes a small weight's gradient differ by up to 0.3% of its norm
    between cuts: summation order, gone in float64.)"""
    config, groups = config_and_groups
    whole, whole_sums = accumulated(config, groups, cut=((0, 4),))
    for cut, fillers in ((((0, 1), (1, 2), (2, 3), (3, 4)), 0), (((0, 2), (2, 4)), 2)):
        gradients, sums = accumulated(config, groups, cut, fillers)
        assert gradients.keys() == whole.keys()
        for name, value in whole.items():
            assert (gradients[name] - value).norm() <= 1e-9 * value.norm(), name
        for key in ("tokens", "trained_tokens", "entropy_sum"):
            assert sums[key] == pytest.approx(whole_sums[key], rel=1e-6), key
        # on-policy the loss is -sum(A) x ratio 1, about 0: the float32 head's noise is what is left
        assert sums["loss_sum"] == pytest.approx(whole_sums["loss_sum"], abs=1e-5)
