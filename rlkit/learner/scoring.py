"""Per-token log-probabilities of completions under a model, as the objective needs them."""

from __future__ import annotations

import torch

from rlkit.data import TrainBatch


def policy_logprobs(model, batch: TrainBatch, temperature: float, *, with_entropy: bool = False):
    """``log pi(token)`` for every completion position ``[B, C]`` (and the entropy when asked).

    Logits are divided by the sampling temperature so the learner scores the same distribution
    the rollout engine sampled from. Positions follow the attention mask, matching generation
    with left-padded prompts.
    """
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    width_p = batch.prompt_ids.shape[1]
    logits = logits[:, width_p - 1:-1].float() / temperature  # position t predicts token t+1
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logprobs, None
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy
