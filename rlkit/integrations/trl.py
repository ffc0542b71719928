"""rlkit objectives as the loss of TRL's ``GRPOTrainer`` (TRL 1.x; written against 1.16).

    from rlkit.integrations.trl import RLKitGRPOTrainer, trainer_for

    DAPOTrainer = trainer_for("dapo")          # one class per registered objective
    trainer = DAPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...), train_dataset=...,
                          objective_params={"epsilon_high": 0.3})
    # or: RLKitGRPOTrainer(objective="grpo", objective_params={...}, model=..., ...)

TRL keeps everything but the loss: sampling (transformers or vLLM), reward functions, the
reference model, batching, optimizer, logging, checkpoints. Three methods are overridden:

- ``_compute_loss(model, inputs)``: TRL's per-token log-probs and entropies
  (``_get_per_token_logps_and_entropies``) and the generated batch become a :class:`PolicyBatch`:
  ``old_logprobs`` = ``old_per_token_logps`` (the detached log-probs when TRL skips them because
  the batch is on-policy), ``ref_logprobs`` = ``ref_per_token_logps``, ``behavior_logprobs`` =
  vLLM's ``sampling_per_token_logps`` (else ``old_logprobs``: transformers sampled with the old
  weights), ``mask`` = ``completion_mask`` x ``tool_mask``. The objective's ``loss_sum`` is
  returned, normalized as below.
- ``_calculate_rewards`` + ``_generate_and_score_completions``: with ``advantages="objective"``
  (the default), the weighted reward sum of every completion of all processes, grouped
  ``[prompts, num_generations]`` as TRL groups it, goes through the objective's
  ``compute_advantages`` and replaces TRL's advantages; ``advantages="trl"`` keeps TRL's own.

Normalization. rlkit's step loss is ``Σ_micro-batches loss_sum / normalizer(StepStats of the
step)``. TRL back-propagates each micro-batch's loss at once and DDP averages gradients over the
P processes, so each micro-batch returns ``loss_sum · P / normalizer(stats)`` with the step's
totals built from what TRL knows then (the quantities TRL's own ``loss_type`` branches use, so
GRPO's ``grpo``, ``dapo`` and ``dr_grpo`` match TRL exactly):

    num_sequences         = rows of the micro-batch · current_gradient_accumulation_steps · P
    num_tokens            = num_items_in_batch · current_gradient_accumulation_steps / steps_per_generation
                            (num_items_in_batch: loss tokens of the generation batch, all processes;
                            exact when steps_per_generation == gradient_accumulation_steps, the default)
    max_completion_length = args.max_completion_length

In evaluation nothing accumulates: both factors are 1. ``GRPOTrainer.loss_is_scaled_for_ga`` is
True, so ``transformers.Trainer`` divides by nothing more.

The objective's config is the one source of truth for the loss: GRPOConfig's ``loss_type``,
``epsilon``, ``epsilon_high``, ``beta`` and (with objective advantages) ``scale_rewards`` are not
used, with a warning when they differ from TRL's defaults (nor is ``use_bias_correction_kl``:
rlkit's GRPO KL is TRL's with it False); knobs that reshape TRL's loss beyond the objective's view
are refused. ``args.beta`` is set from ``objective.needs_reference()``, so
TRL loads and scores a reference model exactly when the objective needs one. ``loss_sum``'s
metrics (every micro-batch) and ``log_metrics()`` (at each optimizer step's last micro-batch) are
logged as ``objective/<name>`` through TRL's ``_metrics``;
``state_dict()`` goes into every checkpoint (``rlkit_objective_state.pt``) and back on resume.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import re
import warnings
from typing import Any, ClassVar, Literal

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from rlkit.objectives import Objective, PolicyBatch, StepStats, objective_from_config
from rlkit.objectives.base import makes_extra_rows

EXTRA_PREFIX = "rlkit_advantage_extra_"  # batch keys of the estimator's extras

STATE_FILE = "rlkit_objective_state.pt"

# what _get_per_token_logps_and_entropies takes besides ids and masks (multimodal models)
_FORWARD_KEYS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes",
                 "num_tiles", "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")
# GRPOConfig knobs that reshape TRL's loss where an objective cannot see it: refused unless at default
_REFUSED = ("importance_sampling_level", "top_entropy_quantile", "delta", "off_policy_mask_threshold",
            "entropy_coef", "use_adaptive_entropy")
# GRPOConfig knobs whose job the objective's own config does (use_bias_correction_kl, default True,
# is not here: it only shapes TRL's KL term and is unused in silence)
_SUPERSEDED = ("loss_type", "epsilon", "epsilon_high", "beta")


class RLKitGRPOTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` whose loss (and, by default, advantages) come from an rlkit objective.

    Takes GRPOTrainer's arguments plus ``objective`` (a registered name, or an :class:`Objective`
    instance), ``objective_params`` (its config, checked by name and type as everywhere in rlkit)
    and ``advantages``: ``"objective"`` (the objective's ``compute_advantages``) or ``"trl"``
    (TRL's, shaped by ``scale_rewards`` and ``multi_objective_aggregation``). The objective is
    ``trainer.rlkit_objective`` (``Trainer.objective`` is the hyperparameter-search score).
    """

    objective_name: ClassVar[str | None] = None  # fixed by trainer_for
    _tag_names = [*GRPOTrainer._tag_names, "rlkit"]

    def __init__(self, model, reward_funcs=None, args: GRPOConfig | None = None, *trainer_args,
                 objective: str | Objective | None = None, objective_params: dict[str, Any] | None = None,
                 advantages: Literal["objective", "trl"] = "objective", **trainer_kwargs):
        if advantages not in ("objective", "trl"):
            raise ValueError(f"advantages must be 'objective' or 'trl', got {advantages!r}")
        self.rlkit_objective = _build_objective(objective, objective_params, self.objective_name)
        estimator = getattr(self.rlkit_objective, "estimator", None)
        if advantages == "objective" and getattr(estimator, "needs_entropy", False):
            raise ValueError(f"objective {self.rlkit_objective.name!r}: its advantage estimator needs each "
                             "completion's sampling entropies, which TRL's GRPOTrainer does not record; train it "
                             "with `rlkit train`, or pass advantages='trl'")
        self.advantage_source = advantages
        self._rewards_per_func: torch.Tensor | None = None
        args = args if args is not None else _default_args(model)
        args = _prepared_args(args, self.rlkit_objective, advantages)
        super().__init__(model, reward_funcs, args, *trainer_args, **trainer_kwargs)

    # --- the loss --------------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        mode = "train" if self.model.training else "eval"
        completion_ids = inputs["completion_ids"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logprobs, entropy, aux_loss = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled, **{key: inputs.get(key) for key in _FORWARD_KEYS})
        batch = self._policy_batch(inputs, logprobs, entropy)
        loss_sum, metrics = self.rlkit_objective.loss_sum(batch)
        normalizer = float(self.rlkit_objective.normalizer(self._step_stats(inputs, mode)))
        loss = loss_sum * self.accelerator.num_processes / normalizer
        if self.aux_loss_enabled:  # MoE load balancing, scaled for accumulation as TRL scales it
            loss = loss + self.router_aux_loss_coef * aux_loss / self._accumulation(mode)
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())
        self._log_objective(mode, metrics, batch)
        return loss

    def _policy_batch(self, inputs, logprobs: torch.Tensor, entropy: torch.Tensor) -> PolicyBatch:
        mask = inputs["completion_mask"]
        if "tool_mask" in inputs:  # tool outputs are in the completion but not the policy's tokens
            mask = mask * inputs["tool_mask"]
        old = inputs.get("old_per_token_logps")
        old = logprobs.detach() if old is None else old  # TRL skips them when the batch is on-policy
        behavior = inputs.get("sampling_per_token_logps")  # vLLM's; NaN where vLLM gave none
        behavior = old if behavior is None else torch.where(torch.isnan(behavior), old, behavior)
        extras = {key[len(EXTRA_PREFIX):]: value for key, value in inputs.items() if key.startswith(EXTRA_PREFIX)}
        return PolicyBatch(logprobs=logprobs, old_logprobs=old, mask=mask.to(logprobs.dtype),
                           advantages=inputs["advantages"], ref_logprobs=inputs.get("ref_per_token_logps"),
                           behavior_logprobs=behavior, entropy=entropy.detach(), advantage_extras=extras or None)

    def _accumulation(self, mode: str) -> int:
        if mode != "train":
            return 1
        # set by Trainer's loop; outside it (a direct call) one step is the configured accumulation
        return getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)

    def _step_stats(self, inputs, mode: str) -> StepStats:
        """The optimizer step's totals, as TRL's own normalizers see them (see the module docstring)."""
        accumulation = self._accumulation(mode)
        tokens = float(inputs["num_items_in_batch"])
        if mode == "train":  # num_items_in_batch spans the generation batch: rescale it to one step
            tokens = tokens * accumulation / self.args.steps_per_generation
        sequences = inputs["completion_ids"].size(0) * accumulation * self.accelerator.num_processes
        return StepStats(num_sequences=sequences, num_tokens=int(tokens) if tokens.is_integer() else tokens,
                         max_completion_length=self.max_completion_length)

    def _log_objective(self, mode: str, metrics: dict[str, float], batch: PolicyBatch) -> None:
        """The objective's metrics and adaptive state, averaged over processes, into TRL's log."""
        values = dict(metrics)
        if mode == "train" and self.accelerator.sync_gradients:  # the step's last micro-batch
            values.update(self.rlkit_objective.log_metrics())  # adaptive state, once a step as rlkit does
        if values:  # every process must report the same keys: gather pairs them up by position
            keys = sorted(values)
            local = torch.tensor([float(values[key]) for key in keys], device=self.accelerator.device)
            means = self.accelerator.gather(local).view(-1, len(keys)).mean(dim=0)
            for key, value in zip(keys, means.tolist()):
                self._metrics[mode][f"objective/{key}"].append(value)
        totals = torch.stack([(batch.entropy * batch.mask).sum(), batch.mask.sum()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        self._metrics[mode]["entropy"].append((totals[0] / totals[1].clamp(min=1.0)).item())

    # --- advantages ------------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func  # [completions of all processes, reward functions]
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        if self.advantage_source == "objective" and group >= 2:  # eval with 1 generation: TRL's zeros stay
            advantages, extras = self._objective_advantages(group)
            start = self.accelerator.process_index * len(inputs)
            output["advantages"] = advantages[start:start + len(inputs)].to(output["advantages"])
            for name, values in extras.items():  # TRL splits and shuffles every tensor of the batch alike
                output[EXTRA_PREFIX + name] = values[start:start + len(inputs)].to(output["advantages"])
            logged = self._logs["advantages"]  # the completions table shows the advantages trained on
            for _ in range(min(advantages.numel(), len(logged))):
                logged.pop()
            logged.extend(advantages.tolist())
        return output

    def _objective_advantages(self, group: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's advantages of all processes' completions, ``group`` consecutive per prompt,
        and the estimator's extras (e.g. GBPO's target), flat alike."""
        per_func = self._rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        unscorable = torch.isnan(per_func).all(dim=1)  # every reward function returned None
        groups = rewards.masked_fill(unscorable, float("nan")).view(-1, group)
        # an unscorable completion stands in with its group's mean reward and gets no advantage
        # (TRL leaves it out of the baseline; an objective's estimator takes complete groups)
        fill = torch.nanmean(groups, dim=1, keepdim=True).nan_to_num(0.0).expand_as(groups)
        groups = torch.where(torch.isnan(groups), fill, groups)
        objective = self.rlkit_objective
        if getattr(objective, "estimator", None) is not None and \
                type(objective).compute_advantages is Objective.compute_advantages:
            advantages, extras = objective.estimate(groups)
        else:
            advantages, extras = objective.compute_advantages(groups), {}
        advantages = advantages.reshape(-1)
        extras = {name: value.reshape(-1) for name, value in extras.items()}
        return advantages.masked_fill(unscorable.to(advantages.device), 0.0), extras

    # --- objective state in checkpoints ----------------------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            self.save_objective_state(os.path.join(self._get_output_dir(trial=trial), folder))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self.load_objective_state(checkpoint)

    def save_objective_state(self, folder: str) -> None:
        """Write the objective's adaptive state into a checkpoint folder (nothing when it has none)."""
        state = self.rlkit_objective.state_dict()
        if state:
            torch.save(state, os.path.join(folder, STATE_FILE))

    def load_objective_state(self, folder: str) -> None:
        path = os.path.join(folder, STATE_FILE)
        if os.path.exists(path):
            self.rlkit_objective.load_state_dict(torch.load(path, weights_only=True))


@functools.cache
def trainer_for(name: str) -> type[RLKitGRPOTrainer]:
    """The trainer class of registered objective ``name``: ``trainer_for("dapo")`` -> ``DAPOTrainer``."""
    from rlkit.plugins import objectives

    objectives.get(name)  # an unknown name fails here, with the registry's suggestions
    class_name = "".join(part.upper() for part in re.split(r"[\W_]+", name) if part) + "Trainer"
    doc = f"TRL's GRPOTrainer with rlkit objective {name!r} as its loss; see RLKitGRPOTrainer."
    return type(class_name, (RLKitGRPOTrainer,), {"objective_name": name, "__doc__": doc, "__module__": __name__})


def _build_objective(objective: str | Objective | None, params: dict[str, Any] | None,
                     fixed_name: str | None) -> Objective:
    if isinstance(objective, Objective):
        if params:
            raise ValueError("objective_params go with an objective given by name, not an Objective instance")
        return objective
    if objective is not None and fixed_name is not None and objective != fixed_name:
        raise ValueError(f"this trainer runs objective {fixed_name!r}; use trainer_for({objective!r}) "
                         f"or RLKitGRPOTrainer(objective={objective!r})")
    name = objective or fixed_name
    if name is None:
        raise ValueError("name an objective: RLKitGRPOTrainer(objective='grpo', ...) or trainer_for('grpo')(...)")
    return objective_from_config(name, dict(params or {}))


def _default_args(model) -> GRPOConfig:
    """What GRPOTrainer builds when given no args."""
    name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "model")
    return GRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-GRPO")


def _prepared_args(args: GRPOConfig, objective: Objective, advantages: str) -> GRPOConfig:
    """A copy of ``args`` with ``beta`` set from the objective; refuses what the bridge cannot honour."""
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    refused = [f"{key}={getattr(args, key)!r}" for key in _REFUSED if getattr(args, key) != defaults[key]]
    if refused:
        raise ValueError(f"GRPOConfig {', '.join(refused)} reshapes TRL's own loss, which rlkit objective "
                         f"{objective.name!r} replaces; leave it at its default")
    if advantages == "objective" and args.multi_objective_aggregation != "sum_then_normalize":
        raise ValueError("multi_objective_aggregation='normalize_then_sum' is TRL's advantage estimator: "
                         "use advantages='trl' with it, or sum_then_normalize with the objective's estimator")
    knobs = _SUPERSEDED + (("scale_rewards",) if advantages == "objective" else ())
    ignored = [f"{key}={getattr(args, key)!r}" for key in knobs if getattr(args, key) != defaults[key]]
    if ignored:
        warnings.warn(f"GRPOConfig {', '.join(ignored)}: not used, the loss is rlkit objective "
                      f"{objective.name!r}, configured by objective_params", stacklevel=3)
    if args.use_vllm and args.vllm_importance_sampling_correction:
        warnings.warn("TRL's vllm_importance_sampling_correction is not applied: the objective gets vLLM's "
                      "log-probs as PolicyBatch.behavior_logprobs and corrects for them itself, or not",
                      stacklevel=3)
    if makes_extra_rows(type(objective)):
        warnings.warn(f"rlkit objective {objective.name!r} also trains on extra rows that rlkit's pipeline "
                      "makes and TRL does not: only its part on TRL's own batch is trained", stacklevel=3)
    args = copy.copy(args)
    # TRL loads a reference model, and scores it, exactly when beta != 0; its value is not used
    args.beta = float(getattr(objective.config, "beta", 0.0) or 1.0) if objective.needs_reference() else 0.0
    return args
