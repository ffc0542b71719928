"""Starting (or joining) Ray and placing the learner and rollout actors."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import ray

from rlkit.config import ConfigError, RLConfig
from rlkit.driver.recovery import RecoverySettings, RolloutFleet


class StartTimeout(RuntimeError):
    """Actors did not finish starting within ``cluster.start_timeout_s``."""


@dataclass
class Actors:
    learners: list
    workers: list  # rollout worker handles; the fleet swaps in a replacement for one gone for good
    started_ray: bool
    spawn_worker: Callable[[int], object] | None = None
    fleet: RolloutFleet | None = field(default=None, repr=False)
    weight_sync: str = "object_store"  # cluster.weight_sync, resolved (weight_sync_mode)
    # F-TIS collaborators (rollout.collaborators): their rollout workers, and a fleet per collaborator
    collaborator_workers: dict[str, list] = field(default_factory=dict)
    collaborator_fleets: dict[str, RolloutFleet] = field(default_factory=dict, repr=False)
    collaborator_learners: dict[str, list] = field(default_factory=dict)  # swarm peers (learn: true)
    placement: object = None  # rlkit.placement.Placement: the run's placement group, if any

    def shutdown(self) -> None:
        peers = [a for group in (*self.collaborator_workers.values(), *self.collaborator_learners.values())
                 for a in group]
        for actor in self.learners + self.workers + peers:
            ray.kill(actor)
        if self.placement is not None:
            self.placement.remove()
        if self.started_ray:
            ray.shutdown()

    def name_of(self, exc: BaseException) -> str | None:
        """"learner rank R" or "rollout worker I" for an actor error raised by one of these actors."""
        actor_id = getattr(exc, "actor_id", None)
        for role, handles in (("learner rank", self.learners), ("rollout worker", self.workers)):
            for index, handle in enumerate(handles):
                if handle._actor_id.hex() == actor_id:
                    return f"{role} {index}"
        return None


def _use_gpu(config: RLConfig) -> bool:
    if config.cluster.use_gpu == "auto":
        import torch

        return torch.cuda.is_available()
    return config.cluster.use_gpu == "true"


def _keep_on_loopback() -> None:
    """An in-process cluster serves this machine only: keep Ray's servers on 127.0.0.1.

    On Linux Ray otherwise binds them to the machine's network address. This is Ray's own switch
    for single-machine platforms: the variable for the processes Ray starts, the constant for this
    one (the driver reads it when ``ray.init`` resolves its address).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def _without_job_env_vars(env_vars: dict[str, str]) -> dict[str, str]:
    """Drop the variables a submitted job's runtime env already sets: Ray refuses a driver that
    restates one (a Jobs API submission, by rlkit or with the Ray Jobs CLI, may set any of them)."""
    import json

    injected = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not injected:
        return env_vars
    job_vars = (json.loads(injected).get("runtime_env") or {}).get("env_vars") or {}
    return {k: v for k, v in env_vars.items() if k not in job_vars}


def start_ray(config: RLConfig, reward_actors: int = 0) -> bool:
    """Join ``cluster.address`` or start an in-process cluster; True when we started it.
    ``reward_actors``: how many the run will start (their ``cluster.reward_cpus`` count too)."""
    if ray.is_initialized():
        return False
    env = {"env_vars": _without_job_env_vars({"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"})}
    if config.cluster.address:
        ray.init(address=config.cluster.address, runtime_env=env, logging_level="ERROR")
        return True
    _keep_on_loopback()
    # Ray starts its workers at niceness 15, meant for background tasks. rlkit's actors are the job
    # itself: niced, any ordinary process on the machine (a build, another user's job) takes their
    # cores and a restarting actor may not come back within its bound. Unless the user's environment
    # says otherwise, they run at the driver's priority. (A cluster joined by address keeps what its
    # `ray start` was given: RAY_worker_niceness=0 ray start ...)
    os.environ.setdefault("RAY_worker_niceness", "0")
    from rlkit.rollout.collaborators import parse_collaborators

    peers = parse_collaborators(config)
    learners = config.learner.num_learners + sum(c.learn for c in peers)
    workers = config.rollout.num_workers + sum(c.num_workers for c in peers)
    needed = math.ceil(learners * config.cluster.learner_cpus + workers * config.cluster.worker_cpus
                       + reward_actors * config.cluster.reward_cpus)
    # Actors reserve cluster.learner_cpus / worker_cpus each; on a small machine tell Ray there are
    # enough so they all start (they then share the cores, which is what we want for a laptop-sized run).
    cpus = config.cluster.num_cpus or max(os.cpu_count() or 1, needed)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", runtime_env=env,
             configure_logging=True, log_to_driver=True)
    return True


def gpu_shares(gpus: float, learners: int, workers: int) -> tuple[float, float]:
    """The GPU fraction each learner and each rollout worker asks Ray for.

    A whole GPU each when there are enough. Otherwise the actors share: every learner still gets
    a GPU of its own (NCCL refuses two ranks on one device), so a learner takes just over half of
    one when there are several, leaving no room for a second learner there, and the workers split
    what is left of each GPU. Asking for more than the cluster has would leave actors pending
    forever, so that is refused here instead.
    """
    gpus = int(gpus)
    if gpus >= learners + workers:
        return 1.0, 1.0
    if gpus < learners:
        raise ConfigError(f"learner.num_learners={learners} needs {learners} GPUs (one per rank), the Ray "
                         f"cluster has {gpus}; lower learner.num_learners or set cluster.use_gpu=false")
    learner_share = 0.51 if learners > 1 else 0.5
    per_gpu = math.ceil(workers / gpus)
    worker_share = math.floor(100 * (1 - learner_share) / per_gpu) / 100
    if worker_share <= 0:
        raise ConfigError(f"rollout.num_workers={workers} is too many to share {gpus} GPU(s)")
    return learner_share, worker_share


def weight_sync_mode(config: RLConfig, learner_gpu: float, worker_gpu: float) -> str:
    """``cluster.weight_sync`` resolved. ``auto`` broadcasts when every actor has a whole GPU (NCCL
    wants one device a rank; two processes on one GPU keep the object store) and the run is
    on-policy (off-policy, a worker may still be generating for a later step when the weights are
    sent, and the learner would wait for it inside the broadcast)."""
    mode = config.cluster.weight_sync
    whole_gpus = learner_gpu >= 1.0 and worker_gpu >= 1.0
    if mode == "broadcast" and (learner_gpu or worker_gpu) and not whole_gpus:
        raise ConfigError(
            f"cluster.weight_sync: broadcast needs a GPU of its own for every learner and rollout worker "
            f"(NCCL cannot pair two processes on one GPU); here they share GPUs (learner {learner_gpu:g}, "
            f"worker {worker_gpu:g} of a GPU each). Use cluster.weight_sync: auto or object_store")
    if mode != "auto":
        return mode
    return "broadcast" if whole_gpus and config.rollout.max_staleness == 0 else "object_store"


def reward_actors_per_worker(config: RLConfig, reward_funcs: list, eval_reward_funcs: list | None) -> int:
    """The reward actors each rollout worker starts: a pool for its rewards, and one for evaluation's
    when those differ (``rlkit.reward_pool``); none when rewards run in the worker itself."""
    width = config.rewards.num_workers
    if width < 1:
        return 0
    return (min(width, len(reward_funcs)) if reward_funcs else 0) + (
        min(width, len(eval_reward_funcs)) if eval_reward_funcs else 0)


def place_actors(config: RLConfig, reward_funcs: list, eval_reward_funcs: list | None = None, *,
                 learner_class: type | None = None) -> Actors:
    """One learner per data-parallel rank (``learner_class``, default the RL learner),
    ``rollout.num_workers`` generation actors."""
    from rlkit.learner.learner import Learner
    from rlkit.rollout.worker import RolloutWorker

    from rlkit.placement import Demand, Placement, check_placeable
    from rlkit.rollout.collaborators import parse_collaborators

    world = config.learner.num_learners
    peers = parse_collaborators(config)
    reward_actors = (config.rollout.num_workers + sum(c.num_workers for c in peers)) * reward_actors_per_worker(
        config, reward_funcs, eval_reward_funcs)
    started = start_ray(config, reward_actors)
    learner_gpu, worker_gpu = 0.0, 0.0
    try:
        if _use_gpu(config):
            # collaborators' rollout workers (F-TIS) take a worker's share each
            workers = config.rollout.num_workers + sum(c.num_workers for c in peers)
            learner_gpu, worker_gpu = gpu_shares(ray.cluster_resources().get("GPU", 0.0),
                                                 world + sum(c.learn for c in peers), workers)
        if config.cluster.learner_gpus is not None:
            learner_gpu = config.cluster.learner_gpus
        if config.cluster.worker_gpus is not None:
            worker_gpu = config.cluster.worker_gpus
        sync = weight_sync_mode(config, learner_gpu, worker_gpu)
        learner_cpus, worker_cpus = config.cluster.learner_cpus, config.cluster.worker_cpus
        demands = [Demand("learner", world, learner_cpus, learner_gpu),
                   Demand("rollout worker", config.rollout.num_workers, worker_cpus, worker_gpu)]
        for c in peers:
            demands += [Demand(f"collaborator {c.name} worker", c.num_workers, worker_cpus, worker_gpu),
                        Demand(f"collaborator {c.name} learner", int(c.learn), learner_cpus, learner_gpu)]
        if config.cluster.address:
            # reward actors are placed beside their rollout worker, not in the placement group
            check_placeable(demands + [Demand("reward actor", reward_actors, config.cluster.reward_cpus,
                                              config.cluster.reward_gpus)])
        placement = Placement(config.cluster.placement, demands, config.cluster.start_timeout_s)
    except ConfigError:
        if started:
            ray.shutdown()
        raise
    # learners hold optimizer state that a restart would lose: a dead learner ends the run (resume
    # from its checkpoint). Rollout workers hold nothing that cannot be reloaded: Ray restarts them
    # as often as needed, and the fleet stops a run whose calls keep killing them.
    learner_cls = ray.remote(num_cpus=learner_cpus, num_gpus=learner_gpu, max_restarts=0)(learner_class or Learner)
    swarm = sum(c.learn for c in peers)
    # -1: each rank takes its share of its machine's cores; F-TIS swarm peers' learners train at the
    # same time as the run's, so on one machine they share the cores too
    learner_threads = config.cluster.learner_threads or (
        max(1, (os.cpu_count() or 1) // (world + swarm)) if swarm and not config.cluster.address else -1)
    learners = [learner_cls.options(**placement.options("learner", r)).remote(
                    config, rank=r, world_size=world, threads=learner_threads) for r in range(world)]
    worker_cls = ray.remote(num_cpus=worker_cpus, num_gpus=worker_gpu, max_restarts=-1)(RolloutWorker)
    threads = config.cluster.worker_threads

    def spawn_worker(index=0):  # a replacement takes the bundle of the worker it replaces
        return worker_cls.options(**placement.options("rollout worker", index)).remote(
            config, reward_funcs, threads=threads, eval_reward_funcs=eval_reward_funcs)

    workers = [spawn_worker(i) for i in range(config.rollout.num_workers)]
    actors = Actors(learners=learners, workers=workers, started_ray=started, weight_sync=sync,
                    spawn_worker=spawn_worker, placement=placement)
    collaborator_spawns = {}
    for collaborator in peers:
        own = collaborator.worker_config(config)
        role = f"collaborator {collaborator.name} worker"

        def spawn_collaborator(index=0, own=own, source=collaborator.source, role=role):
            return worker_cls.options(**placement.options(role, index)).remote(own, reward_funcs, threads=threads,
                                                                               source=source)

        collaborator_spawns[collaborator.name] = spawn_collaborator
        actors.collaborator_workers[collaborator.name] = [spawn_collaborator(i)
                                                          for i in range(collaborator.num_workers)]
        if collaborator.learn:  # a swarm peer: one learner rank of its own
            actors.collaborator_learners[collaborator.name] = [
                learner_cls.options(**placement.options(f"collaborator {collaborator.name} learner", 0)).remote(
                    own, rank=0, world_size=1, threads=learner_threads)]
    try:
        timeout = config.cluster.start_timeout_s
        # ranks meet on the machine Ray gave rank 0, which on a cluster need not be the driver's
        address = wait_for_start({"learner rank 0": learners[0].rendezvous_address.remote(
            loopback=not config.cluster.address)}, timeout)["learner rank 0"]
        # surface constructor errors (bad model, DeepSpeed failure) here, with the actor's traceback
        wait_for_start({f"learner rank {r}": learner.connect.remote(*address) for r, learner in enumerate(learners)}
                       | {f"rollout worker {i}": w.__ray_ready__.remote() for i, w in enumerate(workers)}
                       | {f"collaborator {name} worker {i}": w.__ray_ready__.remote()
                          for name, ws in actors.collaborator_workers.items() for i, w in enumerate(ws)}, timeout)
        for name, (peer,) in actors.collaborator_learners.items():  # each peer is a process group of its own
            peer_address = wait_for_start({f"collaborator {name} learner": peer.rendezvous_address.remote(
                loopback=not config.cluster.address)}, timeout)[f"collaborator {name} learner"]
            wait_for_start({f"collaborator {name} learner": peer.connect.remote(*peer_address)}, timeout)
        actors.fleet = RolloutFleet(workers, RecoverySettings.from_config(config), spawn=actors.spawn_worker)
        actors.collaborator_fleets = {
            name: RolloutFleet(ws, RecoverySettings.from_config(config), spawn=collaborator_spawns[name])
            for name, ws in actors.collaborator_workers.items()}
    except BaseException:
        actors.shutdown()
        raise
    return actors


def wait_for_start(calls: dict[str, ray.ObjectRef], timeout_s: float) -> dict[str, object]:
    """The results of start-up calls, by name; a :class:`StartTimeout` naming the actors still
    starting after ``timeout_s`` (an actor's own error is raised as soon as it happens)."""
    deadline = time.monotonic() + timeout_s
    pending = list(calls.values())
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
        if not ready:
            waiting = [name for name, ref in calls.items() if ref in set(pending)]
            raise StartTimeout(
                f"{', '.join(waiting)} did not finish starting within {timeout_s:g} s (cluster.start_timeout_s). "
                "Starting loads the model, joins the learners' process group and builds compiled ops; "
                "check that the cluster has the CPUs and GPUs the run asks for, that the model loads, "
                "and for a stale op-build lock file (the learner names it after cluster.op_lock_timeout_s)")
        ray.get(ready)  # an actor's own error surfaces now, with its traceback
    return {name: ray.get(ref) for name, ref in calls.items()}
