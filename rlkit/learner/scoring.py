"""Per-token log-probabilities of completions under a model, as the objective needs them."""

from __future__ import annotations

import torch

from rlkit.data import TrainBatch
from rlkit.models import CACHE_KWARG


def policy_logprobs(model, batch: TrainBatch, temperature: float, *, with_entropy: bool = False,
                    share_prompts: bool = True):
    """``log pi(token)`` for every completion position ``[B, C]`` (and the entropy when asked).

    Logits are divided by the sampling temperature so the learner scores the same distribution
    the rollout engine sampled from. Positions follow the attention mask, matching generation
    with left-padded prompts. With ``share_prompts`` each group's prompt is run once and its
    key/value cache repeated for the group's G completions (gradients flow back through it), as
    the rollout engine does: the result is the same, for 1/G of the prompt's compute.
    """
    logits = _shared_prompt_logits(model, batch) if share_prompts else _full_logits(model, batch)
    logits = logits.float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logprobs, None
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logprobs, entropy


def _full_logits(model, batch: TrainBatch) -> torch.Tensor:
    """Logits predicting each completion token ``[B, C, V]``, from one pass over prompt + completion."""
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).logits
    width_p = batch.prompt_ids.shape[1]
    return logits[:, width_p - 1:-1]  # position t predicts token t+1


def _shared_prompt_logits(model, batch: TrainBatch) -> torch.Tensor:
    """The same logits, with each group's prompt computed once (rows of a group are consecutive)."""
    group = batch.group_size
    prompt_ids, prompt_mask = batch.prompt_ids[::group], batch.prompt_mask[::group]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    cache = getattr(prompt_out, CACHE_KWARG)
    cache.batch_repeat_interleave(group)
    first = prompt_out.logits[:, -1:].repeat_interleave(group, dim=0)  # the prompt's last position predicts token 0
    width_c = batch.completion_ids.shape[1]
    completion_positions = batch.prompt_mask.sum(-1, keepdim=True) + torch.arange(width_c, device=prompt_ids.device)
    rest = model(input_ids=batch.completion_ids, attention_mask=batch.attention_mask,
                 position_ids=completion_positions, use_cache=True, **{CACHE_KWARG: cache}).logits
    return torch.cat([first, rest[:, :-1]], dim=1)
