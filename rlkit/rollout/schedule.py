"""Moving groups from rollout workers to learners, one optimizer step at a time.

One pipeline serves every schedule:

* ``sync``: a step's generation finishes before its first micro-batch is trained.
* ``periodic_async``: micro-batches go to the learners in completion order while later ones are
  still generating; new weights reach the workers only at the step boundary, so every sample of
  step k comes from policy k (on-policy, and equal to ``sync`` up to float summation order).
* ``max_staleness = s > 0``: generation for steps up to k+s is submitted before step k trains,
  so samples may come from a policy up to s versions old (bounded off-policy).

Ray runs an actor's calls in submission order, which is what makes this simple: a
``set_weights`` submitted after step k's generation calls applies to everything submitted later.

A rollout worker that dies (a crashed reward, an out-of-memory kill) is restarted by Ray with
its initial weights; the pipeline loads the current weights into it and submits the lost chunk
again with the same sampling seed, so no group is lost or trained twice and the run goes on as
if nothing had happened.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray

from rlkit.config import RLConfig
from rlkit.data import RolloutGroup
from rlkit.prompts import PromptSource


@dataclass
class StepOutput:
    groups: list[RolloutGroup]
    learner: dict[str, float]  # reduced over learner ranks
    update_seconds: float  # from the last micro-batch queued to the new weights loaded in every worker
    wait_seconds: float  # time the driver spent waiting for generation after the learners went idle
    extra: dict[str, Any] = field(default_factory=dict)


MAX_CHUNK_RETRIES = 3  # attempts after a worker death; rollout actors restart up to 3 times


@dataclass
class Chunk:
    """One generation call: the prompts it covers and how to submit it again if its worker dies."""

    ref: ray.ObjectRef
    items: list[tuple[int, dict[str, Any]]] | None = None  # None for groups restored from a checkpoint
    seed: int = 0
    worker: int = 0
    retries: int = 0


def chunk_seed(seed: int, step: int, chunk: int) -> int:
    """Sampling seed of one generation call; depends only on where the chunk sits in the run."""
    return int(np.random.SeedSequence([seed, step, chunk]).generate_state(1)[0])


class StepPipeline:
    def __init__(self, config: RLConfig, workers: list, learners: list, source: PromptSource):
        self.config = config
        self.workers = workers
        self.learners = learners
        self.source = source
        self.pending: dict[int, list[Chunk]] = {}  # step -> generation calls, one per chunk
        self.next_to_submit = 0
        self.weights: ray.ObjectRef | None = None  # the latest exported weights, for restarted workers
        self.version = 0

    # --- producing -----------------------------------------------------------------------------

    def _submit(self, step: int) -> None:
        rollout, group_per_chunk = self.config.rollout, self.config.learner.micro_batch_groups
        rows = self.source.take(rollout.prompts_per_step)
        items = list(enumerate(rows))
        chunks = []
        for c, start in enumerate(range(0, len(items), group_per_chunk)):
            part = items[start:start + group_per_chunk]
            seed, worker = chunk_seed(self.config.seed, step, c), c % len(self.workers)
            chunks.append(Chunk(self.workers[worker].generate_groups.remote(part, seed), part, seed, worker))
        self.pending[step] = chunks

    def _fill(self, step: int) -> None:
        last = min(step + self.config.rollout.max_staleness, self.config.max_steps - 1)
        while self.next_to_submit <= last:
            self._submit(self.next_to_submit)
            self.next_to_submit += 1

    # --- consuming -----------------------------------------------------------------------------

    def run_step(self, step: int) -> StepOutput:
        self._fill(step)
        chunks = {chunk.ref: chunk for chunk in self.pending.pop(step)}
        if self.config.rollout.schedule == "sync":
            ray.wait(list(chunks), num_returns=len(chunks), fetch_local=False)
        groups: list[RolloutGroup] = []
        learner_calls = []
        wait_seconds = 0.0
        remaining = list(chunks)
        while remaining:
            t0 = time.perf_counter()
            if self.config.rollout.schedule == "sync":
                ready, remaining = remaining[:1], remaining[1:]  # index order
            else:
                ready, remaining = ray.wait(remaining, num_returns=1)  # completion order
            chunk = chunks[ready[0]]
            chunk_groups = self._result(chunk)
            wait_seconds += time.perf_counter() - t0
            learner = self.learners[len(learner_calls) % len(self.learners)]
            learner_calls.append(learner.train_micro_batch.remote(chunk.ref))
            groups.extend(chunk_groups)
        stats = {"num_sequences": sum(len(g.rollouts) for g in groups),
                 "num_tokens": sum(g.num_tokens for g in groups)}
        # Everything from here to the next step's first generation is queued at once, in the order
        # each actor must run it (step, export, load the weights, generate), so no round trip to
        # the driver sits between the update and the next samples.
        steps = [l.step.remote(stats, step) for l in self.learners]
        t0 = time.perf_counter()
        loaded = self._send_weights(step + 1)
        if step + 1 < self.config.max_steps:
            self._fill(step + 1)
        ray.get(learner_calls)
        learner_out = _reduce(ray.get(steps))
        ray.get(loaded)
        groups.sort(key=lambda g: g.prompt_index)
        return StepOutput(groups=groups, learner=learner_out, update_seconds=time.perf_counter() - t0,
                          wait_seconds=wait_seconds)

    def _result(self, chunk: Chunk) -> list[RolloutGroup]:
        """The chunk's groups; if its worker died, reload the weights into it and generate again."""
        while True:
            try:
                return ray.get(chunk.ref)
            except ray.exceptions.RayActorError as exc:
                if chunk.items is None or chunk.retries >= MAX_CHUNK_RETRIES:
                    raise RuntimeError(f"rollout worker {chunk.worker} died {chunk.retries + 1} times "
                                       f"generating the same prompts; giving up") from exc
                chunk.retries += 1
                print(f"warning: rollout worker {chunk.worker} died ({type(exc).__name__}); restarted, "
                      f"regenerating its {len(chunk.items)} prompts (retry {chunk.retries})",
                      file=sys.stderr, flush=True)
                worker = self.workers[chunk.worker]
                worker.set_weights.remote(self.weights, self.version)  # a restarted actor has initial weights
                chunk.ref = worker.generate_groups.remote(chunk.items, chunk.seed)

    def _send_weights(self, version: int) -> list[ray.ObjectRef]:
        """Queue the export of the learners' weights and their loading into every worker."""
        exports = [l.export_weights.remote() for l in self.learners]  # all ranks: ZeRO-3 gathers
        self.weights, self.version = exports[0], version
        return [w.set_weights.remote(self.weights, version) for w in self.workers] + exports[1:]

    def push_initial_weights(self, version: int) -> None:
        ray.get(self._send_weights(version))

    # --- checkpoint state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Cursor and, off-policy, the groups already generated for later steps (kept exactly)."""
        pending = {step: [self._result(chunk) for chunk in chunks] for step, chunks in self.pending.items()}
        return {"source": self.source.state_dict(), "next_to_submit": self.next_to_submit, "pending": pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self.next_to_submit = state["next_to_submit"]
        self.pending = {int(step): [Chunk(ray.put(groups)) for groups in chunks]
                        for step, chunks in state["pending"].items()}


def _reduce(outputs: list[dict[str, float]]) -> dict[str, float]:
    """Sum the sums over learner ranks; weight the objective's per-token metrics by trained tokens."""
    tokens = sum(o["tokens"] for o in outputs)
    trained = sum(o["trained_tokens"] for o in outputs)
    summed = ("loss_sum", "entropy_sum", "tokens", "trained_tokens", "skipped_groups")
    busiest = ("learner_seconds", "grad_norm", "learning_rate")  # the same on every rank, or the slowest rank
    first = outputs[0]
    out = {k: sum(o[k] for o in outputs) for k in summed}
    out["loss"] = out["loss_sum"] / first["normalizer"]
    out["entropy"] = out["entropy_sum"] / max(tokens, 1.0)
    for key in first:
        if key in summed or key == "normalizer":
            continue
        if key in busiest:
            out[key] = max(o[key] for o in outputs)
        else:
            out[key] = sum(o[key] * o["trained_tokens"] for o in outputs) / max(trained, 1.0)
    return out
