"""Calls to rollout workers that survive the worker's death.

Ray tells the caller of an actor call about two kinds of trouble:

* ``ActorUnavailableError``: the actor cannot be reached now. Ray raises it for the call that was
  running when a restartable actor's process died, and, at once, for every call sent while the
  actor restarts. The actor comes back: a restart rebuilds the worker and reloads its model, which
  takes seconds for the tiny model and minutes for a large one on a busy node.
* ``ActorDiedError``: the actor is gone for good (it was killed for good, its constructor failed,
  or its node is lost for good).

Since a death also surfaces as "unavailable", the type alone does not say whether the process
died: each worker reports an *incarnation*, a random id drawn in its constructor. After an error
the fleet waits, with backoff and up to ``cluster.actor_restart_timeout_s``, until the worker
answers again. A new incarnation means the process died and restarted: that is charged as one
retry to the call. A worker gone for good is replaced by a new actor, also one retry. The same
incarnation means the worker was only out of reach: the call is sent again without a charge (up
to the same number of times). A call charged more than ``cluster.max_call_retries`` times stops
the run: what it runs kills its worker.

A restarted worker holds its initial weights. Before a lost call is sent again, the current
weights are loaded into it and the load is confirmed (awaited), and every generation result is
checked against the weights version it was sent for, so a worker that restarted unseen between
two calls cannot hand back samples of the initial policy as if they were of the current one.

Every retry is kept (``take_retries``) for ``RUN/failures.jsonl``: the worker, the call, the error,
whether the process had restarted, and the seconds waited.

Only calls that may run twice are retried here: generation with a fixed seed, loading weights,
evaluation. A learner's calls accumulate gradients and are not; a learner that dies ends the run
(``describe_actor_error`` names it), which resumes from its last checkpoint.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from rlkit.runs import ACTOR_RETRY

logger = logging.getLogger("rlkit.actors")
FIRST_BACKOFF_S, MAX_BACKOFF_S = 0.5, 10.0


class WorkerLost(RuntimeError):
    """A rollout worker could not be brought back, or one call kept killing it."""


@dataclass
class RecoverySettings:
    restart_timeout_s: float = 600.0  # cluster.actor_restart_timeout_s
    max_call_retries: int = 3  # cluster.max_call_retries

    @classmethod
    def from_config(cls, config) -> RecoverySettings:
        return cls(config.cluster.actor_restart_timeout_s, config.cluster.max_call_retries)


@dataclass
class WorkerCall:
    """One call sent to a rollout worker, and all that is needed to send it again."""

    index: int  # which worker
    method: str
    args: tuple
    kwargs: dict[str, Any]
    ref: ray.ObjectRef
    incarnation: str | None  # the worker's incarnation as the fleet knew it when the call was sent
    version: int | None = None  # generation: the weights version its groups must come from
    what: str = ""  # for messages: "8 prompts"
    retries: int = 0  # deaths of the worker charged to this call
    reconnects: int = 0  # times it was sent again to a worker that had not died


@dataclass
class _Weights:
    ref: ray.ObjectRef | None = None  # None (and no export): the workers' initial weights are the current ones
    version: int = 0
    export: Callable[[], ray.ObjectRef] | None = None  # makes ``ref`` when a worker first needs it


class RolloutFleet:
    """The rollout workers as the driver sees them.

    ``workers`` is the list of actor handles; a worker replaced after its death is swapped into the
    same list, so whoever owns the list (``cluster.Actors``) shuts the new one down too.
    ``spawn(index)`` starts a fresh worker actor for that slot.
    """

    def __init__(self, workers: list, settings: RecoverySettings | None = None,
                 spawn: Callable[[int], Any] | None = None):
        self.workers = workers
        self.settings = settings or RecoverySettings()
        self.spawn = spawn
        self.weights = _Weights()
        self.retries: list[dict[str, Any]] = []
        self.incarnations: list[str] = ray.get([w.incarnation.remote() for w in workers])
        self.last_load: dict[int, dict[str, Any]] = {}  # per worker: what its last set_weights reported

    def __len__(self) -> int:
        return len(self.workers)

    # --- sending --------------------------------------------------------------------------------

    def call(self, index: int, method: str, *args, what: str = "", **kwargs) -> WorkerCall:
        """Send ``method(*args, **kwargs)`` to worker ``index``."""
        ref = getattr(self.workers[index], method).remote(*args, **kwargs)
        return WorkerCall(index, method, args, kwargs, ref, self.incarnations[index], what=what)

    def generate(self, index: int, *args, what: str = "", method: str = "generate_groups", **kwargs) -> WorkerCall:
        """A ``generate_groups`` call whose groups must come from the current weights."""
        call = self.call(index, method, *args, what=what, **kwargs)
        call.version = self.weights.version
        return call

    def stream(self, index: int, *args, what: str = "", **kwargs) -> WorkerStream:
        """A ``stream_groups`` call: its groups arrive as the worker yields them."""
        return WorkerStream(self, self.generate(index, *args, what=what, method="stream_groups", **kwargs))

    def set_weights_source(self, version: int, export: Callable[[], ray.ObjectRef]) -> None:
        """The workers are given ``version`` some other way (a broadcast); a worker brought back
        later gets it from ``export()``, called only then."""
        self.weights = _Weights(None, version, export)

    def weights_ref(self) -> ray.ObjectRef | None:
        """The current weights in the object store (exported now if they were sent another way)."""
        if self.weights.ref is None and self.weights.export is not None:
            self.weights.ref = self.weights.export()
        return self.weights.ref

    def load_weights(self, weights: ray.ObjectRef, version: int) -> list[WorkerCall]:
        """Queue ``set_weights`` on every worker; calls sent after this one run on these weights."""
        self.weights = _Weights(weights, version)
        return [self.call(i, "set_weights", weights, version, what=f"weights v{version}")
                for i in range(len(self.workers))]

    # --- receiving ------------------------------------------------------------------------------

    def result(self, call: WorkerCall) -> Any:
        """The call's result; if its worker died or restarted, bring it back and send it again."""
        while True:
            try:
                out = ray.get(call.ref)
            except RayActorError as exc:
                if not self._is_worker_error(call, exc):
                    raise  # e.g. the learner that exported the weights died: not this worker's fault
                self._recover(call, exc)
                continue
            if call.method == "set_weights":
                self.incarnations[call.index] = out["incarnation"]
                self.last_load[call.index] = out
            if call.version is not None and _stale(out, call.version):
                self._recover(call, None)  # a restart nobody saw: initial weights
                continue
            return out

    def results(self, calls: list[WorkerCall]) -> list[Any]:
        return [self.result(call) for call in calls]

    def take_retries(self) -> list[dict[str, Any]]:
        """The retries since the last call, as ``failures.jsonl`` entries."""
        taken, self.retries = self.retries, []
        return taken

    # --- recovery -------------------------------------------------------------------------------

    def _is_worker_error(self, call: WorkerCall, exc: RayActorError) -> bool:
        actor_id = getattr(exc, "actor_id", None)
        return actor_id is None or actor_id == self.workers[call.index]._actor_id.hex()

    def _recover(self, call: WorkerCall, exc: RayActorError | None) -> None:
        started = time.monotonic()
        i = call.index
        if isinstance(exc, ActorDiedError):
            incarnation, replaced = self._replace(i, started), True
        else:
            incarnation, replaced = self._wait_until_back(i, started, exc)
        died = replaced or incarnation != call.incarnation
        if died:
            call.retries += 1
        else:
            call.reconnects += 1
        error = "stale weights" if exc is None else type(exc).__name__
        record = {"kind": ACTOR_RETRY, "actor": f"rollout worker {i}", "call": call.method,
                  "what": call.what, "error": error, "detail": _first_line(exc), "restarted": died,
                  "replaced": replaced, "retry": call.retries if died else call.reconnects,
                  "max_retries": self.settings.max_call_retries}
        if max(call.retries, call.reconnects) > self.settings.max_call_retries:
            self.retries.append(record | {"waited_s": round(time.monotonic() - started, 3), "gave_up": True})
            cause = "died" if died else "was out of reach"
            raise WorkerLost(f"rollout worker {i} {cause} {max(call.retries, call.reconnects)} times during the "
                             f"same {call.method} ({call.what or 'call'}); giving up (cluster.max_call_retries="
                             f"{self.settings.max_call_retries}): {_first_line(exc)}")
        if self.incarnations[i] != incarnation or exc is None:
            self._reload_weights(i, started)
        record["waited_s"] = round(time.monotonic() - started, 3)
        self.retries.append(record)
        logger.warning("rollout worker %d %s (%s); %s after %.1f s, sending %s again (%s %d of %d)", i,
                       "died" if died else "was out of reach", error,
                       "replaced" if replaced else "back", record["waited_s"], call.what or call.method,
                       "retry" if died else "reconnect", record["retry"], self.settings.max_call_retries)
        call.ref = getattr(self.workers[i], call.method).remote(*call.args, **call.kwargs)
        call.incarnation = self.incarnations[i]
        if call.version is not None:
            call.version = self.weights.version

    def _deadline(self, started: float) -> float:
        return started + self.settings.restart_timeout_s

    def _wait_until_back(self, i: int, started: float, exc: BaseException | None) -> tuple[str, bool]:
        """(incarnation, replaced): poll the worker with backoff until it answers."""
        delay = FIRST_BACKOFF_S
        while True:
            remaining = self._deadline(started) - time.monotonic()
            if remaining <= 0:
                raise WorkerLost(f"rollout worker {i} did not come back within {self.settings.restart_timeout_s:g} s "
                                 f"(cluster.actor_restart_timeout_s) after {_first_line(exc)}")
            try:
                return ray.get(self.workers[i].incarnation.remote(), timeout=remaining), False
            except ActorDiedError:
                return self._replace(i, started), True
            except (ActorUnavailableError, GetTimeoutError):
                time.sleep(min(delay, max(self._deadline(started) - time.monotonic(), 0.0)))
                delay = min(2 * delay, MAX_BACKOFF_S)

    def _replace(self, i: int, started: float) -> str:
        """Start a new actor in slot ``i`` (the old one is gone for good); its incarnation."""
        if self.spawn is None:
            raise WorkerLost(f"rollout worker {i} is gone for good and this fleet cannot start another")
        ray.kill(self.workers[i], no_restart=True)
        self.workers[i] = self.spawn(i)
        remaining = max(self._deadline(started) - time.monotonic(), 1.0)
        try:
            return ray.get(self.workers[i].incarnation.remote(), timeout=remaining)
        except GetTimeoutError:
            raise WorkerLost(f"a new rollout worker {i} did not start within {self.settings.restart_timeout_s:g} s "
                             "(cluster.actor_restart_timeout_s)") from None

    def _reload_weights(self, i: int, started: float) -> None:
        """Load the current weights into worker ``i`` and wait until it has them."""
        ref = self.weights_ref()
        if ref is None:  # nothing trained yet: a fresh worker already holds them
            self.incarnations[i] = ray.get(self.workers[i].incarnation.remote())
            return
        load = WorkerCall(i, "set_weights", (ref, self.weights.version), {},
                          self.workers[i].set_weights.remote(ref, self.weights.version),
                          self.incarnations[i], what=f"weights v{self.weights.version}")
        self.result(load)  # a death during the load is recovered like any other


class WorkerStream:
    """A streaming call to one worker (a Ray generator of lists of groups).

    ``waitable`` is what to ``ray.wait`` on; :meth:`next_groups` gives the next item. If the worker
    dies midway, the fleet brings it back and sends the whole call again (the groups of a call
    depend only on its seed and prompts, so it yields the same ones); groups already delivered are
    not delivered twice.
    """

    def __init__(self, fleet: RolloutFleet, call: WorkerCall):
        self.fleet, self.call = fleet, call
        self.delivered: set[int] = set()
        self.ended = False

    @property
    def waitable(self):
        return self.call.ref

    def next_groups(self) -> list | None:
        """The next item's groups not delivered before (possibly none); None once the stream ended."""
        while True:
            try:
                groups = ray.get(next(self.call.ref))
            except StopIteration:
                self.ended = True
                return None
            except RayActorError as exc:
                if not self.fleet._is_worker_error(self.call, exc):
                    raise
                self.fleet._recover(self.call, exc)
                continue
            if self.call.version is not None and _stale(groups, self.call.version):
                self.fleet._recover(self.call, None)
                continue
            fresh = [g for g in groups if g.prompt_index not in self.delivered]
            self.delivered.update(g.prompt_index for g in fresh)
            return fresh

    def drain(self) -> list:
        """Every group still to come, in arrival order."""
        out = []
        while (groups := self.next_groups()) is not None:
            out.extend(groups)
        return out


def _stale(groups: Any, version: int) -> bool:
    return any(getattr(g, "policy_version", version) != version for g in groups)


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return "its groups came from other weights than those it was sent for"
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__

