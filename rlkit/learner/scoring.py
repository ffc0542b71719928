"""Per-token log-probabilities and entropies of completions under a model, as the objective needs them.

The model's backbone gives the hidden state that predicts each completion token; the output head
then runs on the completion's tokens only (never on padding or prompt positions), a chunk of
tokens at a time, and each chunk's logits are dropped once its log-probs and entropies are out.
With gradients on, and a micro-batch whose log-probs would take more than 1 GB, each chunk is
checkpointed, so the backward pass recomputes its logits instead of keeping them. The full
``[B, T, V]`` logits never exist: with a 150k vocabulary and 16k tokens in a micro-batch they would
be 9.7 GB in fp32, and as much again for their gradient.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from rlkit.data import TrainBatch
from rlkit.models import CACHE_KWARG

LOGITS_PER_CHUNK = 1 << 27  # fp32 elements of one chunk's logits: 512 MB; chunk tokens = this / vocabulary
LOGITS_KEPT = 1 << 28  # up to 1 GB of a micro-batch's log-probs are kept for the backward pass, not recomputed


def policy_logprobs(model, batch: TrainBatch, temperature: float, *, with_entropy: bool = False,
                    share_prompts: bool = True, pack: bool = True):
    """``log pi(token)`` for every completion position ``[B, C]`` (and the entropy when asked), 0
    where ``batch.completion_mask`` is 0.

    Logits are divided by the sampling temperature so the learner scores the same distribution
    the rollout engine sampled from. Positions follow the attention mask, matching generation
    with left-padded prompts. With ``share_prompts`` each group's prompt is run once and its
    key/value cache repeated for the group's G completions (gradients flow back through it), as
    the rollout engine does: the result is the same, for 1/G of the prompt's compute. With
    ``pack`` too, a group's G completions then run as one row, one after another with no padding
    between them, each attending to the prompt and to itself only: the backbone computes the
    tokens that exist and no others (the completions of one micro-batch differ in length by
    several times; padded, most of the compute would be padding).
    """
    decoder, head = model_parts(model)
    run = _through_top(model, decoder)  # decoder(**kwargs), run inside the model's own forward
    mask = batch.completion_mask.bool()
    if share_prompts and pack and _packable(model):
        hidden = _packed_hidden(run, batch, mask)
    else:
        hidden = (_shared_prompt_hidden(run, batch) if share_prompts else _full_hidden(run, batch))[mask.to(
            next(model.parameters()).device)]
    mask = mask.to(hidden.device)
    flat_logprobs, flat_entropy = head_logprobs(head, hidden, batch.completion_ids.to(hidden.device)[mask],
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
    recompute = hidden.shape[0] * vocab > LOGITS_KEPT  # small enough: keep, and spare the backward a head pass
    outs = []
    for start in range(0, hidden.shape[0], step):
        part = (hidden[start:start + step], targets[start:start + step])
        if recompute and torch.is_grad_enabled() and hidden.requires_grad:
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

    run.attention = getattr(decoder.config, "_attn_implementation", None)
    run.dtype = next(decoder.parameters()).dtype
    return run


def _packable(model) -> bool:
    """Packing passes a 4-D attention mask, which sdpa and eager attention take as given."""
    module = getattr(model, "module", model)
    if hasattr(module, "get_base_model"):
        module = module.get_base_model()
    return getattr(module.config, "_attn_implementation", None) in ("sdpa", "eager")


def _packed_hidden(run, batch: TrainBatch, loss_mask: torch.Tensor) -> torch.Tensor:
    """Hidden states predicting the tokens where ``loss_mask`` is 1, in row-major order ``[N, H]``:
    each group's prompt computed once, its completions packed into one row after it."""
    group, rows = batch.group_size, batch.num_sequences
    groups = rows // group
    device = batch.prompt_ids.device
    prompt_ids, prompt_mask = batch.prompt_ids[::group], batch.prompt_mask[::group]
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    prompt_out = run(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=positions, use_cache=True)
    attended = batch.completion_mask if batch.completion_attention is None else batch.completion_attention
    lengths = attended.sum(-1)  # a completion's tokens are its first `length` positions
    per_group = lengths.view(groups, group)
    starts = (per_group.cumsum(-1) - per_group).view(-1)  # where each completion begins in its group's row
    width = max(1, int(per_group.sum(-1).max()))
    row, token = (torch.arange(attended.shape[1], device=device) < lengths.unsqueeze(1)).nonzero(as_tuple=True)
    owner, column = row // group, starts[row] + token
    packed = torch.zeros((groups, width), dtype=torch.long, device=device)
    packed[owner, column] = batch.completion_ids[row, token]
    packed_positions = torch.zeros_like(packed)
    packed_positions[owner, column] = prompt_mask.sum(-1)[owner] + token
    sample = torch.full((groups, width), -1, dtype=torch.long, device=device)
    sample[owner, column] = row
    order = torch.zeros_like(packed)
    order[owner, column] = token
    # query (g, q) sees the prompt's real tokens, and its own sample's tokens up to itself
    same = (sample.unsqueeze(2) == sample.unsqueeze(1)) & (order.unsqueeze(2) >= order.unsqueeze(1))
    same |= torch.eye(width, dtype=torch.bool, device=device)  # padding sees itself: no empty row, no NaN
    sees_prompt = prompt_mask.bool().unsqueeze(1).expand(groups, width, -1) & (sample >= 0).unsqueeze(2)
    allowed = torch.cat([sees_prompt, same], dim=2).unsqueeze(1)  # [groups, 1, width, prompt + width]
    out = run(input_ids=packed, attention_mask=_attention_mask_for(run, allowed), position_ids=packed_positions,
              use_cache=True, **{CACHE_KWARG: getattr(prompt_out, CACHE_KWARG)}).last_hidden_state
    # token t of a completion is predicted by its token t-1, token 0 by the prompt's last position
    sources = torch.cat([prompt_out.last_hidden_state[:, -1], out.reshape(groups * width, -1)])
    mask_row, mask_token = loss_mask.to(device).nonzero(as_tuple=True)
    from_packed = groups + (mask_row // group) * width + starts[mask_row] + mask_token - 1
    index = torch.where(mask_token == 0, mask_row // group, from_packed)
    return sources[index.to(sources.device)]


def _attention_mask_for(run, allowed: torch.Tensor) -> torch.Tensor:
    """sdpa takes a boolean mask (True: attend); eager adds a float one (0 or the dtype's minimum)."""
    if run.attention == "sdpa":
        return allowed
    minimum = torch.finfo(run.dtype).min
    return torch.zeros(allowed.shape, dtype=run.dtype, device=allowed.device).masked_fill(~allowed, minimum)


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
