"""ETTRL's Entropy-fork Tree Majority Rollout (ETMR): a group grown as trees that share prefixes.

ETTRL (Liu et al., 2025, arXiv 2508.11356) samples a prompt's group for test-time RL as M trees:

* **Roots.** M full responses, sampled as usual.
* **Forks.** In each root the N eligible positions of highest entropy; a fork at position f
  re-samples the token at f and everything after it, so the prefix ``root[:f]`` is reused.
* **Branches.** B continuations per fork. Each leaf is a full response, ``root[:f] + branch``.

A group is then M(1 + N·B) responses, and the tokens sampled for it are the roots' plus the
branches' own. With forks spread evenly over a response of length L, a branch reuses L/2 tokens
on average, so the cost against independent sampling of as many responses is

    TR = (1 + ½·N·B) / (1 + N·B)          (M=12, N=2, B=2: 60 responses for 0.6 of the tokens)

The paper's code was not published; its abstract, two independent notes, and TreeRL's EPTree
code (THUDM/TreeRL, the design ETMR follows) are what this is built from. Decisions:

* **Entropy** is the Shannon entropy of the distribution each token was sampled from, which the
  engine reports for every token (``fork_entropy: shannon``, default), or the token's surprisal
  ``−log p(token)`` as TreeRL's EPTree uses (``fork_entropy: surprisal``).
* **Eligible positions**: every position of the root except a final end token (forking there
  would re-sample an answer that has ended). Ties go to the earlier position. Our choice,
  recorded: the notes add "not inside the final answer span", which needs task knowledge; not
  done here. Position 0 is eligible: a fork there is an independent sample.
* **Roots shorter than N + 1 tokens** have fewer eligible positions than forks; the missing
  forks are at position 0 (fresh samples), so every group keeps its M(1 + N·B) size.
* **One level** of forking, forks chosen per tree (as reported for ETTRL).
* **A branch's length** is capped so its leaf is no longer than ``max_completion_length``:
  leaves and flat samples have the same budget.
* **Prefix reuse.** A branch is a request that continues ``prompt + root[:f]`` (the engine
  protocol's continue-from-prefix): the prefix's tokens are never sampled again, and the B
  branches of a fork share one prefill. An engine with prefix caching (vLLM, SGLang) also skips
  that prefill; ``hf`` runs it, one forward over the prefix, which "generated tokens" does not
  count (``TreeGroup.prefill_tokens`` does; ``bench/ettrl.py vote`` reports it).

Sampling stays a function of (seed, prompt key, index): roots are the stream's samples of key
``k``; branch b of fork j of root m is sample b of request key ``k·M·N + m·N + j`` under a seed
derived from the step's, so a tree regenerates exactly after a worker restart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from rlkit.rollout.engines.base import Engine, Request, Sample, SamplingParams, generate

ENTROPY_KINDS = ("shannon", "surprisal")


@dataclass(frozen=True)
class TreeShape:
    """M roots, N forks per root, B branches per fork."""

    roots: int
    forks: int
    branches: int

    @property
    def leaves_per_root(self) -> int:
        return 1 + self.forks * self.branches

    @property
    def group_size(self) -> int:
        return self.roots * self.leaves_per_root

    @property
    def token_ratio(self) -> float:
        """The spec's expected cost against flat sampling, forks spread evenly: (1+½NB)/(1+NB)."""
        nb = self.forks * self.branches
        return (1 + 0.5 * nb) / (1 + nb)

    @classmethod
    def for_group(cls, group_size: int, forks: int, branches: int) -> TreeShape:
        """The shape whose group is ``group_size`` responses; a clear error when none is."""
        per_root = 1 + forks * branches
        if forks < 1 or branches < 1:
            raise ValueError(f"rollout.fork_points and rollout.fork_branches must be >= 1, got {forks} and {branches}")
        if group_size < per_root or group_size % per_root:
            smallest = ", ".join(str(per_root * m) for m in (1, 2, 3))
            raise ValueError(
                f"rollout.num_generations={group_size} is too small for the fork budget or not a multiple of it: "
                f"each tree has 1 + fork_points·fork_branches = 1 + {forks}·{branches} = {per_root} leaves, so the "
                f"group size must be a multiple of {per_root} ({smallest}, ...)")
        return cls(group_size // per_root, forks, branches)


@dataclass
class TreeGroup:
    """One prompt's leaves, in order (root 0, its branches fork by fork, root 1, ...), and their cost."""

    leaves: list[Sample]
    generated_tokens: int  # tokens sampled: the roots' and the branches' own
    prefill_tokens: int  # prefix tokens the branches' prefills ran over (reused, not sampled)
    forks: list[list[int]]  # per root, the fork positions


def fork_positions(sample: Sample, forks: int, eos_id: int, kind: str = "shannon") -> list[int]:
    """The ``forks`` eligible positions of highest entropy, in increasing order (see the module
    docstring), padded with position 0 when the root has too few."""
    values = sample.entropies if kind == "shannon" else [-lp for lp in sample.logprobs]
    last = len(sample.completion_ids) - (1 if sample.completion_ids and sample.completion_ids[-1] == eos_id
                                         and not sample.truncated else 0)
    eligible = list(range(max(last, 0)))
    chosen = sorted(eligible, key=lambda t: (-values[t], t))[:forks]
    return sorted(chosen) + [0] * (forks - len(chosen))


def branch_key(prompt_key: int, root: int, fork: int, shape: TreeShape) -> int:
    return (prompt_key * shape.roots + root) * shape.forks + fork


def branch_seed(seed: int) -> int:
    """The seed branches draw with: another stream than the roots' (which use ``seed``)."""
    return int(np.random.SeedSequence([seed, 0x7E7]).generate_state(1)[0])


def grow_trees(engine: Engine, prompts: Sequence[Sequence[int]], keys: Sequence[int], shape: TreeShape,
               params: SamplingParams, seed: int, *, eos_id: int, entropy: str = "shannon") -> Iterator[list[tuple[int, TreeGroup]]]:
    """Yield ``(index of the prompt, its TreeGroup)`` lists as trees complete.

    All roots are sampled first (one stream), then all branches (a second stream, yielding each
    prompt once all its branches have ended).
    """
    if entropy not in ENTROPY_KINDS:
        raise ValueError(f"rollout.fork_entropy must be one of {', '.join(ENTROPY_KINDS)}, got {entropy!r}")
    roots = generate(engine, [Request.of(p, shape.roots, key=k) for p, k in zip(prompts, keys)], params, seed)
    requests, owners, fork_table = [], [], []
    for i, (prompt, key, samples) in enumerate(zip(prompts, keys, roots)):
        positions = []
        for m, root in enumerate(samples):
            chosen = fork_positions(root, shape.forks, eos_id, entropy)
            positions.append(chosen)
            for j, f in enumerate(chosen):
                requests.append(Request.of(list(prompt) + root.completion_ids[:f], shape.branches,
                                           key=branch_key(key, m, j, shape),
                                           max_new_tokens=params.max_new_tokens - f))
                owners.append((i, m, j, f))
        fork_table.append(positions)
    branches: dict[int, dict[tuple[int, int], tuple[int, list[Sample]]]] = {i: {} for i in range(len(prompts))}
    waiting = [shape.roots * shape.forks] * len(prompts)
    for ended in engine.stream(requests, params, branch_seed(seed)):
        done = []
        for r, samples in ended:
            i, m, j, f = owners[r]
            branches[i][(m, j)] = (f, samples)
            waiting[i] -= 1
            if waiting[i] == 0:
                done.append((i, _assemble(roots[i], branches[i], shape, len(prompts[i]), fork_table[i])))
        if done:
            yield done


def _assemble(roots: list[Sample], branches: dict[tuple[int, int], tuple[int, list[Sample]]], shape: TreeShape,
              prompt_length: int, forks: list[list[int]]) -> TreeGroup:
    leaves, generated, prefill = [], 0, 0
    for m, root in enumerate(roots):
        leaves.append(root)
        generated += len(root.completion_ids)
        for j in range(shape.forks):
            f, samples = branches[(m, j)]
            prefill += prompt_length + f
            for branch in samples:
                generated += len(branch.completion_ids)
                leaves.append(Sample(completion_ids=root.completion_ids[:f] + branch.completion_ids,
                                     logprobs=root.logprobs[:f] + branch.logprobs,
                                     entropies=root.entropies[:f] + branch.entropies,
                                     truncated=branch.truncated))
    return TreeGroup(leaves=leaves, generated_tokens=generated, prefill_tokens=prefill, forks=forks)
