"""The transformers engine: one continuously batched decode loop over a shared KV cache.

All the requests of a ``stream`` call go through one loop:

* **Admission.** Waiting requests join the batch while it has room (``max_batch_sequences``
  rows, and ``max_batch_tokens`` of worst-case KV footprint when set). Their prefixes are run
  through the model together, once per request however many samples it asks for (the cache is
  then repeated ``n`` times): a group's prompt costs one prefill, not G. The logits of a prefix's
  last position give each sample its first token. Their cache joins the batch's, left-padded to
  a common length.
* **Decoding.** One forward of every row's last token; the next token is sampled from the
  logits, and its log-prob and the distribution's entropy are recorded at once
  (:func:`~rlkit.rollout.engines.sampling.sample_next`). Logits are ``[rows, V]`` and dropped
  after the step: nothing of shape ``[N, T, V]`` is ever kept.
* **Leaving.** A row that samples the end token or reaches ``max_new_tokens`` is finished. A
  request is yielded the moment its last row finishes (one transfer to the host per request;
  requests that end at the same step are yielded together).
  Finished rows are dropped from the cache once they are an eighth of the batch (or when
  waiting requests need their room), and cache columns no row uses any more are cut.

Every row keeps its own positions, so a prefix's tokens see the same positions as in a single
unbatched forward; the learner scores them the same way.

The running cache is transformers' ``DynamicCache``; the loop reads and writes its layers'
``keys``/``values`` (``[rows, heads, columns, head_dim]``), which needs a model whose layers all
cache full attention (Llama, Qwen2, Mistral without sliding windows, GPT-NeoX, ...). Others are
refused with a clear error.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rlkit.models import CACHE_KWARG
from rlkit.plugins import engine
from rlkit.rollout.engines.base import Request, Sample, SamplingParams
from rlkit.rollout.engines.sampling import sample_next, uniforms

COMPACT_FRACTION = 8  # drop finished rows once they are 1/8 of the batch


@engine("hf")
class HFEngine:
    """A ``transformers`` causal LM behind the engine protocol (``rollout.engine: hf``)."""

    def __init__(self, model, tokenizer, *, max_batch_sequences: int = 256, max_batch_tokens: int = 0):
        if max_batch_sequences < 1:
            raise ValueError(f"max_batch_sequences must be >= 1, got {max_batch_sequences}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        # a sample ends on any end token: the tokenizer's, and those of the model's generation config
        # (chat models end a turn with their own, e.g. Qwen's <|im_end|> beside <|endoftext|>)
        self.end_ids = end_token_ids(tokenizer, model)
        self._stop_candidates: dict[tuple[str, ...], torch.Tensor] = {}
        self.max_batch_sequences = max_batch_sequences
        self.max_batch_tokens = max_batch_tokens
        self._version = 0

    @classmethod
    def from_config(cls, config, device: torch.device) -> HFEngine:
        from rlkit.models import load_model, load_tokenizer

        model = load_model(config.model, trainable=False).to(device)
        return cls(model, load_tokenizer(config.model), max_batch_sequences=config.rollout.generation_batch_size,
                   max_batch_tokens=config.rollout.max_batch_tokens)

    @property
    def version(self) -> int:
        return self._version

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        self.model.load_state_dict(state_dict, strict=True)
        self._version = version

    def stop_candidates(self, stops: tuple[str, ...]) -> torch.Tensor:
        """``[V]`` bool: tokens whose text holds the last character of a stop string, the only tokens
        that can complete one (checked on the device; only rows that sample one are decoded)."""
        if stops not in self._stop_candidates:
            last = {s[-1] for s in stops if s}
            vocab = len(self.tokenizer)
            size = max(vocab, self.model.get_output_embeddings().weight.shape[0])
            hits = torch.zeros(size, dtype=torch.bool)
            for token in range(vocab):
                text = self.tokenizer.decode([token])
                hits[token] = any(ch in text for ch in last)
            self._stop_candidates[stops] = hits.to(self.device)
        return self._stop_candidates[stops]

    @torch.no_grad()
    def stream(self, requests: list[Request], params: SamplingParams,
               seed: int) -> Iterator[list[tuple[int, list[Sample]]]]:
        if not requests:
            return
        run = _Run(self, requests, params, seed)
        yield from run.loop()


@dataclass
class _Rows:
    """The batch in flight: one row per sample being decoded."""

    cache: object  # DynamicCache, [rows, heads, columns, head_dim] per layer
    mask: torch.Tensor  # [rows, columns] 1 on the cache columns a row attends to (left padding: 0s then 1s)
    last: torch.Tensor  # [rows] the token to feed next
    position: torch.Tensor  # [rows] its position
    sample: torch.Tensor  # [rows] which sample of the run (index into the output table)
    count: torch.Tensor  # [rows] tokens generated so far
    alive: torch.Tensor  # [rows] still decoding

    @property
    def size(self) -> int:
        return int(self.last.shape[0])

    def select(self, keep: torch.Tensor) -> None:
        self.cache.batch_select_indices(keep)
        for name in ("mask", "last", "position", "sample", "count", "alive"):
            setattr(self, name, getattr(self, name)[keep])
        self._cut_unused_columns()

    def append(self, other: _Rows) -> None:
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(_layers(self.cache), _layers(other.cache)):
            mine.keys = torch.cat([_left_pad(mine.keys, width, 2), _left_pad(theirs.keys, width, 2)])
            mine.values = torch.cat([_left_pad(mine.values, width, 2), _left_pad(theirs.values, width, 2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        for name in ("last", "position", "sample", "count", "alive"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))

    def _cut_unused_columns(self) -> None:
        unused = int((self.mask.cumsum(dim=1) == 0).sum(dim=1).min()) if self.size else 0
        if unused:
            for layer in _layers(self.cache):
                layer.keys, layer.values = layer.keys[:, :, unused:], layer.values[:, :, unused:]
            self.mask = self.mask[:, unused:]


class _Run:
    """One ``stream`` call: its requests, their output table, the decode loop."""

    def __init__(self, engine: HFEngine, requests: list[Request], params: SamplingParams, seed: int):
        self.engine, self.requests, self.params = engine, requests, params
        device, steps = engine.device, params.max_new_tokens
        self.first_sample = np.cumsum([0] + [r.n for r in requests])[:-1].tolist()
        total = sum(r.n for r in requests)
        self.request_of = torch.repeat_interleave(torch.arange(len(requests)), torch.tensor([r.n for r in requests]))
        self.noise = torch.from_numpy(np.stack([uniforms(seed, r.key, j, steps) for r in requests
                                                for j in range(r.n)])).float().to(device)
        self.tokens = torch.full((total, steps), engine.pad_id, dtype=torch.long, device=device)
        self.logprobs = torch.zeros((total, steps), dtype=torch.float32, device=device)
        self.entropies = torch.zeros((total, steps), dtype=torch.float32, device=device)
        self.lengths = torch.zeros(total, dtype=torch.long, device=device)
        # each sample's own cap (a request may ask for fewer than the stream's max_new_tokens)
        self.limits = torch.tensor([r.limit(params) for r in requests for _ in range(r.n)], device=device)
        if bool((self.limits < 1).any()):
            raise ValueError("a request asks for max_new_tokens < 1")
        self.unfinished = [r.n for r in requests]  # per request, on the host
        self.rows: _Rows | None = None
        self.end_ids = engine.end_ids.to(device)
        self.stopped = torch.zeros(total, dtype=torch.bool, device=device)  # ended by a stop string
        self.stop_candidates = engine.stop_candidates(params.stop) if params.stop else None

    def loop(self) -> Iterator[list[tuple[int, list[Sample]]]]:
        waiting = deque(range(len(self.requests)))
        while waiting or (self.rows is not None and bool(self.rows.alive.any())):
            if waiting:
                self._make_room(self._fits(waiting))
                admitted = self._take(waiting)
                if admitted:
                    yield from self._finish(self._admit(admitted))
            if self.rows is not None and bool(self.rows.alive.any()):
                yield from self._finish(self._decode())
                self._compact_if_worth_it()

    # --- admission -------------------------------------------------------------------------------

    def _fits(self, waiting: deque) -> int:
        return self.requests[waiting[0]].n

    def _room(self) -> int:
        busy = 0 if self.rows is None else self.rows.size
        return self.engine.max_batch_sequences - busy

    def _make_room(self, needed: int) -> None:
        if self.rows is not None and self._room() < needed and not bool(self.rows.alive.all()):
            self.rows.select(self.rows.alive.nonzero().squeeze(1))

    def _take(self, waiting: deque) -> list[int]:
        """Requests that join now: as many as the batch has room for (at least one when it is empty)."""
        taken, rows = [], 0 if self.rows is None else self.rows.size
        longest = 0 if self.rows is None else self.rows.mask.shape[1]
        budget = self.engine.max_batch_tokens
        while waiting:
            request = self.requests[waiting[0]]
            width = max(longest, len(request.prefix_ids)) + self.params.max_new_tokens
            over_rows = rows + request.n > self.engine.max_batch_sequences
            over_tokens = budget and (rows + request.n) * width > budget
            if (over_rows or over_tokens) and rows:
                break
            taken.append(waiting.popleft())
            rows, longest = rows + request.n, max(longest, len(request.prefix_ids))
        return taken

    def _admit(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefill the requests' prefixes once each, repeat for their samples, sample first tokens."""
        engine, device = self.engine, self.engine.device
        prefixes = [self.requests[i].prefix_ids for i in indices]
        ids, mask = _left_pad_ids(prefixes, engine.pad_id, device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = engine.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                           logits_to_keep=1)
        cache = getattr(out, CACHE_KWARG)
        _check_cache(cache)
        repeats = torch.tensor([self.requests[i].n for i in indices], device=device)
        expand = torch.repeat_interleave(torch.arange(len(indices), device=device), repeats)
        cache.batch_select_indices(expand)
        samples = torch.cat([torch.arange(self.first_sample[i], self.first_sample[i] + self.requests[i].n)
                             for i in indices]).to(device)
        count = torch.zeros_like(samples)
        tokens, finished = self._sample(out.logits[:, -1][expand], samples, count)
        lengths = torch.tensor([len(p) for p in prefixes], device=device)[expand]
        new = _Rows(cache=cache, mask=mask[expand], last=tokens, position=lengths, sample=samples,
                    count=count + 1, alive=~finished)
        if self.rows is None:
            self.rows = new
        else:
            self.rows.append(new)
        return samples, finished

    # --- decoding --------------------------------------------------------------------------------

    def _decode(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows
        rows.mask = F.pad(rows.mask, (0, 1), value=1)
        out = self.engine.model(input_ids=rows.last.unsqueeze(1), attention_mask=rows.mask,
                                position_ids=rows.position.unsqueeze(1), use_cache=True,
                                **{CACHE_KWARG: rows.cache})
        live = rows.alive
        tokens, finished = self._sample(out.logits[:, -1], rows.sample, rows.count, live)
        rows.last = torch.where(live, tokens, rows.last)
        rows.position = rows.position + live.long()
        rows.count = rows.count + live.long()
        newly = finished & live
        rows.alive = live & ~finished
        return rows.sample, newly

    def _sample(self, logits: torch.Tensor, samples: torch.Tensor, count: torch.Tensor,
                live: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample each row's next token, write it to the output table; which rows are now finished."""
        steps = self.params.max_new_tokens
        at = count.clamp(max=steps - 1)
        tokens, logprobs, entropies = sample_next(logits, self.params, self.noise[samples, at])
        where = samples if live is None else samples[live]
        at = at if live is None else at[live]
        pick = (lambda t: t) if live is None else (lambda t: t[live])
        self.tokens[where, at] = pick(tokens)
        self.logprobs[where, at] = pick(logprobs)
        self.entropies[where, at] = pick(entropies)
        self.lengths[where] = at + 1
        finished = torch.isin(tokens, self.end_ids) | (count + 1 >= self.limits[samples])
        if self.stop_candidates is not None:
            finished = finished | self._hit_stop(tokens, samples, at, live)
        return tokens, finished

    def _hit_stop(self, tokens, samples, at, live) -> torch.Tensor:
        """Rows whose text now holds a stop string (decoded only where the new token could end one)."""
        hit = torch.zeros_like(tokens, dtype=torch.bool)
        candidates = self.stop_candidates[tokens]
        if live is not None:
            candidates = candidates & live
        rows = candidates.nonzero().squeeze(1).tolist()
        if not rows:
            return hit
        at_all = at if live is None else torch.zeros_like(samples).masked_scatter(live, at)
        for row in rows:
            sample = int(samples[row])
            text = self.engine.tokenizer.decode(self.tokens[sample, :int(at_all[row]) + 1].tolist())
            if any(stop in text for stop in self.params.stop):
                hit[row] = True
                self.stopped[sample] = True
        return hit

    def _compact_if_worth_it(self) -> None:
        rows = self.rows
        done = rows.size - int(rows.alive.sum())
        if done and done * COMPACT_FRACTION >= rows.size:
            rows.select(rows.alive.nonzero().squeeze(1))

    # --- leaving ---------------------------------------------------------------------------------

    def _finish(self, outcome: tuple[torch.Tensor, torch.Tensor]) -> Iterator[list[tuple[int, list[Sample]]]]:
        samples, finished = outcome
        ended = []
        for sample in samples[finished].tolist():  # the one host sync of a step
            request = int(self.request_of[sample])
            self.unfinished[request] -= 1
            if self.unfinished[request] == 0:
                ended.append((request, self._samples_of(request)))
        if ended:
            yield ended

    def _samples_of(self, index: int) -> list[Sample]:
        first, n = self.first_sample[index], self.requests[index].n
        lengths = self.lengths[first:first + n].tolist()
        tokens = self.tokens[first:first + n].tolist()
        logprobs = self.logprobs[first:first + n].tolist()
        entropies = self.entropies[first:first + n].tolist()
        stopped = self.stopped[first:first + n].tolist()
        ends = set(self.end_ids.tolist())
        return [Sample(completion_ids=t[:k], logprobs=lp[:k], entropies=e[:k],
                       truncated=t[k - 1] not in ends and not stop)
                for t, lp, e, k, stop in zip(tokens, logprobs, entropies, lengths, stopped)]


def end_token_ids(tokenizer, model) -> torch.Tensor:
    """The ids that end a sample: the tokenizer's end token and the generation config's (an int or a list)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids |= set(configured) if isinstance(configured, (list, tuple)) else {configured}
    return torch.tensor(sorted(ids), dtype=torch.long)


def _layers(cache) -> list:
    return list(cache.layers)


def _check_cache(cache) -> None:
    for layer in _layers(cache):
        if not (hasattr(layer, "keys") and hasattr(layer, "values")) or getattr(layer, "is_sliding", False):
            raise NotImplementedError(
                f"rollout.engine=hf batches continuously over full-attention KV caches; this model's cache layer "
                f"{type(layer).__name__} is not one (sliding-window or recurrent layers)")


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - dim - 1) + [missing, 0]
    return F.pad(tensor, pad)


def _left_pad_ids(prefixes: list[tuple[int, ...]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for i, prefix in enumerate(prefixes):
        ids[i, width - len(prefix):] = torch.tensor(prefix, dtype=torch.long)
        mask[i, width - len(prefix):] = 1
    return ids.to(device), mask.to(device)
