"""rlkit: reinforcement-learning post-training for language models."""

from rlkit.config import RLConfig
from rlkit.plugins import advantage_estimator, engine, env, objective, policy_loss, reward

__version__ = "0.1.0"

__all__ = ["RLConfig", "RLTrainer", "advantage_estimator", "engine", "env", "objective", "policy_loss", "reward",
           "__version__"]


def __getattr__(name: str):
    # the trainer pulls in Ray and transformers; import it only when asked for
    if name == "RLTrainer":
        from rlkit.trainer import RLTrainer

        return RLTrainer
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
