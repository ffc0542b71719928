"""The objective contract: what a loss receives, what it returns, how it is configured.

An objective is a registered class with a config dataclass. It receives a :class:`PolicyBatch`
(tensors over completion tokens) and returns the micro-batch's *unnormalized* loss plus metrics;
:meth:`Objective.normalizer` turns the sum over a step's micro-batches into the step's loss:

    step loss = (Σ_micro-batches loss_sum) / normalizer(StepStats of the whole step)

Why the split: the learner streams micro-batches (``periodic_async``) before the step's token
count is known, so it back-propagates each ``loss_sum`` as it comes and divides the accumulated
gradient by the normalizer at the step. Objectives hold no reference to Ray, DeepSpeed or data
loading.
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rlkit.config import float_from_text


@dataclass
class PolicyBatch:
    """One micro-batch; per-token tensors are ``[B, T]`` over completion positions."""

    logprobs: torch.Tensor  # current policy, with gradient
    old_logprobs: torch.Tensor  # the policy the ratio is taken against (detached)
    mask: torch.Tensor  # 1 (or True) on tokens that count in the loss
    advantages: torch.Tensor  # [B], or [B, T] per token for turn-level objectives (see Objective.turn_level)
    ref_logprobs: torch.Tensor | None = None  # frozen reference, when the objective needs it
    behavior_logprobs: torch.Tensor | None = None  # what the rollout engine sampled with
    entropy: torch.Tensor | None = None  # current policy's per-token entropy (detached)
    # [B] bool: rows that are stored samples of the initial policy (DPH-RL's rehearsal set), whose
    # ``behavior_logprobs`` are then the initial policy's log-probs; None when there are none
    rehearsal: torch.Tensor | None = None


@dataclass
class StepStats:
    """Totals over one optimizer step (all micro-batches, all learner ranks)."""

    num_sequences: int
    num_tokens: int  # tokens under the loss mask
    max_completion_length: int


class Objective(abc.ABC):
    """Base class of objectives; subclasses register with ``@rlkit.objective("name")``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    # whether ``rollout.dynamic_sampling: auto`` drops zero-variance groups and samples more (DAPO)
    dynamic_sampling_by_default: ClassVar[bool] = False
    # Sequences besides the step's groups that the pipeline must feed this objective, each step:
    #   "rehearsal": stored samples of the initial policy, drawn once before training (DPH-RL)
    #   "tempered":  fresh samples of some of the step's prompts at another temperature (AEPO)
    extra_rows: ClassVar[str | None] = None
    # whether those rows count in the step's StepStats (the normalizer's sequences and tokens)
    extra_rows_in_step_stats: ClassVar[bool] = False
    # True: advantages are computed per turn of multi-turn episodes (compute_turn_advantages) and
    # reach loss_sum as [B, T] per token; single-turn groups are then one-turn episodes
    turn_level: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    def needs_reference(self) -> bool:
        """Whether the learner must load a frozen reference model and fill ``ref_logprobs``."""
        return False

    def zero_advantage_is_inert(self) -> bool:
        """True when a sequence whose advantage is exactly 0 adds nothing to the loss or its gradient.

        The learner then skips the forward and backward of groups whose advantages are all zero
        (every completion scored the same): the update is unchanged and the learner does less
        work. Objectives with terms that do not scale with the advantage (a KL to a reference,
        an entropy bonus, a divergence to the initial policy) must keep the default, False.
        """
        return False

    @abc.abstractmethod
    def compute_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``[num_groups, G]`` rewards -> ``[num_groups, G]`` advantages."""

    def compute_turn_advantages(self, turn_rewards: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
        """``[num_groups, G, T]`` per-turn rewards (0 where ``reached`` is False) -> per-turn advantages.

        Only called when ``turn_level`` is True.
        """
        raise NotImplementedError(f"{type(self).__name__} has no turn-level advantages")

    @abc.abstractmethod
    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's unnormalized contribution to the step loss, and metrics (floats)."""

    @abc.abstractmethod
    def normalizer(self, stats: StepStats) -> float:
        """What the step's summed ``loss_sum`` is divided by."""

    def combine_extra(self, batch: PolicyBatch, extra: PolicyBatch) -> PolicyBatch:
        """One batch of the step's rows and the extra rows (see ``extra_rows``) for ``loss_sum``.

        The default stacks them, marking the extra rows in ``rehearsal``; ``extra.old_logprobs``
        are the learner's own log-probs (detached) and ``extra.behavior_logprobs`` what was stored
        with the rows. Objectives that keep extra rows apart override this.
        """
        width = max(batch.logprobs.shape[1], extra.logprobs.shape[1])
        stack = lambda a, b: torch.cat([_pad_to(a, width), _pad_to(b, width)])  # noqa: E731
        flags = torch.cat([torch.zeros(batch.logprobs.shape[0], dtype=torch.bool),
                           torch.ones(extra.logprobs.shape[0], dtype=torch.bool)]).to(batch.logprobs.device)
        return PolicyBatch(
            logprobs=stack(batch.logprobs, extra.logprobs), old_logprobs=stack(batch.old_logprobs, extra.old_logprobs),
            mask=stack(batch.mask, extra.mask), advantages=torch.cat([batch.advantages, extra.advantages]),
            ref_logprobs=None if batch.ref_logprobs is None else stack(batch.ref_logprobs, extra.ref_logprobs),
            behavior_logprobs=stack(batch.behavior_logprobs, extra.behavior_logprobs),
            entropy=stack(batch.entropy, extra.entropy), rehearsal=flags)

    def state_dict(self) -> dict[str, Any]:
        """Adaptive state (clip bounds, temperatures, labels) saved in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        del state

    def log_metrics(self) -> dict[str, float]:
        """Per-step values of adaptive state to log (empty for stateless objectives)."""
        return {}


def per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages shaped to broadcast over ``[B, T]`` tokens: ``[B]`` becomes ``[B, 1]``."""
    return advantages if advantages.dim() == 2 else advantages.unsqueeze(1)


def _pad_to(tensor: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))


def objective_from_config(name: str, params: dict[str, Any]) -> Objective:
    """Build a registered objective, refusing unknown keys and wrong types by name."""
    cls = _objective_class(name)
    return cls(build_config(cls.config_class, params, owner=f"objective {name!r}"))


def build_config(config_class: type, params: dict[str, Any], owner: str) -> Any:
    """``config_class(**params)`` after checking every key exists and every value has the field's type."""
    hints = typing.get_type_hints(config_class)
    fields = [f.name for f in dataclasses.fields(config_class)]
    checked = {}
    for key, value in params.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{owner} has no key {key!r}{hint} (valid keys: {', '.join(fields)})")
        checked[key] = _check_type(value, hints[key], f"{owner}: {key}")
    return config_class(**checked)


def objective_config_fields(name: str) -> list[tuple[str, str, Any, str]]:
    """(field, type, default, help) of a registered objective's config, for docs and the CLI."""
    cls = _objective_class(name).config_class
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def _objective_class(name: str) -> type[Objective]:
    from rlkit.plugins import objectives

    cls = objectives.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"objective {name!r} is {cls!r}, not a subclass of rlkit.objectives.Objective")
    if not dataclasses.is_dataclass(cls.config_class):
        raise TypeError(f"objective {name!r}: config_class must be a dataclass, got {cls.config_class!r}")
    return cls


def _check_type(value: Any, tp: Any, where: str) -> Any:
    """Return ``value`` (an int widened to float where a float is expected) or raise TypeError."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    for option in options:
        if option in (int, float):
            if _is_number(value, option):
                return option(value)
            if option is float and float_from_text(value) is not None:
                return float_from_text(value)
        elif typing.get_origin(option) is typing.Literal:
            if value in typing.get_args(option):
                return value
        elif option is Any or isinstance(value, typing.get_origin(option) or option):
            return value
    raise TypeError(f"{where}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _is_number(value: Any, tp: type) -> bool:
    """True and "3" are not numbers here; 3 is a fine float and 2.0 a fine int (as in RLConfig)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return tp is float or isinstance(value, int) or value.is_integer()


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(option) for option in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", None) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")
