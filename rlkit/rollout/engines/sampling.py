"""One sampling step on a batch of logits, with its log-probs and entropies, and the random numbers
behind it.

Each row draws its token by inverse transform: the first token whose cumulative probability
exceeds ``u``, a uniform taken from the row's own sequence (:func:`uniforms`, seeded by the run's
seed, the request's key and the sample's index). So what a sample becomes does not depend on which
other rows share the batch, which is what lets an engine batch freely and still give every
schedule, batch size and restart the same samples.
"""

from __future__ import annotations

import numpy as np
import torch

from rlkit.rollout.engines.base import SamplingParams


def uniforms(seed: int, key: int, index: int, length: int) -> np.ndarray:
    """The uniforms in [0, 1) that sample ``index`` of request ``key`` draws its tokens with."""
    return np.random.default_rng([seed, key, index]).random(length)


def sample_next(logits: torch.Tensor, params: SamplingParams,
                u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(tokens [B], log-probs [B], entropies [B])`` from logits ``[B, V]`` and uniforms ``[B]``.

    The log-prob and the entropy are those of the distribution sampled from: logits divided by
    the temperature, then cut to the top-k tokens and to the top-p nucleus. Greedy takes the
    arg max and reports the temperature-1 distribution. Only ``[B, V]`` tensors are made: nothing
    of the sequence's length is kept.
    """
    logits = logits.float()
    restricted = not params.greedy and (0 < params.top_k < logits.shape[-1] or params.top_p < 1.0)
    if params.greedy:
        logp = torch.log_softmax(logits, dim=-1)
        tokens = logits.argmax(dim=-1)
    elif restricted:
        logp = torch.log_softmax(_restrict(logits / params.temperature, params), dim=-1)
    else:
        logp = torch.log_softmax(logits / params.temperature if params.temperature != 1.0 else logits, dim=-1)
    probs = logp.exp()
    # outside the kept set p = 0 and log p = -inf: their product counts 0
    finite = torch.where(probs > 0, logp, torch.zeros_like(logp)) if restricted else logp
    entropy = -(probs * finite).sum(-1)
    if not params.greedy:
        cdf = probs.cumsum_(dim=-1)  # probs is not needed any more
        target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
        tokens = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
    return tokens, logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


def _restrict(scaled: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Top-k, then top-p (the smallest set of most likely tokens whose mass reaches top_p)."""
    if 0 < params.top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, params.top_k, dim=-1).values[:, -1:]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    if params.top_p < 1.0:
        ordered, order = torch.sort(scaled, dim=-1, descending=True)
        probs = torch.softmax(ordered, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        drop = mass_before >= params.top_p  # the first token is always kept (its mass before is 0)
        scaled = scaled.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
    return scaled
