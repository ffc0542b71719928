"""Objectives: the contract they implement and the built-ins (registered on import)."""

from rlkit.objectives.base import (Objective, PolicyBatch, StepStats, build_config, objective_config_fields,
                                   objective_from_config)
from rlkit.objectives.grpo import GRPO, GRPOConfig, grpo_loss

__all__ = ["GRPO", "GRPOConfig", "Objective", "PolicyBatch", "StepStats", "build_config", "grpo_loss",
           "objective_config_fields", "objective_from_config"]
