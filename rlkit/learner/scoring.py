"""Per-token log-probabilities and entropies of completions under a model, as the objective needs them.

The model's backbone gives the hidden state that predicts each completion token; the output head
then runs on the completion's tokens only (never on padding or prompt positions), a chunk of
tokens at a time, and each chunk's logits are dropped once its log-probs and entropies are out.
With gradients on, each chunk is checkpointed, so the backward pass recomputes its logits instead
of keeping them. The full ``[B, T, V]`` logits never exist: with a 150k vocabulary and 16k tokens
in a micro-batch they would be 9.7 GB in fp32, and as much again for their gradient.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rlkit.data import TrainBatch
from rlkit.models import CACHE_KWARG

LOGITS_PER_CHUNK = 1 << 27  # fp32 elements of one chunk's logits: 512 MB; chunk tokens = this / vocabulary


def policy_logprobs(model, batch: TrainBatch, temperature: float, *, with_entropy: bool = False,
                    share_prompts: bool = True):
    """``log pi(token)`` for every completion position ``[B, C]`` (and the entropy when asked), 0
    where ``batch.completion_mask`` is 0.

    Logits are divided by the sampling temperature so the learner scores the same distribution
    the rollout engine sampled from. Positions follow the attention mask, matching generation
    with left-padded prompts. With ``share_prompts`` each group's prompt is run once and its
    key/value cache repeated for the group's G completions (gradients flow back through it), as
    the rollout engine does: the result is the same, for 1/G of the prompt's compute.
    """
    decoder, head = model_parts(model)
    run = _through_top(model, decoder)  # decoder(**kwargs), run inside the model's own forward
    hidden = _shared_prompt_hidden(run, batch) if share_prompts else _full_hidden(run, batch)
    mask = batch.completion_mask.to(hidden.device).bool()
    flat_logprobs, flat_entropy = head_logprobs(head, hidden[mask], batch.completion_ids.to(hidden.device)[mask],
                                                temperature)
    logprobs = hidden.new_zeros(mask.shape, dtype=torch.float32).masked_scatter(mask, flat_logprobs)
    if not with_entropy:
        return logprobs, None
    entropy = torch.zeros_like(logprobs).masked_scatter(mask, flat_entropy.detach())
    return logprobs, entropy


def head_logprobs(head, hidden: torch.Tensor, targets: torch.Tensor,
                  temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log-prob of each target, entropy)`` over ``[N, H]`` hidden states, a chunk of rows at a time."""
    vocab = getattr(head, "out_features", None) or head.weight.shape[0]  # ZeRO-3 leaves weight's shape empty
    step = max(1, LOGITS_PER_CHUNK // vocab)
    outs = []
    for start in range(0, hidden.shape[0], step):
        part = (hidden[start:start + step], targets[start:start + step])
        if torch.is_grad_enabled() and hidden.requires_grad:
            outs.append(checkpoint(_chunk, head, *part, temperature, use_reentrant=False))
        else:
            outs.append(_chunk(head, *part, temperature))
    if not outs:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, empty
    return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])


def _chunk(head, hidden: torch.Tensor, targets: torch.Tensor, temperature: float):
    logp = torch.log_softmax(head(hidden).float() / temperature, dim=-1)
    chosen = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp.exp() * logp).sum(-1)
    return chosen, entropy


def model_parts(model):
    """``(backbone, output head)`` of a causal LM, through DeepSpeed's and PEFT's wrappers (LoRA
    layers live inside the backbone's modules, so they still apply)."""
    module = getattr(model, "module", model)  # a DeepSpeed engine
    if hasattr(module, "get_base_model"):  # a PEFT model
        module = module.get_base_model()
    head = module.get_output_embeddings()
    if getattr(module.config, "final_logit_softcapping", None) or hasattr(module, "logit_scale"):
        raise NotImplementedError(f"{type(module).__name__} transforms its logits after the output head "
                                  "(softcapping or scaling); rlkit's learner does not score such models yet")
    return module.get_decoder(), head


def _through_top(model, decoder):
    """``decoder(**kwargs)``'s output, computed by calling the whole model (so every wrapper's hooks
    run: ZeRO-3 gathers and releases parameters around the top module's forward) and taken from the
    backbone with a forward hook; the model's own head runs on one position only."""

    def run(**kwargs):
        captured = {}
        handle = decoder.register_forward_hook(lambda _m, _i, out: captured.setdefault("out", out))
        try:
            model(**kwargs, logits_to_keep=1)
        finally:
            handle.remove()
        return captured["out"]

    return run


def _full_hidden(decoder, batch: TrainBatch) -> torch.Tensor:
    """Hidden states predicting each completion token ``[B, C, H]``, from one pass over prompt + completion."""
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions).last_hidden_state
    width_p = batch.prompt_ids.shape[1]
    return hidden[:, width_p - 1:-1]  # position t predicts token t+1


def _shared_prompt_hidden(decoder, batch: TrainBatch) -> torch.Tensor:
    """The same hidden states, with each group's prompt computed once (rows of a group are consecutive)."""
    group = batch.group_size
    prompt_ids, prompt_mask = batch.prompt_ids[::group], batch.prompt_mask[::group]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    cache = getattr(prompt_out, CACHE_KWARG)
    cache.batch_repeat_interleave(group)
    first = prompt_out.last_hidden_state[:, -1:].repeat_interleave(group, dim=0)  # predicts completion token 0
    width_c = batch.completion_ids.shape[1]
    completion_positions = batch.prompt_mask.sum(-1, keepdim=True) + torch.arange(width_c, device=prompt_ids.device)
    rest = decoder(input_ids=batch.completion_ids, attention_mask=batch.attention_mask,
                   position_ids=completion_positions, use_cache=True, **{CACHE_KWARG: cache}).last_hidden_state
    return torch.cat([first, rest[:, :-1]], dim=1)
