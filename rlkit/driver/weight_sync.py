"""Getting the learner's new weights into every rollout worker at the step boundary.

Two ways (``cluster.weight_sync``):

* ``object_store``: learner rank 0 exports a CPU state dict, Ray's object store carries it, each
  worker loads it. Works everywhere; on a GPU it costs two device↔host copies of the model a step.
* ``broadcast``: learner rank 0 and the workers form a process group of their own
  (:mod:`rlkit.weight_broadcast`: NCCL between GPUs, gloo on CPU) and rank 0 broadcasts each tensor
  from where it lives. The group is formed before the first sync and again whenever a worker was
  replaced (the fleet's incarnations changed). If a sync over the group fails (a worker died midway),
  the workers that did not get the weights get them through the object store, and the group is
  formed again before the next sync: nothing is lost, only that sync is slower.

A worker restarted between syncs is given the current weights by the fleet
(:mod:`rlkit.driver.recovery`); under ``broadcast`` the fleet asks the learners for a CPU export
only then (``export``), so a run without failures never builds one.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from rlkit import metric_names as m
from rlkit.driver.recovery import RolloutFleet

logger = logging.getLogger("rlkit.weights")


class ObjectStoreSync:
    def __init__(self, learners: list, fleet: RolloutFleet):
        self.learners, self.fleet = learners, fleet

    def send(self, version: int) -> Any:
        """Queue the export of the learners' weights and their loading into every worker."""
        exports = [learner.export_weights.remote() for learner in self.learners]  # all ranks: ZeRO-3 gathers
        return self.fleet.load_weights(exports[0], version), exports[1:]

    def confirm(self, sent: Any) -> dict[str, float]:
        """Wait until every worker holds the new weights; what the sync moved and how long loading took."""
        loads, other_ranks = sent
        loaded = self.fleet.results(loads)
        ray.get(other_ranks)
        return {m.WEIGHT_SYNC_BYTES: float(max(out["bytes"] for out in loaded)),
                m.WEIGHT_LOAD_SECONDS: max(out["seconds"] for out in loaded)}


class BroadcastSync(ObjectStoreSync):
    def __init__(self, learners: list, fleet: RolloutFleet, *, loopback: bool, timeout_s: float):
        super().__init__(learners, fleet)
        self.loopback, self.timeout_s = loopback, timeout_s
        self.members: list[str] | None = None  # the worker incarnations the group was formed with
        self.specs: list | None = None
        self.groups_formed = 0

    def _form(self) -> None:
        """Learner rank 0 hosts the group; every worker joins (all calls at once: joining blocks
        until the whole group is there)."""
        if self.specs is None:
            self.specs = ray.get([learner.weight_specs.remote() for learner in self.learners])[0]
        host, port = ray.get(self.learners[0].rendezvous_address.remote(loopback=self.loopback))
        world = len(self.fleet) + 1
        hosting = self.learners[0].join_weight_group.remote(host, port, world, self.timeout_s)
        joins = [self.fleet.call(i, "join_weight_group", host, port, i + 1, world, self.specs, self.timeout_s,
                                 what="the weight-broadcast group") for i in range(len(self.fleet))]
        members = [ray.get(join.ref) for join in joins]
        ray.get(hosting)
        self.members = members
        self.groups_formed += 1
        logger.info("weight-broadcast group formed (%d workers, %s:%d)", len(members), host, port)

    def send(self, version: int) -> Any:
        if self.members != self.fleet.incarnations:
            self._form()
        self.fleet.set_weights_source(version, self._export_once())
        broadcasts = [learner.broadcast_weights.remote() for learner in self.learners]
        receives = [self.fleet.call(i, "receive_weights", version, what=f"weights v{version}")
                    for i in range(len(self.fleet))]
        return version, broadcasts, receives

    def confirm(self, sent: Any) -> dict[str, float]:
        version, broadcasts, receives = sent
        outcome = ray.get(broadcasts)[0]
        loaded, missing = [], []
        for call in receives:
            try:
                out = ray.get(call.ref)
            except (RayActorError, RayTaskError) as exc:
                missing.append((call, exc))
                continue
            self.fleet.incarnations[call.index] = out["incarnation"]
            loaded.append(out)
        if outcome["error"] or missing:
            self.members = None  # formed again before the next sync
            logger.warning("weight broadcast v%d failed (%s); %d worker(s) get the weights through the object "
                           "store", version, outcome["error"] or _first_line(missing[0][1]), len(missing))
            ref = self.fleet.weights_ref()
            loaded += self.fleet.results([self.fleet.call(call.index, "set_weights", ref, version,
                                                          what=f"weights v{version}") for call, _ in missing])
        return {m.WEIGHT_SYNC_BYTES: float(outcome["bytes"] or max(out["bytes"] for out in loaded)),
                m.WEIGHT_LOAD_SECONDS: max(out["seconds"] for out in loaded),
                m.WEIGHT_GROUPS_FORMED: float(self.groups_formed)}

    def _export_once(self):
        """A CPU export of the current weights, made only if a worker has to be given them."""
        learners, made = self.learners, {}

        def export() -> ray.ObjectRef:
            if "ref" not in made:
                exports = [learner.export_weights.remote() for learner in learners]
                ray.get(exports[1:])
                made["ref"] = exports[0]
            return made["ref"]

        return export


def build_weight_sync(mode: str, learners: list, fleet: RolloutFleet, *, loopback: bool,
                      timeout_s: float) -> ObjectStoreSync:
    if mode == "broadcast":
        return BroadcastSync(learners, fleet, loopback=loopback, timeout_s=timeout_s)
    return ObjectStoreSync(learners, fleet)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__

