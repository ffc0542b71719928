"""Where a run's actors go: per-role resources, placement groups, and a clear refusal when the
cluster cannot hold the run.

* Per role: each learner rank asks for ``cluster.learner_cpus`` CPUs, each rollout worker for
  ``cluster.worker_cpus`` (GPUs as :func:`rlkit.cluster.gpu_shares` splits them, or
  ``cluster.learner_gpus`` / ``cluster.worker_gpus`` when set). Reward actors run beside their
  rollout worker, on its node, outside the placement group; each reserves ``cluster.reward_cpus``
  and ``cluster.reward_gpus`` (none by default: they share their worker's node).
* ``cluster.placement``: ``default`` leaves each actor to Ray's scheduler. ``pack`` and ``spread``
  reserve one placement group for the whole run, a bundle per actor, learners first: ``pack`` puts
  them on as few nodes as fit (learner rank 0 beside the workers it sends weights to),
  ``spread`` over as many nodes as there are (one learner rank per node, workers apart). A
  restarted rollout worker keeps its bundle.
* Before anything is placed on a cluster joined by address, the run's demand is compared with
  what the cluster has, in total and per node: a run that cannot be placed is refused, naming what
  is short, instead of actors pending forever. A placement group that is not ready within
  ``cluster.start_timeout_s`` is refused the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import ray

from rlkit.config import ConfigError


@dataclass(frozen=True)
class Demand:
    role: str  # "learner", "rollout worker", "collaborator NAME worker", ...
    count: int
    cpus: float
    gpus: float


def describe(demands: list[Demand]) -> str:
    parts = [f"{d.count} {d.role}{'s' if d.count != 1 else ''} x {d.cpus:g} CPU" + (f" + {d.gpus:g} GPU" if d.gpus else "")
             for d in demands if d.count]
    return ", ".join(parts)


def check_placeable(demands: list[Demand]) -> None:
    """Refuse a run the joined cluster cannot hold: totals, and each actor against the largest node."""
    demands = [d for d in demands if d.cpus or d.gpus]  # reward actors reserve nothing by default
    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    cpus = sum(d.count * d.cpus for d in demands)
    gpus = sum(d.count * d.gpus for d in demands)
    have_cpus, have_gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    short = []
    if cpus > have_cpus + 1e-9:
        short.append(f"{cpus:g} CPUs, the cluster has {have_cpus:g}")
    if gpus > have_gpus + 1e-9:
        short.append(f"{gpus:g} GPUs, the cluster has {have_gpus:g}")
    for d in demands:
        if d.count and not any(n.get("CPU", 0.0) >= d.cpus and n.get("GPU", 0.0) >= d.gpus for n in nodes):
            short.append(f"a {d.role} needs {d.cpus:g} CPU" + (f" and {d.gpus:g} GPU" if d.gpus else "")
                         + " on one node, and no node has that much")
    if short:
        raise ConfigError(f"this run cannot be placed on the cluster: it needs {'; '.join(short)} "
                          f"({describe(demands)}). Lower learner.num_learners or rollout.num_workers, "
                          "cluster.learner_cpus, cluster.worker_cpus or cluster.reward_cpus, or add nodes")


class Placement:
    """The run's placement group (``pack`` / ``spread``), or nothing (``default``)."""

    def __init__(self, strategy: str, demands: list[Demand], timeout_s: float):
        self.group = None
        self.first_bundle: dict[str, int] = {}
        if strategy == "default":
            return
        from ray.util.placement_group import placement_group

        bundles, index = [], 0
        for d in demands:
            self.first_bundle[d.role] = index
            for _ in range(d.count):
                bundle = {"CPU": d.cpus}
                if d.gpus:
                    bundle["GPU"] = d.gpus
                bundles.append(bundle)
                index += 1
        if not bundles:
            return
        self.group = placement_group(bundles, strategy=strategy.upper(), name="")
        ready, _ = ray.wait([self.group.ready()], timeout=timeout_s)
        if not ready:
            ray.util.remove_placement_group(self.group)
            raise ConfigError(f"cluster.placement {strategy}: the cluster did not reserve {describe(demands)} within "
                              f"{timeout_s:g} s (cluster.start_timeout_s); it has {ray.cluster_resources()}")

    def options(self, role: str, index: int) -> dict:
        """Actor options that put actor ``index`` of ``role`` in its bundle (nothing under ``default``)."""
        if self.group is None:
            return {}
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
            self.group, placement_group_bundle_index=self.first_bundle[role] + index)}

    def remove(self) -> None:
        if self.group is not None:
            ray.util.remove_placement_group(self.group)
            self.group = None
