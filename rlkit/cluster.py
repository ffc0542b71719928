"""Starting (or joining) Ray and placing the learner and rollout actors."""

from __future__ import annotations

import os
from dataclasses import dataclass

import ray

from rlkit.config import RLConfig


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


def place_actors(config: RLConfig, reward_funcs: list, steps_per_update: int) -> Actors:
    """One learner per data-parallel rank, ``rollout.num_workers`` generation actors."""
    from rlkit.learner.learner import Learner
    from rlkit.rollout.worker import RolloutWorker

    started = start_ray(config)
    gpu = 1 if _use_gpu(config) else 0
    world = config.learner.num_learners
    learner_cls = ray.remote(num_cpus=1, num_gpus=gpu, max_restarts=0)(Learner)
    learners = [learner_cls.remote(config, rank=r, world_size=world, steps_per_update=steps_per_update)
                for r in range(world)]
    worker_cls = ray.remote(num_cpus=1, num_gpus=gpu, max_restarts=3)(RolloutWorker)
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
