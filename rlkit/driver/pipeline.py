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
its initial weights; the fleet (:mod:`rlkit.driver.recovery`) waits until it answers, loads the current
weights into it and sends the lost chunk again with the same sampling seed, so no group is lost or
trained twice and the run goes on as if nothing had happened.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

import numpy as np
import ray

from rlkit import metric_names as m
from rlkit.config import ConfigError, RLConfig
from rlkit.data import RolloutGroup
from rlkit.driver.micro_batches import MicroBatchFeed, MicroBatchLimits
from rlkit.driver.recovery import RolloutFleet, WorkerStream
from rlkit.driver.weight_sync import ObjectStoreSync, build_weight_sync
from rlkit.objectives.hooks import DriverState, ExtraRows
from rlkit.prompts import PromptSource
from rlkit.rollout.collaborators import SOURCE_PREFIX, Collaborator, is_shared
from rlkit.seeding import chunk_seed


@dataclass
class StepOutput:
    groups: list[RolloutGroup]
    learner: dict[str, float]  # reduced over learner ranks
    update_seconds: float  # from the last micro-batch queued to the new weights loaded in every worker
    wait_seconds: float  # time the driver spent waiting for generation after the learners went idle
    dropped: list[RolloutGroup] = field(default_factory=list)  # sampled, left out by dynamic sampling
    replayed: list[RolloutGroup] = field(default_factory=list)  # trained again from earlier steps
    extra: dict[str, Any] = field(default_factory=dict)
    retries: list[dict[str, Any]] = field(default_factory=list)  # rollout calls sent again (failures.jsonl)


@dataclass
class Generation:
    """One generation call of a step: a stream of groups from a worker, or groups restored from a
    checkpoint."""

    items: list[tuple[int, dict[str, Any]]]
    stream: WorkerStream | None = None
    restored: list[RolloutGroup] | None = None


def dynamic_sampling_enabled(config: RLConfig) -> bool:
    """``rollout.dynamic_sampling``, with ``auto`` resolved by the objective (on for DAPO)."""
    setting = config.rollout.dynamic_sampling
    if setting != "auto":
        return setting == "true"
    from rlkit.plugins import objectives  # late: the registry loads the built-in objectives

    return bool(getattr(objectives.get(config.objective.name), "dynamic_sampling_by_default", False))


def _zero_variance(group: RolloutGroup) -> bool:
    return len(set(group.rewards)) == 1


def _without(groups: list[RolloutGroup], removed: list[RolloutGroup]) -> list[RolloutGroup]:
    gone = {id(g) for g in removed}
    return [g for g in groups if id(g) not in gone]


class StepPipeline:
    """The driver's side of a run, one step at a time. ``assign_advantages``, ``extras`` and
    ``driver_state`` come from the driver's only copy of the objective, made once by the trainer:
    each group's advantages are computed here, once, as it joins its step, and travel with it."""

    def __init__(self, config: RLConfig, fleet: RolloutFleet, learners: list, source: PromptSource,
                 assign_advantages: Callable[[list[RolloutGroup]], None],
                 extras: ExtraRows | None = None, driver_state: DriverState | None = None,
                 equal_passes: bool = False, weight_sync: str = "object_store",
                 collaborators: list[tuple[Collaborator, RolloutFleet]] | None = None,
                 peer_learners: dict[str, list] | None = None):
        self.config = config
        self.fleet = fleet
        self.learners = learners
        self.source = source
        self.assign_advantages = assign_advantages
        self.extras = extras
        self.driver_state = driver_state
        self.pending: dict[int, list[Generation]] = {}  # step -> its generation calls
        self.micro_batch_limits = MicroBatchLimits.from_config(config)
        self.equal_passes = equal_passes  # every learner rank runs as many micro-batches (ZeRO-2/3, ...)
        self.weight_sync = build_weight_sync(weight_sync, learners, fleet, loopback=not config.cluster.address,
                                             timeout_s=config.cluster.weight_sync_timeout_s)
        self.next_to_submit = 0
        self.dynamic_sampling = dynamic_sampling_enabled(config)
        # earlier steps' groups, for rollout.replay_fraction; and how many each submitted step replays
        self.replay: collections.deque[list[RolloutGroup]] = collections.deque(maxlen=config.rollout.replay_buffer_steps)
        self.replay_counts: dict[int, int] = {}
        # F-TIS collaborators (rlkit/rollout/collaborators.py): each samples whole groups for its own
        # prompts every step, which join the step beside the local ones
        self.collaborators = collaborators or []
        if self.collaborators and self.dynamic_sampling:
            raise ConfigError("rollout.collaborators cannot be combined with dynamic sampling (the objective "
                              f"{config.objective.name!r} turns it on: set rollout.dynamic_sampling: false)")
        self.shared_per_step = sum(c.prompts_per_step for c, _ in self.collaborators)
        # swarm peers (collaborators with learn: true): their learners train on every group of the
        # step from their side, and their workers get their new weights at the step's end
        self.peers = [SwarmPeer(c, (peer_learners or {})[c.name], ObjectStoreSync((peer_learners or {})[c.name], fleet))
                      for c, fleet in self.collaborators if c.learn]

    # --- producing -----------------------------------------------------------------------------

    def _submit(self, step: int) -> None:
        rollout = self.config.rollout
        buffered = sum(len(groups) for groups in self.replay)
        self.replay_counts[step] = min(round(rollout.replay_fraction * rollout.prompts_per_step), buffered)
        fresh = rollout.prompts_per_step - self.replay_counts[step]
        self.pending[step] = self._generations(step, fresh, first_index=0, round_=0)
        self.pending[step] += self._shared_generations(step, first_index=rollout.prompts_per_step)
        if self.extras is not None:
            self.extras.submit(step, [item for generation in self.pending[step] for item in generation.items])

    def _generations(self, step: int, num_prompts: int, first_index: int, round_: int) -> list[Generation]:
        """Draw ``num_prompts`` prompts and stream their generation: one call per worker, each with a
        contiguous share of the prompts (the engine batches a worker's share as it likes)."""
        items = list(enumerate(self.source.take(num_prompts), start=first_index))
        seed, workers = chunk_seed(self.config.seed, step, round_), len(self.fleet)
        share = -(-len(items) // workers)
        out = []
        for worker, start in enumerate(range(0, len(items), share)):
            part = items[start:start + share]
            stream = self.fleet.stream(worker, part, seed, what=f"{len(part)} prompts of step {step + 1}")
            out.append(Generation(part, stream=stream))
        return out

    def _shared_generations(self, step: int, first_index: int) -> list[Generation]:
        """Each collaborator's groups of the step: its own prompts, after the local ones, on its own
        workers (whole groups: vertical collaboration)."""
        out, seed = [], chunk_seed(self.config.seed, step, 0)
        for collaborator, fleet in self.collaborators:
            items = list(enumerate(self.source.take(collaborator.prompts_per_step), start=first_index))
            first_index += len(items)
            share = -(-len(items) // len(fleet))
            for worker, start in enumerate(range(0, len(items), share)):
                part = items[start:start + share]
                stream = fleet.stream(worker, part, seed, what=f"{len(part)} prompts of step {step + 1} "
                                                              f"for collaborator {collaborator.name}")
                out.append(Generation(part, stream=stream))
        return out

    def _fill(self, step: int) -> None:
        last = min(step + self.config.rollout.max_staleness, self.config.max_steps - 1)
        while self.next_to_submit <= last:
            self._submit(self.next_to_submit)
            self.next_to_submit += 1

    # --- consuming -----------------------------------------------------------------------------

    def run_step(self, step: int) -> StepOutput:
        self._fill(step)
        generations = self.pending.pop(step)
        replayed = self._draw_replay(step, self.replay_counts.pop(step, 0))
        needed = self.config.rollout.prompts_per_step - len(replayed) + self.shared_per_step
        feed = MicroBatchFeed(self.learners, self.micro_batch_limits, version=step,
                              extras=(lambda: self.extras.rows(step)) if self.extras is not None else None,
                              equal_passes=self.equal_passes)
        peer_feeds = [MicroBatchFeed(peer.learners, self.micro_batch_limits, version=step) for peer in self.peers]
        kept, dropped = [], []
        wait_seconds, rounds = 0.0, 0
        started = generated = time.time()
        while True:
            for arrived, waited, arrived_at in self._arrivals(generations):
                generated = max(generated, arrived_at)  # when the step's last groups arrived, in the end
                wait_seconds += waited
                take, drop = self._accept(arrived, needed - len(kept))
                for group in take:
                    if is_shared(group.source):  # scored under the learners' weights of this step
                        group.policy_version = step
                self.assign_advantages(take)
                kept.extend(take)
                dropped.extend(drop)
                feed.add(take)
                for peer, peer_feed in zip(self.peers, peer_feeds):
                    peer_feed.add([peer.view(group, step) for group in take])
                if len(kept) == needed:
                    break
            if len(kept) == needed or rounds == self.config.rollout.max_sampling_rounds:
                break
            rounds += 1  # dynamic sampling: more prompts, in proportion to how many groups were kept
            missing, offered = needed - len(kept), len(kept) + len(dropped)
            more = math.ceil(missing * offered / max(len(kept), offered / 8))
            generations = self._generations(step, min(more, 2 * needed), first_index=offered, round_=rounds)
        filler = [g for g in dropped if _zero_variance(g)][:needed - len(kept)]  # no gradient, keeps the shape
        self.assign_advantages(filler)
        feed.add(filler)
        feed.add(replayed)
        feed.finish()
        groups = kept + filler + replayed
        learner_calls = feed.calls
        stats = feed.step_stats(extras_count=self.extras is not None and self.extras.counts_in_step_stats)
        # Everything from here to the next step's first generation is queued at once, in the order
        # each actor must run it (step, export, load the weights, generate), so no round trip to
        # the driver sits between the update and the next samples.
        steps = [l.step.remote(stats, step) for l in self.learners]
        peer_steps = []
        for peer, peer_feed in zip(self.peers, peer_feeds):
            peer_feed.finish()
            peer_steps.append([l.step.remote(peer_feed.step_stats(extras_count=False), step) for l in peer.learners])
        t0 = time.perf_counter()
        loaded = self.weight_sync.send(step + 1)
        peer_loaded = [peer.sync.send(step + 1) for peer in self.peers]
        if self.config.rollout.replay_fraction > 0:
            # in prompt order, not arrival order, so which groups a later step replays depends only on
            # the seeds; and before the next steps are submitted, since they may replay it
            self.replay.append(sorted(kept + filler, key=lambda g: g.prompt_index))
        if step + 1 < self.config.max_steps:
            self._fill(step + 1)
        micro_batches = ray.get(learner_calls)
        learner_out = _reduce(ray.get(steps))
        learner_out[m.LEARNER_OVERLAP_SECONDS] = _overlap(micro_batches, started, generated)
        learner_out.update(self.weight_sync.confirm(loaded))
        for peer, peer_feed, calls, sent in zip(self.peers, peer_feeds, peer_steps, peer_loaded):
            ray.get(peer_feed.calls)
            peer_out = _reduce(ray.get(calls))
            peer.sync.confirm(sent)
            learner_out.update({f"{peer.collaborator.name}/{key}": peer_out[key] for key in peer.logged(peer_out)})
        groups.sort(key=lambda g: g.prompt_index)
        sampling = {"sampled_groups": len(kept) + len(dropped), "sampling_rounds": rounds,
                    "filler_groups": len(filler)} if self.dynamic_sampling else {}
        if self.driver_state is not None:
            sampling.update(self.driver_state.observe(learner_out))
        if self.config.rollout.replay_fraction > 0:
            sampling["replayed_groups"] = len(replayed)
            sampling["replay_age"] = statistics.fmean(step - g.policy_version for g in replayed) if replayed else 0.0
        return StepOutput(groups=groups, learner=learner_out, update_seconds=time.perf_counter() - t0,
                          wait_seconds=wait_seconds, dropped=_without(dropped, filler), replayed=replayed,
                          extra=sampling, retries=self.fleet.take_retries())

    def _draw_replay(self, step: int, count: int) -> list[RolloutGroup]:
        """``count`` groups of the buffered steps, drawn without replacement with a per-step seed."""
        if not count:
            return []
        pool = [group for groups in self.replay for group in groups]
        picks = np.random.default_rng([self.config.seed, 13, step]).choice(len(pool), size=count, replace=False)
        return [pool[i] for i in sorted(picks)]

    def _arrivals(self, generations: list[Generation]):
        """Yield ``(groups, seconds waited, when they arrived)``: as they arrive under ``periodic_async``;
        one at a time in prompt order under ``sync`` (once all have arrived) and under dynamic sampling
        (where the step fills up must not depend on timing)."""
        in_order = self.config.rollout.schedule == "sync" or self.dynamic_sampling
        now = time.time()
        for group in sorted((g for gen in generations if gen.restored is not None for g in gen.restored),
                            key=lambda g: g.prompt_index):
            yield [group], 0.0, now
        streams = [gen.stream for gen in generations if gen.stream is not None]
        if not streams:
            return
        if self.config.rollout.schedule == "sync":
            t0 = time.perf_counter()
            arrived = sorted((g for stream in streams for g in stream.drain()), key=lambda g: g.prompt_index)
            waited, now = time.perf_counter() - t0, time.time()
            for group in arrived:
                yield [group], waited, now
                waited = 0.0
            return
        expected = sorted(index for gen in generations if gen.stream is not None for index, _ in gen.items)
        held: dict[int, RolloutGroup] = {}
        while streams:
            t0 = time.perf_counter()
            ready, _ = ray.wait([s.waitable for s in streams], num_returns=1)
            stream = next(s for s in streams if s.waitable == ready[0])
            groups = stream.next_groups()
            waited, now = time.perf_counter() - t0, time.time()
            if groups is None:
                streams.remove(stream)
                continue
            if not in_order:
                if groups:
                    yield groups, waited, now
                continue
            held.update((g.prompt_index, g) for g in groups)
            while expected and expected[0] in held:
                yield [held.pop(expected.pop(0))], waited, now
                waited = 0.0

    def _accept(self, groups: list[RolloutGroup], room: int) -> tuple[list[RolloutGroup], list[RolloutGroup]]:
        """(groups that join the step, groups left out): under dynamic sampling only groups whose
        rewards differ join, and never more than the step has room for."""
        if not self.dynamic_sampling:
            return groups, []
        useful = [g for g in groups if not _zero_variance(g)]
        take = useful[:room]
        return take, _without(groups, take)

    def push_initial_weights(self, version: int) -> None:
        self.weight_sync.confirm(self.weight_sync.send(version))
        for peer in self.peers:  # on resume, a peer's restored weights
            peer.sync.confirm(peer.sync.send(version))

    # --- checkpoint state ----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Cursor and, off-policy, the groups already generated for later steps (kept exactly)."""
        for generations in self.pending.values():
            for gen in generations:
                if gen.stream is not None:  # it is drained now; the step will take its groups as restored
                    gen.restored, gen.stream = gen.stream.drain(), None
        pending = {step: [gen.restored for gen in generations] for step, generations in self.pending.items()}
        state = {"source": self.source.state_dict(), "next_to_submit": self.next_to_submit, "pending": pending,
                 "replay": list(self.replay), "replay_counts": dict(self.replay_counts)}
        if self.extras is not None:
            state["extras"] = self.extras.state_dict()
        if self.driver_state is not None:
            state["objective"] = self.driver_state.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.source.load_state_dict(state["source"])
        self.next_to_submit = state["next_to_submit"]
        self.pending = {int(step): [Generation([(g.prompt_index, g.row) for g in groups], restored=groups)
                                    for groups in generations]
                        for step, generations in state["pending"].items()}
        self.replay.extend(state.get("replay", []))
        self.replay_counts = {int(k): v for k, v in state.get("replay_counts", {}).items()}
        if self.extras is not None:
            self.extras.load_state_dict(state["extras"])
        if self.driver_state is not None:
            self.driver_state.load_state_dict(state["objective"])


@dataclass
class SwarmPeer:
    """A collaborator with ``learn: true``: its learners, and the sync of their weights to its workers."""

    collaborator: Collaborator
    learners: list
    sync: ObjectStoreSync

    def view(self, group: RolloutGroup, step: int) -> RolloutGroup:
        """A step's group as this peer trains on it: its own groups on-policy, everyone else's as shared
        (the local model's as ``collaborator:local``). Rollouts, and so advantages, are shared."""
        if group.source == self.collaborator.source:
            return dataclasses.replace(group, source="policy", policy_version=step)
        origin = "local" if group.source == "policy" else group.source.removeprefix(SOURCE_PREFIX)
        return dataclasses.replace(group, source=SOURCE_PREFIX + origin, policy_version=step)

    @staticmethod
    def logged(out: dict[str, float]) -> list[str]:
        """The peer learner's values logged as ``NAME/key``: its loss, entropy, gradient norm, the objective's."""
        return [key for key in out if key not in (*m.SUMMED_OVER_RANKS, m.NORMALIZER)]


def _reduce(outputs: list[dict[str, float]]) -> dict[str, float]:
    """Sum the sums over learner ranks; weight the objective's per-token metrics by trained tokens."""
    tokens = sum(o[m.TOKENS] for o in outputs)
    trained = sum(o[m.TRAINED_TOKENS] for o in outputs)
    first = outputs[0]
    out = {k: sum(o[k] for o in outputs) for k in m.SUMMED_OVER_RANKS}
    out[m.LOSS] = out[m.LOSS_SUM] / first[m.NORMALIZER]
    out[m.ENTROPY] = out[m.ENTROPY_SUM] / max(tokens, 1.0)
    for key in first:
        if key in m.SUMMED_OVER_RANKS or key == m.NORMALIZER:
            continue
        if key in m.SLOWEST_RANK:
            out[key] = max(o[key] for o in outputs)
        else:
            out[key] = sum(o[key] * o[m.TRAINED_TOKENS] for o in outputs) / max(trained, 1.0)
    return out


def _overlap(micro_batches: list[dict[str, float]], started: float, generated: float) -> float:
    """Seconds the learners computed while the step was still generating (wall clock, summed over
    micro-batches): what periodic asynchrony gains over ``sync``."""
    return sum(max(0.0, min(mb["ended"], generated) - max(mb["started"], started)) for mb in micro_batches)
