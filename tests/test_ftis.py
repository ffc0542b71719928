"""F-TIS: the truncated weights, the divergence filter and the loss pinned to the spec's worked
example (specs/rollout-periodic-async-ftis-ettrl.md §2e), and collaborators refused by name."""

from __future__ import annotations

import pytest
import torch

from rlkit.config import ConfigError, RLConfig
from rlkit.objectives import objective_from_config
from rlkit.objectives.base import PolicyBatch, StepStats
from rlkit.objectives.ftis import importance_weights, keep_mask, sample_divergence
from rlkit.rollout.collaborators import parse_collaborators, tokenizer_difference

OLD = torch.tensor([[-0.1, -2.0, -0.5], [-3.0, -2.5, -0.1], [-0.2, -0.3, -0.4], [-0.1, -0.2, -1.0]])
GEN = torch.tensor([[-0.2, -0.5, -0.5], [-0.3, -0.2, -0.1], [-0.25, -0.3, -0.3], [-1.5, -0.2, -1.0]])
ADV = torch.tensor([1.0, -1.0, -1.0, 1.0])  # rewards [1, 0, 0, 1], population std


def _batch(shared=True):
    return PolicyBatch(logprobs=OLD.clone().requires_grad_(), old_logprobs=OLD, mask=torch.ones(4, 3),
                       advantages=ADV, behavior_logprobs=GEN,
                       shared=torch.full((4,), shared, dtype=torch.bool))


def test_truncated_weights_and_divergences_match_the_spec_table():
    weights = importance_weights(OLD, GEN, cap=2.0)
    assert weights[3, 0].item() == 2.0  # ρ = 4.0552 truncated
    assert weights[0].tolist() == pytest.approx([1.10517, 0.22313, 1.0], abs=1e-5)
    linear = sample_divergence(OLD, GEN, torch.ones(4, 3), "linear")
    assert linear.tolist() == pytest.approx([1.4, 5.0, 0.05, -1.4], abs=1e-6)
    k3 = sample_divergence(OLD, GEN, torch.ones(4, 3), "k3")
    assert k3.tolist() == pytest.approx([0.7283, 3.16746, 0.00611, 1.6552], abs=1e-4)
    for divergence in (linear, k3):  # both estimators drop sample 1 only (A <= 0 and D > γ = 3)
        assert keep_mask(ADV, divergence, torch.ones(4, dtype=torch.bool), 3.0).tolist() == [True, False, True, True]


def test_the_loss_over_kept_samples_is_the_spec_value():
    for loss_type in ("grpo", "dapo"):  # equal lengths: sequence mean and token mean agree
        objective = objective_from_config("ftis", {"filter_threshold": 3.0, "loss_type": loss_type})
        batch = _batch()
        loss_sum, metrics = objective.loss_sum(batch)
        loss = loss_sum / objective.normalizer(StepStats(num_sequences=4, num_tokens=12, max_completion_length=3))
        assert loss.item() == pytest.approx(-0.3746881, abs=1e-6)
        assert metrics["ftis_shared_kept"] == pytest.approx(0.75)
        assert metrics["ftis_divergence_mean"] == pytest.approx((1.4 + 5.0 + 0.05 - 1.4) / 4)
        loss.backward()
        assert batch.logprobs.grad[1].abs().sum().item() == 0.0  # the dropped sample adds no gradient


def test_dropped_samples_can_count_as_zeros_and_local_samples_are_never_dropped():
    stats = StepStats(num_sequences=4, num_tokens=12, max_completion_length=3)
    objective = objective_from_config("ftis", {"filter_threshold": 3.0, "normalize_over": "all"})
    loss_sum, _ = objective.loss_sum(_batch())
    assert (loss_sum / objective.normalizer(stats)).item() == pytest.approx(-0.3746881 * 3 / 4, abs=1e-6)
    objective = objective_from_config("ftis", {"filter_threshold": 3.0})
    local_sum, metrics = objective.loss_sum(_batch(shared=False))
    assert "ftis_shared_kept" not in metrics
    # sample 1 is kept now: its weighted term −Σ w·A / 3 = (0.06721 + 0.10026 + 1) / 3 joins the sum
    assert local_sum.item() == pytest.approx(-(2.32830 - 2.95611 + 4) / 3 + (0.06721 + 0.10026 + 1) / 3, abs=1e-4)
    assert objective.normalizer(stats) == 4.0


def test_collaborators_are_checked_by_entry_and_key():
    config = RLConfig()
    config.rollout.collaborators = [{"name": "deep", "model": "tiny-arith-2l", "prompts_per_step": 8}]
    (c,) = parse_collaborators(config)
    assert (c.name, c.model, c.prompts_per_step, c.num_workers, c.source) == (
        "deep", "tiny-arith-2l", 8, 1, "collaborator:deep")
    config.rollout.collaborators = [{"name": "deep", "modle": "x"}]
    with pytest.raises(ConfigError, match=r"rollout.collaborators\[0\]: unknown key 'modle'"):
        parse_collaborators(config)
    config.rollout.collaborators = [{"name": "a", "model": "m", "prompts_per_step": 0}]
    with pytest.raises(ConfigError, match=r"collaborators\[0\].prompts_per_step: a positive integer"):
        parse_collaborators(config)


def test_a_collaborator_with_another_tokenizer_is_refused_before_anything_starts(tmp_path):
    from transformers import AutoTokenizer

    from rlkit.models import resolve_model_path
    from rlkit.shape_models import make_shape_model
    from rlkit.trainer import RLTrainer

    folder = make_shape_model(tmp_path / "wide-vocab", "small", vocab_size=256)
    ours = AutoTokenizer.from_pretrained(resolve_model_path("tiny-arith"))
    assert "vocabularies differ" in tokenizer_difference(ours, AutoTokenizer.from_pretrained(folder))
    assert tokenizer_difference(ours, AutoTokenizer.from_pretrained(resolve_model_path("tiny-arith-2l"))) == ""
    config = RLConfig()
    config.rollout.collaborators = [{"name": "other", "model": str(folder)}]
    with pytest.raises(ConfigError, match=r"'other' .* has another tokenizer than the run's model"):
        RLTrainer(args=config)
    config.rollout.collaborators = [{"name": "gone", "model": str(tmp_path / "no-such-model")}]
    with pytest.raises(ConfigError, match=r"'gone': cannot load the tokenizer of model"):
        RLTrainer(args=config)


def test_an_untrained_collaborator_is_measurably_filtered_out(tmp_path):
    import json

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlkit.models import resolve_model_path
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    source, untrained = resolve_model_path("tiny-arith"), tmp_path / "untrained"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source)).save_pretrained(untrained)
    AutoTokenizer.from_pretrained(source).save_pretrained(untrained)
    collaborators = [{"name": "noise", "model": str(untrained), "prompts_per_step": 4}]
    config = load_config(None, {"max_steps": "3", "rollout.prompts_per_step": "4", "data.eval_limit": "10",
                                "rollout.collaborators": json.dumps(collaborators),
                                "output_dir": str(tmp_path / "run"), "save_steps": "0", "logging.progress": "false",
                                "logging.plot": "false", "logging.tensorboard": "false"}, recipe="ftis-arith")
    RLTrainer(args=config).train()
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(m["shared_groups"] == 4 and m["trained_groups"] == 8 for m in metrics)
    # random text: far from the local policy (D > γ = 50 nats) and never right, so dropped
    assert all(m["ftis_divergence_mean"] > 50 for m in metrics)
    assert all(m["ftis_shared_kept"] < 0.3 for m in metrics)  # (a well-matched peer keeps 1.0: bench/ftis.py)
    assert all(m["ftis_weight_mean"] < 0.5 for m in metrics)


def test_a_swarm_peer_learns_from_the_local_model_and_resumes_exactly(tmp_path):
    import json

    from safetensors.torch import load_file

    from rlkit.models import resolve_model_path
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    peer = [{"name": "shallow", "model": "tiny-arith-2l", "prompts_per_step": 4, "learn": True}]
    run = tmp_path / "swarm"
    config = load_config(None, {"max_steps": "4", "save_steps": "2", "rollout.prompts_per_step": "4",
                                "data.eval_limit": "10", "rollout.max_staleness": "1",
                                "rollout.collaborators": json.dumps(peer), "output_dir": str(run),
                                "logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false"},
                         recipe="ftis-arith")
    RLTrainer(args=config).train()
    straight = read_metrics(run / "metrics.jsonl")
    # the peer trains too: on its own groups and, from its side, on the local model's (shared)
    assert all(m["shallow/grad_norm"] > 0 and 0 < m["shallow/ftis_shared_kept"] <= 1 for m in straight)
    before = load_file(f"{resolve_model_path('tiny-arith-2l')}/model.safetensors")
    after = load_file(run / "final-shallow" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # resume from the step-2 checkpoint: the peer's learner and the groups already made come back
    RLTrainer.from_run(run, {"logging.progress": "false"}).train(resume=True)
    again = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in again] == [1, 2, 3, 4]
    for first, second in zip(straight[2:], again[2:]):
        for key in ("reward_mean", "loss", "shallow/loss", "shared_reward_mean"):
            assert second[key] == pytest.approx(first[key], abs=1e-6), (key, first["step"])
