"""Generation with transformers' ``generate`` and a KV cache shared by a prompt's G samples.

A group's prompt is run through the model once (all but its last token), the resulting cache is
repeated G times, and ``generate`` continues from it: the prompt's prefill costs 1/G of the naive
way. The sampled tokens' log-probs and the entropies are read from the processed scores, i.e. the
distribution actually sampled from (temperature, top-k and top-p applied).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlkit.models import CACHE_KWARG


@dataclass
class Sample:
    completion_ids: list[int]
    logprobs: list[float]
    entropies: list[float]
    truncated: bool


@dataclass
class SamplingParams:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False


class HFEngine:
    """Wraps a causal LM for batched sampling; holds no optimizer and no gradients."""

    def __init__(self, model, tokenizer):
        self.model = model.eval()
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state_dict, strict=True)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams,
                 seed: int | None = None) -> list[list[Sample]]:
        """``n`` samples for each prompt, returned per prompt in sampling order."""
        if seed is not None:
            torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        ids, mask = _left_pad(prompts, self.pad_id, device)
        shared = min(len(p) for p in prompts) >= 2  # the cached prefix must not be all padding
        kwargs = dict(
            attention_mask=mask.repeat_interleave(n, dim=0),
            max_new_tokens=params.max_new_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_id,
            return_dict_in_generate=True, output_scores=not params.greedy,
        )
        if params.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p,
                          top_k=params.top_k)
        if shared:
            kwargs[CACHE_KWARG] = self._prefill(ids[:, :-1], mask[:, :-1], n)
        out = self.model.generate(input_ids=ids.repeat_interleave(n, dim=0), **kwargs)
        completions = out.sequences[:, ids.shape[1]:]
        logprobs, entropies = _score_samples(out.scores, completions) if not params.greedy else (None, None)
        samples = [self._sample(completions, logprobs, entropies, i) for i in range(completions.shape[0])]
        return [samples[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _prefill(self, ids: torch.Tensor, mask: torch.Tensor, n: int):
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        cache = getattr(out, CACHE_KWARG)
        cache.batch_repeat_interleave(n)
        return cache

    def _sample(self, completions, logprobs, entropies, i: int) -> Sample:
        tokens = completions[i].tolist()
        length = len(tokens)
        truncated = True
        if self.eos_id in tokens:
            length = tokens.index(self.eos_id) + 1  # the end token is part of what the policy chose
            truncated = False
        return Sample(
            completion_ids=tokens[:length],
            logprobs=logprobs[i, :length].tolist() if logprobs is not None else [],
            entropies=entropies[i, :length].tolist() if entropies is not None else [],
            truncated=truncated,
        )


def _left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), width), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, device=device)
        mask[i, width - len(p):] = 1
    return ids, mask


def _score_samples(scores: tuple[torch.Tensor, ...], tokens: torch.Tensor):
    """Log-prob of each chosen token and the entropy of each step's sampling distribution."""
    logits = torch.stack(scores, dim=1).float()  # [N, T, V], -inf where top-k/top-p removed a token
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, tokens[:, : logits.shape[1], None]).squeeze(-1)
    probs = logp.exp()
    entropy = -(probs * torch.where(probs > 0, logp, torch.zeros_like(logp))).sum(-1)
    return chosen.cpu(), entropy.cpu()
