"""Objectives: the contract they implement and the built-ins (registered on import).

Every module of this package is imported here, so a built-in objective only has to live in its
own file and decorate its class with ``@rlkit.objective("name")``.
"""

import importlib
import pkgutil

from rlkit.objectives.base import (Objective, PolicyBatch, StepStats, build_config, objective_config_fields,
                                   objective_from_config)
from rlkit.objectives.grpo import GRPO, GRPOConfig, grpo_loss

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["GRPO", "GRPOConfig", "Objective", "PolicyBatch", "StepStats", "build_config", "grpo_loss",
           "objective_config_fields", "objective_from_config"]
