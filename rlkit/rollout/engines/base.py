"""What a generation engine is to rlkit: the protocol the rollout worker, multi-turn episodes and
evaluation use, and the types that cross it.

An engine holds one policy's weights and samples continuations of token prefixes:

* ``load_weights(state_dict, version)``: take the learner's weights (a version number is kept
  with them, and reported by ``version``).
* ``stream(requests, params, seed)``: sample ``request.n`` continuations of every request's
  ``prefix_ids``, and as soon as all ``n`` samples of a request have ended, yield it: each item
  is a list of ``(index of the request, its samples)``, the requests that ended together (at
  least one), in whatever order they end. A prefix is a prompt, or any prompt plus a partial
  answer to continue from (a multi-turn episode so far; ETTRL's forks).
* Each sample reports its tokens, the log-probability of each token under the distribution it
  was drawn from (temperature, top-k and top-p applied), and that distribution's entropy.

Samples must depend only on the weights, the sampling parameters, ``seed``, the request's
``key`` and the sample's index within the request: never on how requests were batched, in what
order they finished, or on which worker. That is what makes a run's samples, and so its
learning curve, the same under every schedule and engine setting, and what lets a restarted
worker regenerate exactly what was lost. (``HFEngine`` draws sample ``j`` of request ``key``
with uniforms from a generator seeded by ``(seed, key, j)``; an engine with per-request seeds,
as vLLM and SGLang have, does the same with ``seed + key * n + j``-style seeds.)

A new engine is one file: a class with these methods, registered with ``@rlkit.engine("name")``
(or the ``rlkit.engines`` entry-point group), picked with ``rollout.engine: name``. Its
constructor takes ``(config: RLConfig, device: torch.device)`` and loads the model itself.
See ``docs/engines.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: the token budget, temperature, top-p, top-k, greedy decoding, stop strings."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    # strings that end a sample as the end token does (``rollout.stop``); the sample keeps the
    # tokens that wrote the string. An engine that cannot stop on them early may ignore them: the
    # rollout worker cuts every sample at its first stop string as well
    stop: tuple[str, ...] = ()


@dataclass
class Sample:
    """One sampled continuation: its tokens, their log-probabilities and entropies, truncation."""

    completion_ids: list[int]
    logprobs: list[float]  # of each token, under the distribution it was drawn from
    entropies: list[float]  # of that distribution, at each position
    truncated: bool  # ran to max_new_tokens without the end token


@dataclass(frozen=True)
class Request:
    """``n`` continuations of ``prefix_ids``; ``key`` (with the seed) fixes which ones.

    ``max_new_tokens``, when set, caps this request's continuations below the stream's
    ``SamplingParams.max_new_tokens`` (a fork continuing a partial answer has less room left).
    """

    prefix_ids: tuple[int, ...]
    n: int
    key: int
    max_new_tokens: int | None = None

    @classmethod
    def of(cls, prefix_ids, n: int, key: int, max_new_tokens: int | None = None) -> Request:
        return cls(tuple(int(t) for t in prefix_ids), int(n), int(key),
                   None if max_new_tokens is None else int(max_new_tokens))

    def limit(self, params: SamplingParams) -> int:
        """Tokens this request's samples may have at most."""
        return params.max_new_tokens if self.max_new_tokens is None else min(self.max_new_tokens,
                                                                              params.max_new_tokens)


@runtime_checkable
class Engine(Protocol):
    """A generation engine: one policy's weights, sampling continuations of token prefixes."""

    @property
    def version(self) -> int:
        """The version of the weights it holds (0 until the learner's first weights are loaded)."""
        ...

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Take the learner's weights; later samples come from them."""
        ...

    def stream(self, requests: list[Request], params: SamplingParams,
               seed: int) -> Iterator[list[tuple[int, list[Sample]]]]:
        """Sample ``request.n`` continuations of each request; yield the requests whose samples
        have all ended, as ``(request index, samples)`` lists, in the order they end."""
        ...


def generate(engine: Engine, requests: list[Request], params: SamplingParams, seed: int) -> list[list[Sample]]:
    """Every request's samples, in request order (the stream collected)."""
    out: list[list[Sample] | None] = [None] * len(requests)
    for ended in engine.stream(requests, params, seed):
        for index, samples in ended:
            out[index] = samples
    return out  # type: ignore[return-value]
