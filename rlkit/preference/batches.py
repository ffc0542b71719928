"""Preference pairs as the learner's data contract: each pair is a two-row :class:`RolloutGroup`.

A pair's chosen and rejected responses share their prompt, exactly as a GRPO group's completions
do, so the learner scores them with the same code path (:func:`policy_logprobs`): the prompt runs
once and its key/value cache serves both responses, and the two are packed into one row. Row 0 of
the group is the chosen response, row 1 the rejected one; ``prompt_index`` is the pair's id (its
position in the training or held-out set), which the driver uses to keep per-pair state.
"""

from __future__ import annotations

import torch

from rlkit.data import Rollout, RolloutGroup
from rlkit.preference.data import PreferencePair

CHOSEN, REJECTED = 0, 1


def encode_pairs(pairs: list[PreferencePair], tokenizer) -> list[RolloutGroup]:
    """Token ids of each pair: the prompt as the rollout workers encode it (special tokens added to
    plain text; a rendered conversation holds the template's own),
    each response without them and closed by the end token, as a completion the model ended."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no end-of-sequence token to close the responses with")
    groups = []
    for index, pair in enumerate(pairs):
        prompt_ids = tokenizer(pair.prompt, add_special_tokens=not pair.conversational)["input_ids"]
        rows = [_response(tokenizer(text, add_special_tokens=False)["input_ids"] + [eos], text)
                for text in (pair.chosen, pair.rejected)]
        groups.append(RolloutGroup(prompt_index=index, prompt=pair.prompt, prompt_ids=prompt_ids,
                                   row={"row": pair.row}, rollouts=rows, policy_version=0, source="preference"))
    return groups


def _response(ids: list[int], text: str) -> Rollout:
    return Rollout(completion_ids=ids, behavior_logprobs=[0.0] * len(ids), entropies=[0.0] * len(ids), text=text,
                   truncated=False)


def sums_and_lengths(logprobs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-token ``[2P, C]`` log-probs (rows alternating chosen, rejected) as per-pair sums and lengths:
    (chosen sums, rejected sums, chosen lengths, rejected lengths), each ``[P]``."""
    sums = (logprobs * mask).sum(dim=1)
    lengths = mask.sum(dim=1)
    return sums[CHOSEN::2], sums[REJECTED::2], lengths[CHOSEN::2], lengths[REJECTED::2]
