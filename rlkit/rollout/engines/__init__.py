"""Generation engines behind one protocol (:mod:`rlkit.rollout.engines.base`), picked by
``rollout.engine``. Built in: ``hf`` (transformers, continuous batching)."""

from __future__ import annotations

from rlkit.rollout.engines.base import Engine, Request, Sample, SamplingParams, generate
from rlkit.rollout.engines.hf import HFEngine

__all__ = ["Engine", "HFEngine", "Request", "Sample", "SamplingParams", "build_engine", "generate"]


def build_engine(config, device) -> Engine:
    """The engine ``config.rollout.engine`` names, with the run's model loaded on ``device``."""
    from rlkit.plugins import engines

    return engines.get(config.rollout.engine).from_config(config, device)
