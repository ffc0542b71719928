"""F-TIS collaborators: rollout workers that serve other models and share their groups with the run.

F-TIS (Blagoev et al., 2026, arXiv 2605.22537) lets models of different sizes or warm starts
work on one GRPO run without exchanging weights or gradients: each shares the completions it
samples as token ids plus the per-token log-probs it sampled them with (about 8 bytes a token),
and the learner weighs those foreign samples with filtered, truncated importance sampling (the
``ftis`` objective, :mod:`rlkit.objectives.ftis`).

Here a collaborator is ``rollout.collaborators: [{name, model, prompts_per_step, ...}]``: its own
Ray actors (``num_workers`` of them) holding its own model, with the run's rewards. Each step it
samples whole groups for its own ``prompts_per_step`` prompts, drawn from the run's prompt stream
after the local ones ("vertical collaboration", which the paper found better than groups that
mix generators); its groups join the step beside the local ones, marked ``source:
collaborator:NAME``. By default its weights never change: a fixed peer (another model or another
warm start). With ``learn: true`` it is a swarm peer, as in the paper: it has its own learner,
which trains it each step on its own groups (on-policy) and on everyone else's (the local
model's and the other collaborators', weighed by the same objective from its side), and its
workers get its new weights at each step's end. Every group is sampled once and shared with all.

The same tokenizer is required: token-level ratios need the same tokens on both sides. A
collaborator whose tokenizer differs (vocabulary, or the end, padding or start token) is refused
before anything starts.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from rlkit.config import ConfigError, RLConfig
from rlkit.data import SHARED_SOURCE_PREFIX as SOURCE_PREFIX
KEYS = ("name", "model", "prompts_per_step", "num_workers", "temperature", "learn")


@dataclass(frozen=True)
class Collaborator:
    name: str
    model: str  # a bundled model's name, a local folder or a hub id
    prompts_per_step: int  # whole groups it samples each step
    num_workers: int = 1
    temperature: float | None = None  # None: the run's rollout.temperature
    learn: bool = False  # a swarm peer: its own learner trains it on its groups and everyone else's

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.name

    def worker_config(self, config: RLConfig) -> RLConfig:
        """The run's config with this collaborator's model (flat sampling: it shares plain groups)."""
        own = copy.deepcopy(config)
        own.model.name_or_path = self.model
        own.model.lora_r = 0
        own.rollout.sampler = "flat"
        if self.temperature is not None:
            own.rollout.temperature = self.temperature
        return own


def is_shared(source: str) -> bool:
    """Whether a group's ``source`` says a collaborator sampled it (``RolloutGroup.shared``)."""
    return source.startswith(SOURCE_PREFIX)


def parse_collaborators(config: RLConfig) -> list[Collaborator]:
    """``rollout.collaborators`` as checked :class:`Collaborator` s; a ConfigError naming the entry and key."""
    out, names = [], set()
    for i, entry in enumerate(config.rollout.collaborators):
        where = f"rollout.collaborators[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: expected a mapping with keys {', '.join(KEYS)}, got {entry!r}")
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(KEYS)})")
        for key in ("name", "model"):
            if not isinstance(entry.get(key), str) or not entry.get(key):
                raise ConfigError(f"{where}.{key}: a non-empty string is required")
        collaborator = Collaborator(
            name=entry["name"], model=entry["model"],
            prompts_per_step=_positive_int(entry.get("prompts_per_step", config.rollout.prompts_per_step),
                                           f"{where}.prompts_per_step"),
            num_workers=_positive_int(entry.get("num_workers", 1), f"{where}.num_workers"),
            temperature=_temperature(entry.get("temperature"), f"{where}.temperature"),
            learn=_flag(entry.get("learn", False), f"{where}.learn"))
        if collaborator.name in names:
            raise ConfigError(f"{where}.name: {collaborator.name!r} is used twice")
        names.add(collaborator.name)
        out.append(collaborator)
    if out:
        rollout = config.rollout
        if rollout.replay_fraction > 0 or rollout.dynamic_sampling == "true":
            raise ConfigError("rollout.collaborators cannot be combined with rollout.replay_fraction or dynamic "
                              "sampling: a step's shared groups are fixed in number")
    return out


def check_same_tokenizer(config: RLConfig, collaborators: list[Collaborator]) -> None:
    """Refuse a collaborator whose tokenizer is not the run's (token ids must mean the same)."""
    from rlkit.models import load_tokenizer

    if not collaborators:
        return
    ours = load_tokenizer(config.model)
    for c in collaborators:
        try:
            theirs = load_tokenizer(c.worker_config(config).model)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"rollout.collaborators: {c.name!r}: cannot load the tokenizer of model {c.model!r} "
                              f"(a bundled model's name, a local folder or a hub id): {exc}") from None
        difference = tokenizer_difference(ours, theirs)
        if difference:
            raise ConfigError(
                f"rollout.collaborators: {c.name!r} ({c.model}) has another tokenizer than the run's model "
                f"({config.model.name_or_path}): {difference}. F-TIS shares token ids and per-token log-probs, "
                "so both sides must tokenize alike; pick a collaborator of the same tokenizer family")


def tokenizer_difference(ours, theirs) -> str:
    """What differs between two tokenizers, in words ('' when they agree)."""
    for attribute in ("eos_token_id", "pad_token_id", "bos_token_id"):
        a, b = getattr(ours, attribute, None), getattr(theirs, attribute, None)
        if a != b:
            return f"{attribute} is {b} there, {a} here"
    vocab_a, vocab_b = ours.get_vocab(), theirs.get_vocab()
    if vocab_a != vocab_b:
        only = sorted(set(vocab_b.items()) - set(vocab_a.items()))[:3]
        return (f"the vocabularies differ ({len(vocab_b)} tokens there, {len(vocab_a)} here; e.g. "
                f"{', '.join(f'{t!r}={i}' for t, i in only) or 'ids'})")
    return ""


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}: true or false, got {value!r}")
    return value


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}: a positive integer is required, got {value!r}")
    return value


def _temperature(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{key}: a positive number is required, got {value!r}")
    return float(value)
