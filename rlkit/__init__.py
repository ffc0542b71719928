"""rlkit: reinforcement-learning post-training for language models."""

from rlkit.config import PreferenceConfig, RLConfig
from rlkit.plugins import advantage_estimator, engine, env, objective, policy_loss, preference_loss, reward

__version__ = "0.1.0"

__all__ = ["PreferenceConfig", "PreferenceTrainer", "RLConfig", "RLTrainer", "advantage_estimator", "engine", "env",
           "objective", "policy_loss", "preference_loss", "reward", "__version__"]


def __getattr__(name: str):
    # the trainer pulls in Ray and transformers; import it only when asked for
    if name == "RLTrainer":
        from rlkit.trainer import RLTrainer

        return RLTrainer
    if name == "PreferenceTrainer":
        from rlkit.preference.trainer import PreferenceTrainer

        return PreferenceTrainer
    raise AttributeError(f"module 'rlkit' has no attribute {name!r}")
