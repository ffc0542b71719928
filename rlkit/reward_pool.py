"""Reward functions run in a pool of Ray actors, each call with a timeout.

``build_reward_scorer(funcs, weights, rewards_config)`` returns the scorer a rollout worker uses:
a :class:`RewardPool` of ``rewards.num_workers`` actors, or with ``num_workers=0`` (or outside a
Ray session) a :class:`~rlkit.reward_runner.RewardRunner` in the calling process. Both have
``score(prompts, completions, completion_ids, rows) -> RewardOutcome`` and ``close()``.

In the pool, reward ``f`` always runs on actor ``f % num_actors`` and always on the whole batch
(a reward may compare the completions of a group), so what it returns never depends on timing.
An actor runs one call at a time (the next is sent when the last came back), and each call gets
``timeout_s`` from when it is sent. A call that runs longer is a failure ("timeout after Xs"): its
actor is killed and replaced, and the rewards still to run on it go to the replacement. An actor
whose process died (a reward that called ``os._exit``, a segfault) is replaced the same way. Either
way the other rewards of the batch still count. Counting and weighting are those of
:mod:`rlkit.reward_runner`, shared with the in-process path.

Ray's two kinds of actor trouble are told apart (see :mod:`rlkit.driver.recovery` for rollout workers):
an actor that is only out of reach (``ActorUnavailableError``; reward actors are never restarted by
Ray, so this is a network hiccup) is waited for, with backoff, and the call is sent to it again
within the call's own deadline; each such retry is kept in ``RewardOutcome.retries`` for
``failures.jsonl``. A call whose actor died (``ActorDiedError``) is not sent again: its retry budget is
zero, because a reward call that kills its process is nearly always the reward's own doing on that
input, so a retry would double the cost of every such batch to fail the same way. It counts as the
reward's failure on the batch, and the actor is replaced. The exception is an actor that died with
its node (the node is no longer alive in the cluster): that is not the reward's doing, so the call
is sent again to the replacement (``MAX_RECONNECTS`` times at most, within the call's deadline) and
kept in ``retries`` as a restart.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlkit.reward_runner import (RewardBatch, RewardFn, RewardOutcome, RewardRunner, RewardScores, check_weights,
                                 combine, resolve_reward_funcs, score_one)
from rlkit.runs import ACTOR_RETRY

logger = logging.getLogger("rlkit.rewards")
START_TIMEOUT_S = 300.0  # an actor that is not up by then means the cluster cannot place it
MAX_RECONNECTS = 3  # sends of one call to an actor that was out of reach


class RewardScorer(Protocol):
    def score(self, prompts: list[Any], completions: list[str], completion_ids: list[list[int]],
              rows: list[dict[str, Any]], group_ids: list[int] | None = None) -> RewardOutcome: ...

    def close(self) -> None: ...


def build_reward_scorer(funcs: list[tuple[str, RewardFn | str | type]], weights: list[float] | None,
                        rewards_config, *, cpus: float = 0.0, gpus: float = 0.0, sandbox=None) -> RewardScorer:
    """The scorer ``rewards_config`` (a :class:`~rlkit.config.RewardsConfig`) asks for; each pool
    actor reserves ``cpus`` and ``gpus`` (``cluster.reward_cpus``, ``cluster.reward_gpus``) and
    takes the run's ``sandbox`` policy (a :class:`~rlkit.config.SandboxConfig`; None: the defaults).

    ``funcs`` may hold plugin references and classes: they are resolved where the rewards run.
    """
    check_weights(weights, len(funcs))
    if rewards_config.num_workers >= 1 and ray.is_initialized():
        return RewardPool(funcs, weights, args=rewards_config.args, timeout_s=rewards_config.timeout_s,
                          num_workers=rewards_config.num_workers, cpus=cpus, gpus=gpus,
                          sandbox=(sandbox.require, sandbox.url) if sandbox is not None else (None, None))
    if rewards_config.num_workers >= 1:
        logger.info("no Ray session: rewards run in this process (as with rewards.num_workers=0)")
    return RewardRunner(resolve_reward_funcs(funcs, rewards_config.args), weights, timeout_s=rewards_config.timeout_s)


class RewardActor:
    """Holds the resolved reward functions; one call scores one function on one batch."""

    def __init__(self, funcs: list[tuple[str, RewardFn | str | type]], args: dict[str, dict[str, Any]],
                 sandbox: tuple[str | None, str | None] = (None, None)):
        from rlkit.sandbox import configure

        configure(*sandbox)  # the run's policy for code its rewards run (sandbox.require, sandbox.url)
        self.funcs = resolve_reward_funcs(funcs, args)

    def score(self, index: int, batch: RewardBatch) -> RewardScores:
        return score_one(self.funcs[index][1], batch)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@dataclass
class _Lane:
    """One actor's queue of reward indices for the batch being scored; the first one is running."""

    actor_index: int
    queue: deque[int]
    ref: Any = None  # the running call
    deadline: float = math.inf
    reconnects: int = 0


class RewardPool:
    """``min(num_workers, len(funcs))`` reward actors (more would sit idle: a batch is not split)."""

    def __init__(self, funcs: list[tuple[str, RewardFn | str | type]], weights: list[float] | None = None, *,
                 args: dict[str, dict[str, Any]] | None = None, timeout_s: float | None = 30.0,
                 num_workers: int = 1, cpus: float = 0.0, gpus: float = 0.0,
                 sandbox: tuple[str | None, str | None] = (None, None)):
        self.names = [name for name, _ in funcs]
        self.weights = check_weights(weights, len(funcs))
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        # by default (cpus=0) reward actors share the cores and never hold a CPU slot a rollout or
        # learner actor is waiting for; max_restarts=0: we replace them ourselves, between calls.
        # Placed on this node if it can be (soft): next to the caller, where its file.py references exist.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self._actor_class = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(RewardActor).options(
            scheduling_strategy=here)
        self._init_args = (list(funcs), dict(args or {}), tuple(sandbox))
        self._actors = [self._actor_class.remote(*self._init_args) for _ in range(min(num_workers, len(funcs)))]
        self._nodes: list[str] = self._wait_ready(self._actors)  # each actor's node, to tell a lost node apart

    def score(self, prompts: list[Any], completions: list[str], completion_ids: list[list[int]],
              rows: list[dict[str, Any]], group_ids: list[int] | None = None) -> RewardOutcome:
        batch = RewardBatch.from_rows(prompts, completions, completion_ids, rows, group_ids)
        self._retries: list[dict[str, Any]] = []
        outcome = combine(self.names, self.weights, batch, rows, self._run(batch))
        outcome.retries = self._retries
        return outcome

    def close(self) -> None:
        if ray.is_initialized():  # after ray.shutdown the actors are gone already
            for actor in self._actors:
                ray.kill(actor)
        self._actors = []

    def __enter__(self) -> RewardPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self, batch: RewardBatch) -> list[RewardScores]:
        if not self._actors:
            raise RuntimeError("this RewardPool is closed")
        results: list[RewardScores | None] = [None] * len(self.names)
        width = len(self._actors)
        lanes = [_Lane(a, deque(range(a, len(self.names), width))) for a in range(width)]
        for lane in lanes:
            self._submit_next(lane, batch)
        while active := [lane for lane in lanes if lane.ref is not None]:
            refs = [lane.ref for lane in active]
            wait = min(lane.deadline for lane in active) - time.monotonic()
            ray.wait(refs, num_returns=1, timeout=None if wait == math.inf else max(wait, 0.0))
            ready = set(ray.wait(refs, num_returns=len(refs), timeout=0)[0])
            now = time.monotonic()  # finished calls are taken first: none times out while we wait
            for lane in active:
                if lane.ref in ready:
                    results[lane.queue[0]] = self._collect(lane, batch)
                    if results[lane.queue[0]] is None:
                        continue  # sent again to an actor that was out of reach
                elif now >= lane.deadline:
                    results[lane.queue[0]] = RewardScores.failed(len(batch.completions),
                                                                 f"timeout after {self.timeout_s:g}s")
                    self._replace(lane, "timed out")
                else:
                    continue
                lane.queue.popleft()
                self._submit_next(lane, batch)
        return results

    def _submit_next(self, lane: _Lane, batch: RewardBatch) -> None:
        """One call in flight per actor: had a second one been queued, a reward that kills the
        process could take the finished result of the call before it along, depending on timing."""
        lane.ref = self._actors[lane.actor_index].score.remote(lane.queue[0], batch) if lane.queue else None
        lane.deadline = time.monotonic() + (self.timeout_s or math.inf)
        lane.reconnects = 0

    def _collect(self, lane: _Lane, batch: RewardBatch) -> RewardScores | None:
        """The finished call's scores, or None when it was sent again (its actor was out of reach)."""
        try:
            return ray.get(lane.ref)
        except ray.exceptions.ActorUnavailableError as exc:
            if lane.reconnects < MAX_RECONNECTS and self._reconnect(lane, batch, exc):
                return None
            self._replace(lane, "was out of reach")
            return RewardScores.failed(len(batch.completions), f"reward actor out of reach: {_first_line(exc)}")
        except ray.exceptions.RayActorError as exc:
            node_lost = not _node_alive(self._nodes[lane.actor_index])
            self._replace(lane, "was lost with its node" if node_lost else "died")
            if node_lost and lane.reconnects < MAX_RECONNECTS and time.monotonic() < lane.deadline:
                self._resend_to_replacement(lane, batch, exc)
                return None
            return RewardScores.failed(len(batch.completions), f"reward process died: {_first_line(exc)}")
        except ray.exceptions.RayError as exc:  # e.g. the batch could not be unpickled there
            return RewardScores.failed(len(batch.completions), f"{type(exc).__name__}: {_first_line(exc)}")

    def _reconnect(self, lane: _Lane, batch: RewardBatch, exc: BaseException) -> bool:
        """Wait, with backoff and within the call's deadline, until the lane's actor answers; then send
        the call to it again. False if it did not answer in time or is gone."""
        started, delay = time.monotonic(), 0.25
        actor = self._actors[lane.actor_index]
        while (remaining := lane.deadline - time.monotonic()) > 0:
            try:
                ray.get(actor.__ray_ready__.remote(), timeout=remaining)
                break
            except ray.exceptions.ActorDiedError:
                return False
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.GetTimeoutError):
                time.sleep(min(delay, max(lane.deadline - time.monotonic(), 0.0)))
                delay = min(2 * delay, 5.0)
        else:
            return False
        lane.reconnects += 1
        lane.ref = actor.score.remote(lane.queue[0], batch)  # the deadline stays the first send's
        waited = time.monotonic() - started
        self._retries.append({"kind": ACTOR_RETRY, "actor": f"reward actor {lane.actor_index}",
                              "call": self.names[lane.queue[0]], "error": type(exc).__name__,
                              "detail": _first_line(exc), "restarted": False, "replaced": False,
                              "retry": lane.reconnects, "max_retries": MAX_RECONNECTS, "waited_s": round(waited, 3)})
        logger.warning("reward actor %d was out of reach in reward %r; back after %.1f s, sent again (%d of %d)",
                       lane.actor_index, self.names[lane.queue[0]], waited, lane.reconnects, MAX_RECONNECTS)
        return True

    def _resend_to_replacement(self, lane: _Lane, batch: RewardBatch, exc: BaseException) -> None:
        lane.reconnects += 1
        lane.ref = self._actors[lane.actor_index].score.remote(lane.queue[0], batch)  # same deadline
        self._retries.append({"kind": ACTOR_RETRY, "actor": f"reward actor {lane.actor_index}",
                              "call": self.names[lane.queue[0]], "error": type(exc).__name__,
                              "detail": "its node was lost; " + _first_line(exc), "restarted": True,
                              "replaced": True, "retry": lane.reconnects, "max_retries": MAX_RECONNECTS,
                              "waited_s": round(self._replaced_in, 3)})

    def _replace(self, lane: _Lane, why: str) -> None:
        """Kill the lane's actor and start a fresh one."""
        started = time.monotonic()
        ray.kill(self._actors[lane.actor_index], no_restart=True)
        self._actors[lane.actor_index] = self._actor_class.remote(*self._init_args)
        (self._nodes[lane.actor_index],) = self._wait_ready([self._actors[lane.actor_index]])
        self._replaced_in = time.monotonic() - started
        logger.warning("reward actor %d %s in reward %r; replaced in %.1fs", lane.actor_index, why,
                       self.names[lane.queue[0]], time.monotonic() - started)

    def _wait_ready(self, actors: list) -> list[str]:
        """Block until the actors are constructed (their start-up must not eat into a call's timeout,
        and a bad plugin reference should fail here, with the actor's traceback); their nodes."""
        return ray.get([actor.node_id.remote() for actor in actors], timeout=START_TIMEOUT_S)


def _node_alive(node_id: str) -> bool:
    """Whether the cluster still lists the node as alive (an actor lost with its node died after
    the cluster marked the node dead)."""
    return any(node["NodeID"] == node_id and node["Alive"] for node in ray.nodes())


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__
