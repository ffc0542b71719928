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
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from rlkit.data import RolloutGroup
from rlkit.objectives.estimators import estimator_named, is_turn_level
from rlkit.objectives.hooks import DriverState, ExtraRows, RunAccess
from rlkit.typecheck import BadValue, check_value, type_name


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
    # [B] bool: rows that came from the objective's extra rows (Objective.extra_rows); None when none
    extra: torch.Tensor | None = None
    # log-probs stored with the extra rows when they were collected (e.g. under the initial policy);
    # 0 on the step's own rows; None when no row carries any
    stored_logprobs: torch.Tensor | None = None
    # [B, T] the turn of each token in multi-turn episodes (0-based; 0 on padding); None when single-turn
    token_turns: torch.Tensor | None = None
    # [B] per-sequence values the estimator returned beside the advantages (e.g. GBPO's target), by name
    advantage_extras: dict[str, torch.Tensor] | None = None
    # [B] bool: rows an F-TIS collaborator sampled (behavior_logprobs are then that model's); None: none
    shared: torch.Tensor | None = None
    # the whole step's totals, on the micro-batches that carry extra rows (the pipeline sends those
    # once every group of the step is in); None elsewhere
    step_stats: StepStats | None = None


@dataclass
class StepStats:
    """Totals over one optimizer step (all micro-batches, all learner ranks)."""

    num_sequences: int
    num_tokens: int  # tokens under the loss mask
    max_completion_length: int
    # the objective's extra rows of the step, apart (they are also in the two totals above when
    # ExtraRows.counts_in_step_stats)
    extra_sequences: int = 0
    extra_tokens: int = 0


class Objective(abc.ABC):
    """Base class of objectives; subclasses register with ``@rlkit.objective("name")``."""

    name: ClassVar[str] = ""
    config_class: ClassVar[type] = object
    # whether ``rollout.dynamic_sampling: auto`` drops zero-variance groups and samples more (DAPO)
    dynamic_sampling_by_default: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config
        # the estimator half of the pairing, from the config's ``advantage_estimator`` key; an
        # objective whose config has none overrides compute_advantages instead
        name = getattr(config, "advantage_estimator", None)
        self.estimator = estimator_named(name) if name is not None else None

    @property
    def turn_level(self) -> bool:
        """True: advantages are computed per turn of multi-turn episodes (compute_turn_advantages)
        and reach loss_sum as [B, T] per token; single-turn groups are then one-turn episodes."""
        estimator = getattr(self, "estimator", None)  # a subclass may not call Objective.__init__
        return estimator is not None and is_turn_level(estimator)

    # --- the two hooks past the loss (rlkit/objectives/hooks.py); both run on the driver only ----

    def extra_rows(self, run: RunAccess) -> ExtraRows | None:
        """Rows besides the step's groups this objective trains on, made through ``run``; None: none."""
        del run
        return None

    def driver_state(self) -> DriverState | None:
        """State kept once on the driver, updated from each step's statistics; None: none.

        The driver calls this once, on its own copy of the objective; the learners' copies never
        see that state (``state_dict`` below is the learner-side state, saved by every rank).
        """
        return None

    def needs_reference(self) -> bool:
        """Whether the learner must load a frozen reference model and fill ``ref_logprobs``."""
        return False

    def micro_batches_in_lockstep(self) -> bool:
        """True when a micro-batch's loss runs a collective over the learner ranks (a statistic
        summed over every rank's micro-batch of the same index). Every rank must then run as many
        micro-batches as the others, and the pipeline tops up the ranks that ran fewer with filler
        passes (their loss times zero)."""
        return False

    def zero_advantage_is_inert(self) -> bool:
        """True when a sequence whose advantage is exactly 0 adds nothing to the loss or its gradient.

        The learner then skips the forward and backward of groups whose advantages are all zero
        (every completion scored the same): the update is unchanged and the learner does less
        work. Objectives with terms that do not scale with the advantage (a KL to a reference,
        an entropy bonus, a divergence to the initial policy) must keep the default, False.
        """
        return False

    def compute_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """``[num_groups, G]`` rewards -> ``[num_groups, G]`` advantages (the configured estimator)."""
        return self.estimate(rewards)[0]

    def estimate(self, rewards: torch.Tensor,
                 mean_entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(advantages, extras): an estimator may return, beside the ``[num_groups, G]`` advantages,
        other per-sequence values its loss needs (a dict with an ``advantages`` key).
        ``mean_entropy`` ``[num_groups, G]`` reaches estimators registered with ``needs_entropy``."""
        if getattr(self, "estimator", None) is None:
            raise NotImplementedError(f"{type(self).__name__}: its config has no advantage_estimator key; "
                                      "add one or override compute_advantages")
        if self.turn_level:  # a single-turn group is a group of one-turn episodes
            one_turn = rewards.unsqueeze(-1)
            ones = torch.ones_like(one_turn, dtype=torch.bool)
            return self.estimator(one_turn, ones, self.config).squeeze(-1), {}
        if getattr(self.estimator, "needs_entropy", False):
            if mean_entropy is None:
                raise ValueError(f"advantage estimator {self.config.advantage_estimator!r} needs the completions' "
                                 "mean entropies")
            return split_estimate(self.estimator(rewards, self.config, mean_entropy=mean_entropy))
        return split_estimate(self.estimator(rewards, self.config))

    def compute_turn_advantages(self, turn_rewards: torch.Tensor, reached: torch.Tensor) -> torch.Tensor:
        """``[num_groups, G, T]`` per-turn rewards (0 where ``reached`` is False) -> per-turn advantages.

        Only called when ``turn_level`` is True.
        """
        if not self.turn_level:
            raise NotImplementedError(f"{type(self).__name__} has no turn-level advantages")
        return self.estimator(turn_rewards, reached, self.config)

    def assign_advantages(self, groups: list[RolloutGroup]) -> None:
        """Compute the groups' advantages and store them on their rollouts (``Rollout.advantage``, or
        ``turn_advantages`` for multi-turn episodes under a turn-level estimator).

        The driver calls this once per step, as groups join it; the learner reads the stored values,
        so a group's advantages are computed once, wherever its micro-batch is trained. Groups of
        the same size are estimated together; estimators work within a group.
        """
        by_size: dict[int, list[RolloutGroup]] = {}
        for group in groups:
            by_size.setdefault(len(group.rollouts), []).append(group)
        for same in by_size.values():
            multi = [g for g in same if g.multi_turn] if self.turn_level else []
            single = [g for g in same if not (self.turn_level and g.multi_turn)]
            if single:
                rewards = torch.tensor([g.rewards for g in single], dtype=torch.float32)
                if type(self).compute_advantages is not Objective.compute_advantages:  # an objective's own
                    values, extras = self.compute_advantages(rewards), {}
                else:
                    entropy = _mean_entropies(single) if getattr(self.estimator, "needs_entropy", False) else None
                    values, extras = self.estimate(rewards, entropy)
                extra_rows = {name: value.tolist() for name, value in extras.items()}
                for g, (group, row) in enumerate(zip(single, values.tolist())):
                    for i, (rollout, value) in enumerate(zip(group.rollouts, row)):
                        rollout.advantage, rollout.turn_advantages = value, None
                        rollout.advantage_extras = {name: rows[g][i] for name, rows in extra_rows.items()} or None
            if multi:
                turn_rewards, reached = _turn_tensors(multi)
                values = self.compute_turn_advantages(turn_rewards, reached)
                for g, group in enumerate(multi):
                    for i, rollout in enumerate(group.rollouts):
                        turns = int(reached[g, i].sum())
                        rollout.advantage, rollout.turn_advantages = None, values[g, i, :turns].tolist()

    @abc.abstractmethod
    def loss_sum(self, batch: PolicyBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's unnormalized contribution to the step loss, and metrics (floats)."""

    @abc.abstractmethod
    def normalizer(self, stats: StepStats) -> float:
        """What the step's summed ``loss_sum`` is divided by."""

    def combine_extra(self, batch: PolicyBatch, extra: PolicyBatch) -> PolicyBatch:
        """One batch of the step's rows and the extra rows (see ``extra_rows``) for ``loss_sum``.

        The default stacks them, marking the extra rows in ``extra``; ``extra.old_logprobs`` are
        the learner's own log-probs (detached), ``extra.behavior_logprobs`` the sampler's and
        ``extra.stored_logprobs`` what was stored with the rows (0 on the step's own rows).
        Objectives that keep extra rows apart override this.
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
            entropy=stack(batch.entropy, extra.entropy), extra=flags,
            stored_logprobs=None if extra.stored_logprobs is None else stack(
                torch.zeros_like(batch.logprobs).detach(), extra.stored_logprobs),
            token_turns=None if batch.token_turns is None else stack(
                batch.token_turns, torch.zeros_like(extra.logprobs, dtype=batch.token_turns.dtype)),
            shared=None if batch.shared is None else torch.cat(
                [batch.shared, torch.zeros(extra.logprobs.shape[0], dtype=torch.bool, device=batch.shared.device)]),
            advantage_extras=None if batch.advantage_extras is None else {
                name: torch.cat([value, torch.zeros_like(extra.advantages)])
                for name, value in batch.advantage_extras.items()})

    def state_dict(self) -> dict[str, Any]:
        """Learner-side adaptive state (e.g. clip bounds searched on the micro-batches), saved in
        every rank's checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (on resume, before the first step)."""
        del state

    def log_metrics(self) -> dict[str, float]:
        """Per-step values of learner-side adaptive state to log (empty for stateless objectives)."""
        return {}


def split_estimate(result: torch.Tensor | dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """An estimator's result as (advantages, extras): a tensor, or a dict with an ``advantages`` key."""
    if isinstance(result, dict):
        if "advantages" not in result:
            raise ValueError(f"an estimator's dict must hold 'advantages', got keys {sorted(result)}")
        return result["advantages"], {k: v for k, v in result.items() if k != "advantages"}
    return result, {}


def _mean_entropies(groups: list[RolloutGroup]) -> torch.Tensor:
    """``[num_groups, G]``: each completion's mean token entropy over the model's own tokens."""
    def mean(rollout) -> float:
        mask = rollout.loss_mask or [1] * len(rollout.entropies)
        kept = [h for h, m in zip(rollout.entropies, mask) if m]
        return sum(kept) / len(kept) if kept else 0.0

    return torch.tensor([[mean(r) for r in g.rollouts] for g in groups], dtype=torch.float32)


def _turn_tensors(groups: list[RolloutGroup]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, G, T]`` per-turn rewards (0 past an episode's last turn) and which turns were reached;
    a single-turn rollout is a one-turn episode."""
    per_turn = [[r.turn_rewards if r.turn_rewards is not None else [r.reward] for r in g.rollouts] for g in groups]
    width = max(len(turns) for group in per_turn for turns in group)
    rewards = torch.zeros((len(groups), len(per_turn[0]), width), dtype=torch.float32)
    reached = torch.zeros(rewards.shape, dtype=torch.bool)
    for g, group in enumerate(per_turn):
        for i, turns in enumerate(group):
            rewards[g, i, :len(turns)] = torch.tensor(turns, dtype=torch.float32)
            reached[g, i, :len(turns)] = True
    return rewards, reached


def per_token(advantages: torch.Tensor) -> torch.Tensor:
    """Advantages shaped to broadcast over ``[B, T]`` tokens: ``[B]`` becomes ``[B, 1]``."""
    return advantages if advantages.dim() == 2 else advantages.unsqueeze(1)


def _pad_to(tensor: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))


def objective_from_config(name: str, params: dict[str, Any]) -> Objective:
    """Build a registered objective, refusing unknown keys and wrong types by name."""
    cls = _objective_class(name)
    return cls(build_config(cls.config_class, params, owner=f"objective {name!r}"))


def check_objective_params(name: str, params: dict[str, Any]) -> None:
    """What :func:`objective_from_config` checks, without building the objective."""
    cls = _objective_class(name)
    config = build_config(cls.config_class, params, owner=f"objective {name!r}")
    if getattr(config, "advantage_estimator", None) is not None:
        estimator_named(config.advantage_estimator)


def makes_extra_rows(cls: type[Objective]) -> bool:
    """Whether an objective class overrides the ``extra_rows`` hook."""
    return cls.extra_rows is not Objective.extra_rows


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
        try:
            checked[key] = check_value(value, hints[key], f"{owner}: {key}")
        except BadValue as exc:
            raise TypeError(str(exc)) from None
    return config_class(**checked)


def objective_config_fields(name: str) -> list[tuple[str, str, Any, str]]:
    """(field, type, default, help) of a registered objective's config, for docs and the CLI."""
    cls = _objective_class(name).config_class
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rows.append((f.name, type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows


def _objective_class(name: str) -> type[Objective]:
    from rlkit.plugins import objectives

    cls = objectives.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"objective {name!r} is {cls!r}, not a subclass of rlkit.objectives.Objective")
    if not dataclasses.is_dataclass(cls.config_class):
        raise TypeError(f"objective {name!r}: config_class must be a dataclass, got {cls.config_class!r}")
    return cls
