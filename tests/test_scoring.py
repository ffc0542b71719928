"""The learner's log-probs: sharing a group's prompt changes the compute, not the numbers."""

from __future__ import annotations

import pytest
import torch

from rlkit.config import ModelConfig
from rlkit.data import Rollout, RolloutGroup, TrainBatch
from rlkit.learner.scoring import policy_logprobs
from rlkit.models import load_model, load_tokenizer


def rollout(ids: list[int]) -> Rollout:
    return Rollout(completion_ids=ids, behavior_logprobs=[0.0] * len(ids), entropies=[0.0] * len(ids),
                   text="", truncated=False)


@pytest.fixture(scope="module")
def model_and_batch():
    tokenizer = load_tokenizer(ModelConfig())
    model = load_model(ModelConfig())
    encode = lambda text: tokenizer(text)["input_ids"]  # noqa: E731
    eos = tokenizer.eos_token_id
    # prompts of different lengths (left padding), completions of different lengths (right padding)
    groups = [
        RolloutGroup(0, "7+5=", encode("7+5="), {}, [rollout(encode("12") + [eos]), rollout(encode("1")),
                                                       rollout(encode("13") + [eos])], 0),
        RolloutGroup(1, "123+456=", encode("123+456="), {}, [rollout(encode("579") + [eos]), rollout(encode("5")),
                                                             rollout([eos])], 0),
    ]
    return model, TrainBatch.from_groups(groups, tokenizer.pad_token_id)


LAYOUTS = {"full": {"share_prompts": False}, "shared prompt": {"share_prompts": True, "pack": False},
           "shared prompt, packed completions": {"share_prompts": True, "pack": True}}


@pytest.mark.parametrize("layout", ["shared prompt", "shared prompt, packed completions"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_each_layout_equals_the_full_forward_in_values_and_gradients(model_and_batch, temperature, layout):
    model, batch = model_and_batch
    results = {}
    for name in ("full", layout):
        model.zero_grad()
        logprobs, entropy = policy_logprobs(model, batch, temperature, with_entropy=True, **LAYOUTS[name])
        (logprobs * batch.completion_mask).sum().backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        results[name] = (logprobs.detach(), entropy, grads)
    mask = batch.completion_mask.bool()
    full, other = results["full"], results[layout]
    torch.testing.assert_close(other[0][mask], full[0][mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(other[1][mask], full[1][mask], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(other[2], full[2], atol=1e-4, rtol=1e-3)  # sums over many tokens
    assert full[2].abs().sum() > 0  # there was a gradient to compare
    assert (other[0][~mask] == 0).all()  # padding scores nothing


def test_log_probs_match_a_direct_computation(model_and_batch):
    model, batch = model_and_batch
    logprobs, _ = policy_logprobs(model, batch, 1.0)
    # row 3: prompt "123+456=" then "579<eos>"; score its tokens one by one with an unpadded forward
    prompt = batch.prompt_ids[3][batch.prompt_mask[3].bool()].tolist()
    completion = batch.completion_ids[3][:4].tolist()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
    expected = torch.log_softmax(logits[len(prompt) - 1:-1], dim=-1).gather(-1, torch.tensor(completion)[:, None])
    torch.testing.assert_close(logprobs[3, :4].detach(), expected.squeeze(-1), atol=2e-5, rtol=1e-5)


def test_chunked_and_recomputed_head_gives_the_same_values_and_gradients(model_and_batch, monkeypatch):
    """Chunks of 5 tokens, each checkpointed (as for a micro-batch whose log-probs exceed the budget)."""
    import rlkit.learner.scoring as scoring

    model, batch = model_and_batch
    results = {}
    for name in ("kept", "recomputed"):
        if name == "recomputed":
            monkeypatch.setattr(scoring, "LOGITS_KEPT", 0)
            monkeypatch.setattr(scoring, "LOGITS_PER_CHUNK", 5 * model.config.vocab_size)
        model.zero_grad()
        logprobs, entropy = policy_logprobs(model, batch, 1.0, with_entropy=True)
        (logprobs * batch.completion_mask).sum().backward()
        results[name] = (logprobs.detach(), entropy, torch.cat([p.grad.flatten() for p in model.parameters()]))
    kept, recomputed = results["kept"], results["recomputed"]
    torch.testing.assert_close(recomputed[0], kept[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recomputed[1], kept[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(recomputed[2], kept[2], atol=1e-4, rtol=1e-3)  # sums in another order
