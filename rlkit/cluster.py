"""Starting (or joining) Ray and placing the learner and rollout actors."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import ray

from rlkit.config import ConfigError, RLConfig


@dataclass
class Actors:
    learners: list
    workers: list
    started_ray: bool

    def shutdown(self) -> None:
        for actor in self.learners + self.workers:
            ray.kill(actor)
        if self.started_ray:
            ray.shutdown()


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


def start_ray(config: RLConfig) -> bool:
    """Join ``cluster.address`` or start an in-process cluster; True when we started it."""
    if ray.is_initialized():
        return False
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}}
    if config.cluster.address:
        ray.init(address=config.cluster.address, runtime_env=env, logging_level="ERROR")
        return True
    _keep_on_loopback()
    actors = config.learner.num_learners + config.rollout.num_workers
    # Actors each take one CPU; on a small machine tell Ray there are enough so they all start
    # (they then share the cores, which is what we want for a laptop-sized run).
    cpus = config.cluster.num_cpus or max(os.cpu_count() or 1, actors)
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


def place_actors(config: RLConfig, reward_funcs: list, steps_per_update: int) -> Actors:
    """One learner per data-parallel rank, ``rollout.num_workers`` generation actors."""
    from rlkit.learner.learner import Learner
    from rlkit.rollout.worker import RolloutWorker

    started = start_ray(config)
    world = config.learner.num_learners
    learner_gpu, worker_gpu = 0.0, 0.0
    if _use_gpu(config):
        try:
            learner_gpu, worker_gpu = gpu_shares(ray.cluster_resources().get("GPU", 0.0), world,
                                                 config.rollout.num_workers)
        except ConfigError:
            if started:
                ray.shutdown()
            raise
    learner_cls = ray.remote(num_cpus=1, num_gpus=learner_gpu, max_restarts=0)(Learner)
    learners = [learner_cls.remote(config, rank=r, world_size=world, steps_per_update=steps_per_update)
                for r in range(world)]
    worker_cls = ray.remote(num_cpus=1, num_gpus=worker_gpu, max_restarts=3)(RolloutWorker)
    workers = [worker_cls.remote(config, reward_funcs) for _ in range(config.rollout.num_workers)]
    actors = Actors(learners=learners, workers=workers, started_ray=started)
    try:
        # ranks meet on the machine Ray gave rank 0, which on a cluster need not be the driver's
        address = ray.get(learners[0].rendezvous_address.remote(loopback=not config.cluster.address))
        # surface constructor errors (bad model, DeepSpeed failure) here, with the actor's traceback
        ray.get([learner.connect.remote(*address) for learner in learners]
                + [worker.__ray_ready__.remote() for worker in workers])
    except BaseException:
        actors.shutdown()
        raise
    return actors
