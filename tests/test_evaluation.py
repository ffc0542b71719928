"""Evaluation beyond greedy pass rate: sampled pass@k with the unbiased estimator."""

from __future__ import annotations

import pytest

from rlkit.validation import load_config
from rlkit.trainer import RLTrainer


def test_unbiased_pass_at_k_by_hand():
    from rlkit.rollout.worker import unbiased_pass_at_k

    assert unbiased_pass_at_k(4, 0, 2) == 0.0
    assert unbiased_pass_at_k(4, 3, 2) == 1.0  # only one wrong: any two hold a right one
    assert unbiased_pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert unbiased_pass_at_k(16, 4, 1) == pytest.approx(0.25)  # pass@1 is the share correct


def test_pass_at_k_of_the_bundled_model_rises_with_k():
    config = load_config(None, {"data.eval_limit": "40"})
    result = RLTrainer(args=config).pass_at_k(ks=(1, 4), num_samples=8)
    assert result["num_rows"] == 40
    assert 0.05 < result["pass@1"] < result["pass@4"] <= 1.0
