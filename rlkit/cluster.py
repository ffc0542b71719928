"""Starting (or joining) Ray and placing the learner and rollout actors."""

from __future__ import annotations

import os
import socket
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


def start_ray(config: RLConfig) -> bool:
    """Join ``cluster.address`` or start an in-process cluster; True when we started it."""
    if ray.is_initialized():
        return False
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}}
    if config.cluster.address:
        ray.init(address=config.cluster.address, runtime_env=env, logging_level="ERROR")
        return True
    actors = config.learner.num_learners + config.rollout.num_workers
    # Actors each take one CPU; on a small machine tell Ray there are enough so they all start
    # (they then share the cores, which is what we want for a laptop-sized run).
    cpus = config.cluster.num_cpus or max(os.cpu_count() or 1, actors)
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="ERROR", runtime_env=env,
             configure_logging=True, log_to_driver=True)
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def place_actors(config: RLConfig, reward_funcs: list, steps_per_update: int) -> Actors:
    """One learner per data-parallel rank, ``rollout.num_workers`` generation actors."""
    from rlkit.learner.learner import Learner
    from rlkit.rollout.worker import RolloutWorker

    started = start_ray(config)
    gpu = 1 if _use_gpu(config) else 0
    world = config.learner.num_learners
    master_addr = ray.util.get_node_ip_address() if config.cluster.address else "127.0.0.1"
    port = free_port()
    learner_cls = ray.remote(num_cpus=1, num_gpus=gpu, max_restarts=0)(Learner)
    learners = [learner_cls.remote(config, rank=r, world_size=world, master_addr=master_addr,
                                   master_port=port, steps_per_update=steps_per_update)
                for r in range(world)]
    worker_cls = ray.remote(num_cpus=1, num_gpus=gpu, max_restarts=3)(RolloutWorker)
    workers = [worker_cls.remote(config, reward_funcs) for _ in range(config.rollout.num_workers)]
    # surface constructor errors (bad model, DeepSpeed failure) here, with the actor's traceback
    ray.get([a.__ray_ready__.remote() for a in learners + workers])
    return Actors(learners=learners, workers=workers, started_ray=started)
