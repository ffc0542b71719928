"""Checks that need more than a field's type: choices, ranges, relations, plugins, paths.

Everything here runs before Ray or any model starts, so a bad run fails in a second with a
message naming the key, instead of minutes later inside an actor.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from rlkit.config import (ConfigError, RLConfig, apply_mapping, apply_overrides, normalize_objective, read_yaml,
                          recipe_path)

logger = logging.getLogger("rlkit.config")

CHOICES: dict[str, tuple] = {
    "trainer": ("rl", "preference"),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "rollout.schedule": ("sync", "periodic_async"),
    "rollout.dynamic_sampling": ("auto", "true", "false"),
    "learner.lr_scheduler": ("constant", "linear", "cosine"),
    "learner.backend": ("auto", "gloo", "nccl"),
    "learner.gradient_checkpointing": ("auto", "true", "false"),
    "learner.zero_stage": (0, 1, 2, 3),
    "data.on_bad_row": ("error", "skip"),
    "data.on_long_prompt": ("error", "truncate"),
    "cluster.use_gpu": ("auto", "true", "false"),
    "cluster.weight_sync": ("auto", "object_store", "broadcast"),
    "cluster.placement": ("default", "pack", "spread"),
    "rollout.sampler": ("flat", "entropy_tree"),
    "sandbox.require": ("kernel", "any"),
    "rollout.fork_entropy": ("shannon", "surprisal"),
}

MINIMUMS: dict[str, float] = {
    "max_steps": 1, "save_steps": 0, "save_total_limit": 1, "eval_steps": 0,
    "rollout.num_workers": 1, "rollout.num_generations": 2, "rollout.prompts_per_step": 1,
    "rollout.max_completion_length": 1, "rollout.max_staleness": 0, "rollout.top_k": 0,
    "rollout.max_sampling_rounds": 0, "rollout.replay_buffer_steps": 1,
    "rollout.fork_points": 1, "rollout.fork_branches": 1,
    "data.max_prompt_length": 0, "preference.pairs_per_step": 1, "preference.epochs": 0.0, "preference.max_length": 0,
    "learner.micro_batch_size": 0, "learner.micro_batch_tokens": 0, "rollout.generation_batch_size": 1,
    "rollout.max_batch_tokens": 0, "learner.num_learners": 1, "learner.warmup_steps": 0,
    "learner.max_grad_norm": 0.0, "learner.weight_decay": 0.0, "model.lora_r": 0, "data.eval_limit": 0,
    "rewards.timeout_s": 0.0, "rewards.num_workers": 0, "cluster.max_call_retries": 0, "cluster.learner_threads": 0, "cluster.worker_threads": 1,
}
POSITIVE = ("cluster.learner_cpus", "cluster.worker_cpus", "cluster.start_timeout_s", "cluster.op_lock_timeout_s", "cluster.actor_restart_timeout_s",
            "cluster.weight_sync_timeout_s")


def load_config(config_file: str | Path | None = None, overrides: dict[str, str] | None = None,
                recipe: str | None = None) -> RLConfig:
    """Defaults < recipe < YAML file < overrides, then :func:`validate`."""
    config = RLConfig()
    if recipe:
        apply_mapping(config, normalize_objective(read_yaml(recipe_path(recipe))), f"recipe {recipe}")
    if config_file:
        apply_mapping(config, normalize_objective(read_yaml(config_file)), str(config_file))
    apply_overrides(config, overrides or {})
    if "max_steps" in (overrides or {}) and "preference.epochs" not in (overrides or {}):
        config.preference.epochs = 0.0  # a max_steps on the command line wins over a recipe's epochs
    validate(config)
    return config


def validate(config: RLConfig) -> None:
    """Raise :class:`ConfigError` on the first problem found."""
    _check_choices_and_ranges(config)
    _check_relations(config)
    _check_plugins(config)
    _check_paths(config)


def _get(config: RLConfig, dotted: str):
    value = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _check_choices_and_ranges(config: RLConfig) -> None:
    for key, choices in CHOICES.items():
        value = _get(config, key)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(str, choices))}")
    for key, low in MINIMUMS.items():
        value = _get(config, key)
        if value < low:
            raise ConfigError(f"{key}: must be >= {low}, got {value}")
    for key in POSITIVE:
        if _get(config, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_get(config, key)}")
    if config.rollout.temperature <= 0:
        raise ConfigError(f"rollout.temperature: must be > 0, got {config.rollout.temperature}")
    if not 0 < config.rollout.top_p <= 1:
        raise ConfigError(f"rollout.top_p: must be in (0, 1], got {config.rollout.top_p}")
    if not 0 <= config.rollout.replay_fraction < 1:
        raise ConfigError(f"rollout.replay_fraction: must be in [0, 1), got {config.rollout.replay_fraction}")
    if config.learner.learning_rate <= 0:
        raise ConfigError(f"learner.learning_rate: must be > 0, got {config.learner.learning_rate}")


def _check_relations(config: RLConfig) -> None:
    rollout, learner = config.rollout, config.learner
    group = rollout.num_generations
    if learner.micro_batch_size % group:
        low = max(group, learner.micro_batch_size // group * group)
        raise ConfigError(f"learner.micro_batch_size ({learner.micro_batch_size}) must be a multiple of "
                          f"rollout.num_generations ({group}): a micro-batch holds whole groups; try {low}")
    one_group = group * (rollout.max_completion_length + 1)
    if learner.micro_batch_tokens and learner.micro_batch_tokens < one_group:
        # not an error: a group over the budget is trained alone, in a micro-batch of its own
        logger.warning(
            "learner.micro_batch_tokens (%d) may not hold one group: rollout.num_generations x "
            "(rollout.max_completion_length + a prompt token) = %d padded tokens at least; a group over "
            "the budget is a micro-batch alone, so learner memory follows the group, not the budget",
            learner.micro_batch_tokens, one_group)
    if rollout.max_batch_tokens and rollout.max_batch_tokens < rollout.max_completion_length + 1:
        raise ConfigError(f"rollout.max_batch_tokens ({rollout.max_batch_tokens}) cannot hold even one sequence "
                          f"of rollout.max_completion_length ({rollout.max_completion_length}) tokens")
    if rollout.sampler == "entropy_tree":
        from rlkit.rollout.tree import TreeShape

        try:
            TreeShape.for_group(group, rollout.fork_points, rollout.fork_branches)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    from rlkit.rollout.collaborators import parse_collaborators

    parse_collaborators(config)
    if rollout.max_staleness > 0 and rollout.schedule == "sync":
        raise ConfigError("rollout.max_staleness > 0 needs rollout.schedule: periodic_async "
                          "(the sync schedule is on-policy by construction)")


def _check_plugins(config: RLConfig) -> None:
    from rlkit import plugins
    from rlkit.objectives.base import check_objective_params, makes_extra_rows

    for name in config.rewards.funcs:
        _lookup(plugins.rewards, name, "rewards.funcs")
    for name in config.rewards.eval_funcs:
        _lookup(plugins.rewards, name, "rewards.eval_funcs")
    env_class = _lookup(plugins.envs, config.env.name, "env.name")
    _lookup(plugins.engines, config.rollout.engine, "rollout.engine")
    _check_kwargs(env_class, config.env.args, "env.args")
    objective_class = _lookup(plugins.objectives, config.objective.name, "objective.name")
    try:
        check_objective_params(config.objective.name, config.objective.params)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"objective: {exc}") from exc
    if getattr(env_class, "multi_turn", False) and config.rollout.sampler != "flat":
        raise ConfigError(f"rollout.sampler {config.rollout.sampler!r} forks single completions; multi-turn "
                          f"environment {config.env.name!r} needs rollout.sampler: flat")
    if getattr(env_class, "multi_turn", False) and makes_extra_rows(objective_class):
        raise ConfigError(f"objective {config.objective.name!r} trains on extra single-turn samples, which "
                          f"multi-turn environment {config.env.name!r} cannot make; use a GRPO-family objective "
                          "or trloo")
    _check_reward_args(config)
    if config.trainer == "preference":
        from rlkit.preference.losses import check_preference_params

        _lookup(plugins.preference_losses, config.preference.loss, "preference.loss")
        try:
            check_preference_params(config.preference.loss, config.preference.params)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"preference: {exc}") from exc


def _check_reward_args(config: RLConfig) -> None:
    """``rewards.args`` keys must name configured rewards, and class rewards must take those kwargs."""
    from rlkit import plugins

    names = list(config.rewards.funcs) + [n for n in config.rewards.eval_funcs if n not in config.rewards.funcs]
    for name, kwargs in config.rewards.args.items():
        if name not in names:
            listed = ", ".join(names) or "none"
            raise ConfigError(f"rewards.args.{name}: no reward {name!r} in rewards.funcs ({listed})")
        if not isinstance(kwargs, dict):
            raise ConfigError(f"rewards.args.{name}: expected a mapping of keyword arguments, got {kwargs!r}")
        reward = plugins.rewards.get(name)
        if not isinstance(reward, type):
            raise ConfigError(f"rewards.args.{name}: reward {name!r} is a function and takes no arguments")
        _check_kwargs(reward, kwargs, f"rewards.args.{name}")


def _lookup(registry, name: str, key: str):
    from rlkit.plugins import PluginNotFoundError

    try:
        return registry.get(name)
    except PluginNotFoundError as exc:
        raise ConfigError(f"{key}: {exc}") from exc


def _check_kwargs(cls, kwargs: dict, key: str) -> None:
    import difflib

    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for name in kwargs:
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f"; did you mean {key}.{close[0]}?" if close else f"; valid: {', '.join(params)}"
            raise ConfigError(f"unknown key {key}.{name}{hint}")


def _check_paths(config: RLConfig) -> None:
    from rlkit.models import resolve_model_path

    try:
        resolve_model_path(config.model.name_or_path, check=True,
                           trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.name_or_path: {exc}") from exc
    if config.model.chat_template:
        from rlkit.chat import template_text

        template_text(config.model.chat_template)  # a file that is not there, named before anything starts
    for key in ("train_file", "eval_file"):
        value = getattr(config.data, key)
        if value and _looks_like_file(value) and not Path(value).expanduser().exists():
            raise ConfigError(f"data.{key}: no such file {value}")


def _looks_like_file(value: str) -> bool:
    return value.endswith((".jsonl", ".json", ".parquet", ".csv")) or value.startswith(("/", ".", "~"))
