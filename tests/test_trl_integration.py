"""rlkit objectives inside TRL's GRPOTrainer (rlkit.integrations.trl).

The equivalence tests build one generated batch and hand it to TRL's own ``_compute_loss`` and to
the rlkit-backed one: GRPO's loss and gradient must match TRL's for every loss type, with and
without the KL term, in training (with gradient accumulation) and in evaluation.
"""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from rlkit.advantages import leave_one_out
from rlkit.integrations.trl import STATE_FILE, RLKitGRPOTrainer, trainer_for
from rlkit.models import resolve_model_path
from rlkit.objectives import GRPO
from rlkit.objectives import GRPOConfig as ObjectiveConfig
from rlkit.plugins import objectives

MODEL = resolve_model_path("tiny-arith")
PROBLEMS = [(12, 7), (3, 4), (20, 22), (5, 9), (31, 8), (40, 2), (11, 11), (9, 9)]
# transformers 5.2x renamed gradient_checkpointing (the old name warns)
CHECKPOINTING = next(name for name in ("activation_checkpointing", "gradient_checkpointing")
                     if name in GRPOConfig.__dataclass_fields__)


def exact_match(prompts, completions, answer, **kwargs):
    """TRL's reward signature: the dataset's ``answer`` column arrives as a keyword."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer)]


def make_trainer(trainer_class, tmp_path, reward=exact_match, args=None, **kwargs):
    settings = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4,
                    max_completion_length=4, gradient_accumulation_steps=2, learning_rate=3e-4, bf16=False,
                    **{CHECKPOINTING: False}, use_cpu=True, report_to="none", logging_steps=1,
                    save_strategy="no", seed=0, disable_tqdm=True)
    dataset = Dataset.from_list([{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in PROBLEMS])
    return trainer_class(model=AutoModelForCausalLM.from_pretrained(MODEL), reward_funcs=reward,
                         args=GRPOConfig(**{**settings, **(args or {})}), train_dataset=dataset,
                         processing_class=AutoTokenizer.from_pretrained(MODEL), **kwargs)


def generated_batch(trainer) -> dict:
    """What _generate_and_score_completions hands _compute_loss: padded ids, masks, advantages, log-probs."""
    gen = torch.Generator().manual_seed(0)
    rows, prompt_len, completion_len = 8, 6, 4
    prompt_ids = torch.randint(4, 100, (rows, prompt_len), generator=gen)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[::3, :2] = 0  # left padding
    completion_ids = torch.randint(4, 100, (rows, completion_len), generator=gen)
    lengths = torch.tensor([4, 3, 2, 1, 4, 4, 2, 3])
    completion_mask = (torch.arange(completion_len) < lengths.unsqueeze(1)).long()
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, torch.cat([prompt_ids, completion_ids], 1),
            torch.cat([prompt_mask, completion_mask], 1), completion_len)

    def noise(scale: float) -> torch.Tensor:
        return scale * torch.randn(logps.shape, generator=gen)

    return {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
            "completion_mask": completion_mask, "advantages": torch.randn(rows, generator=gen),
            # the other micro-batch of the generation batch holds 11 loss tokens
            "num_items_in_batch": completion_mask.sum() + 11,
            "old_per_token_logps": logps + noise(0.3),  # ratios far enough from 1 that the clip binds
            "ref_per_token_logps": logps + noise(0.2)}


def loss_and_grad(trainer, inputs, train: bool):
    trainer.model.train(train)
    trainer.model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2  # set by Trainer's loop; 2 micro-batches per step
    loss = trainer._compute_loss(trainer.model, dict(inputs))
    if not train:
        return loss.detach(), None
    loss.backward()
    return loss.detach(), trainer.model.model.layers[0].self_attn.q_proj.weight.grad.clone()


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_grpo_loss_equals_trl(tmp_path, loss_type, beta):
    knobs = {"loss_type": loss_type, "beta": beta, "epsilon": 0.2, "epsilon_high": 0.28}
    # rlkit's KL term is the plain k3; TRL >= 1.1x weights it by the ratio unless told not to
    trl_trainer = make_trainer(GRPOTrainer, tmp_path / "trl", args={**knobs, "use_bias_correction_kl": False})
    ours = make_trainer(trainer_for("grpo"), tmp_path / "rlkit", objective_params=knobs)
    assert (ours.ref_model is None) == (beta == 0.0)  # TRL loads a reference exactly when the objective needs one
    inputs = generated_batch(trl_trainer)
    for train in (True, False):
        expected_loss, expected_grad = loss_and_grad(trl_trainer, inputs, train)
        loss, grad = loss_and_grad(ours, inputs, train)
        torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-7)
        if train:
            assert expected_grad.abs().sum() > 0
            torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-7)
    metrics = ours._metrics["train"]
    assert metrics["objective/clip_fraction"][0] > 0  # the objective's own metrics reach TRL's log
    assert metrics["entropy"] == pytest.approx(trl_trainer._metrics["train"]["entropy"])


def _stub_generation(trainer, completions: list[str]) -> None:
    """Make TRL's generation return fixed completions (each followed by <eos>)."""
    tokenizer = trainer.processing_class
    ids = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in completions]
    trainer._generate_single_turn = lambda *args, **kwargs: (ids, None)


def _score(trainer, completions: list[str]) -> torch.Tensor:
    _stub_generation(trainer, completions)
    trainer.model.train()
    rows = [{"prompt": p, "answer": a} for p, a in [("12+7=", "19"), ("3+4=", "7")] for _ in range(4)]
    return trainer._generate_and_score_completions(rows)["advantages"]


COMPLETIONS = ["19", "18", "19", "7", "7", "7", "8", "7"]  # rewards 1 0 1 0 | 1 1 0 1


def test_grpo_advantages_equal_trl(tmp_path):
    expected = _score(make_trainer(GRPOTrainer, tmp_path / "trl"), COMPLETIONS)
    ours = make_trainer(RLKitGRPOTrainer, tmp_path / "rlkit", objective="grpo")
    torch.testing.assert_close(_score(ours, COMPLETIONS), expected)
    assert list(ours._logs["advantages"]) == pytest.approx(expected.tolist())


def test_advantages_come_from_the_objective(tmp_path):
    class LeaveOneOut(GRPO):
        def compute_advantages(self, rewards):
            return leave_one_out(rewards)

    ours = make_trainer(RLKitGRPOTrainer, tmp_path / "a", objective=LeaveOneOut(ObjectiveConfig()))
    rewards = torch.tensor([[1.0, 0, 1, 0], [1, 1, 0, 1]])
    torch.testing.assert_close(_score(ours, COMPLETIONS), leave_one_out(rewards).reshape(-1))
    # advantages="trl" keeps TRL's group-normalized ones
    trl_side = make_trainer(RLKitGRPOTrainer, tmp_path / "b", objective=LeaveOneOut(ObjectiveConfig()),
                            advantages="trl")
    expected = (rewards - rewards.mean(1, keepdim=True)) / (rewards.std(1, keepdim=True) + 1e-4)
    torch.testing.assert_close(_score(trl_side, COMPLETIONS), expected.reshape(-1))


def test_unscorable_completions_get_no_advantage(tmp_path):
    def partial(prompts, completions, answer, **kwargs):  # None: this function cannot score the sample
        return [None if c.strip() == "18" else float(c.strip() == a) for c, a in zip(completions, answer)]

    advantages = _score(make_trainer(RLKitGRPOTrainer, tmp_path, reward=partial, objective="grpo"), COMPLETIONS)
    assert advantages[1] == 0 and torch.isfinite(advantages).all()
    assert advantages[0] > 0 > advantages[3]


@pytest.mark.parametrize("name", objectives.names())
def test_every_registered_objective_gives_a_finite_loss(tmp_path, name):
    from rlkit.objectives import objective_from_config

    kwargs = {}
    estimator = getattr(objective_from_config(name, {}), "estimator", None)
    if getattr(estimator, "needs_entropy", False):  # ettrl's EAR, ttrl
        with pytest.raises(ValueError, match="needs each completion's sampling entropies"):
            make_trainer(trainer_for(name), tmp_path)
        kwargs = {"advantages": "trl"}  # TRL's own advantages: the loss still runs
    trainer = make_trainer(trainer_for(name), tmp_path, **kwargs)
    assert type(trainer).__name__.endswith("Trainer") and trainer.rlkit_objective.name == name
    loss, grad = loss_and_grad(trainer, generated_batch(trainer), train=True)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_refuses_what_it_cannot_honour(tmp_path):
    with pytest.raises(ValueError, match="importance_sampling_level"):
        make_trainer(RLKitGRPOTrainer, tmp_path, objective="grpo", args={"importance_sampling_level": "sequence"})
    with pytest.raises(ValueError, match="runs objective 'grpo'"):
        make_trainer(trainer_for("grpo"), tmp_path, objective="not-grpo")
    with pytest.raises(ValueError, match="no key 'epsilon_hi'"):
        make_trainer(RLKitGRPOTrainer, tmp_path, objective="grpo", objective_params={"epsilon_hi": 0.3})
    with pytest.warns(UserWarning, match="loss_type='grpo', beta=0.1: not used"):
        trainer = make_trainer(RLKitGRPOTrainer, tmp_path, objective="grpo", args={"loss_type": "grpo", "beta": 0.1})
    assert trainer.ref_model is None and trainer.beta == 0.0  # objective grpo has beta 0: no reference

    class WithRehearsal(GRPO):
        def extra_rows(self, run):
            return None

    with pytest.warns(UserWarning, match="also trains on extra rows"):
        make_trainer(RLKitGRPOTrainer, tmp_path, objective=WithRehearsal(ObjectiveConfig()))


class CountingGRPO(GRPO):
    """GRPO with adaptive state: how many micro-batches it has seen."""

    def __init__(self):
        super().__init__(ObjectiveConfig())
        self.calls = 0

    def loss_sum(self, batch):
        self.calls += 1
        return super().loss_sum(batch)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]

    def log_metrics(self):
        return {"calls": float(self.calls)}


@pytest.mark.slow
def test_trains_the_tiny_model(tmp_path):
    trainer = make_trainer(trainer_for("grpo"), tmp_path, args={"max_steps": 5})
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert trainer.state.global_step == 5 and len(losses) == 5 and all(math.isfinite(x) for x in losses)
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert all("objective/ratio_mean" in row for row in trainer.state.log_history if "loss" in row)


@pytest.mark.slow
def test_objective_state_is_logged_checkpointed_and_resumed(tmp_path):
    trainer = make_trainer(RLKitGRPOTrainer, tmp_path, objective=CountingGRPO(),
                           args={"max_steps": 2, "save_strategy": "steps", "save_steps": 2})
    trainer.train()
    assert trainer.rlkit_objective.calls == 4  # 2 steps x 2 micro-batches
    assert [row["objective/calls"] for row in trainer.state.log_history if "loss" in row] == [2, 4]
    checkpoint = tmp_path / "checkpoint-2"
    assert torch.load(checkpoint / STATE_FILE)["calls"] == 4
    resumed = make_trainer(RLKitGRPOTrainer, tmp_path, objective=CountingGRPO(), args={"max_steps": 3})
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.rlkit_objective.calls == 6


@pytest.mark.slow
def test_an_estimators_extras_reach_the_loss_through_trls_batches(tmp_path):
    """GBPO's target (an estimator extra) rides in TRL's batch next to the advantages, through its
    split and shuffle, into every PolicyBatch."""
    seen = []

    class Recording(objectives.get("gbpo")):
        def loss_sum(self, batch):
            seen.append((batch.advantage_extras, batch.advantages.shape[0]))
            return super().loss_sum(batch)

    objective = Recording(objectives.get("gbpo").config_class(beta=0.0))
    trainer = make_trainer(RLKitGRPOTrainer, tmp_path, objective=objective, args={"max_steps": 2})
    trainer.train()
    assert seen and all(extras is not None and "gbpo_target" in extras for extras, _ in seen)
    assert all(extras["gbpo_target"].shape == (rows,) for extras, rows in seen)  # one per completion
