"""The preference learner: one data-parallel rank of the DeepSpeed learner, trained on pairs.

It is :class:`~rlkit.learner.learner.Learner` with a preference loss in place of an RL objective:
the same model loading (LoRA, dtype, gradient checkpointing), DeepSpeed engine (ZeRO stages),
optimizer with its step-level normalization and clipping, checkpoints and weight export. What
changes is what a micro-batch holds (pairs, :mod:`rlkit.preference.batches`) and what a step
divides by (the step's number of pairs: the loss is the mean over pairs).

No reference model is ever loaded: the reference is the initial policy, and its log-probs are
scored once, by this same engine before the first update (:meth:`score_pairs`), and kept by the
driver. Per-pair soft labels are the driver's state too; a micro-batch brings the current labels
and returns the next ones.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlkit import metric_names as m
from rlkit.data import RolloutGroup, TrainBatch
from rlkit.learner.learner import Learner, _to_device
from rlkit.learner.scoring import policy_logprobs
from rlkit.preference.batches import sums_and_lengths
from rlkit.preference.losses import PairBatch, preference_loss_from_config

SCORING_TEMPERATURE = 1.0  # pairs are scored under the model's own distribution


class PreferenceLearner(Learner):
    def _build_loss(self) -> None:
        self.loss = preference_loss_from_config(self.config.preference.loss, self.config.preference.params)
        self.objective = None

    def _needs_reference_model(self) -> bool:
        return False  # the reference's log-probs are scored before training, by this engine

    def _reset_step_totals(self) -> None:
        self._sums: dict[str, float] = {}
        self._micro_batches = 0

    # --- scoring, without gradient ----------------------------------------------------------

    @torch.no_grad()
    def score_pairs(self, groups: list[RolloutGroup]) -> list[tuple[float, float]]:
        """(Σ log π(chosen), Σ log π(rejected)) of each pair under the current weights."""
        if not groups:
            return []
        chosen, rejected, _, _ = self._sums_of(groups, grad=False)
        return list(zip(chosen.tolist(), rejected.tolist()))

    @torch.no_grad()
    def pair_margins(self, groups: list[RolloutGroup],
                     references: list[tuple[float, float]] | None = None) -> list[tuple[float, float]]:
        """Per pair: the loss's margin h (its implicit reward of chosen minus rejected; ranked right
        when h > 0), and Σ log π(chosen) − Σ log π(rejected) (which response the policy itself finds
        more likely, whatever the loss)."""
        if not groups:
            return []
        pairs = self._pair_batch(groups, references, labels=None, grad=False)
        likelihood = pairs.chosen_logps - pairs.rejected_logps
        return list(zip(self.loss.margin(pairs).tolist(), likelihood.tolist()))

    # --- training ---------------------------------------------------------------------------

    def train_pairs(self, groups: list[RolloutGroup], labels: list[float] | None,
                    references: list[tuple[float, float]] | None, filler: bool = False) -> dict[str, Any]:
        """Forward and backward of one micro-batch of pairs (the loss summed over them); gradients
        accumulate until :meth:`step`. Returns each pair's next label (dynamic-label losses) and
        the micro-batch's sums. A ``filler`` pass joins the step's collectives with a zero gradient."""
        started = time.perf_counter()
        pairs = self._pair_batch(groups, references, labels, grad=True)
        per_pair, metrics = self.loss.loss(pairs)
        loss_sum = per_pair.sum()
        self.engine.backward(loss_sum * 0.0 if filler else loss_sum, scale_wrt_gas=False)
        self._micro_batches += 1
        if filler:
            return {"pairs": [], "next_labels": None, "sums": {}}
        sums = {m.LOSS_SUM: float(loss_sum), "pairs": len(groups), m.LEARNER_SECONDS: time.perf_counter() - started,
                m.TRAINED_TOKENS: float(pairs.chosen_lengths.sum() + pairs.rejected_lengths.sum()),
                "chosen_logps": float(pairs.chosen_logps.detach().sum()),
                "rejected_logps": float(pairs.rejected_logps.detach().sum()),
                **{key: float(value.sum()) for key, value in metrics.items()}}
        for key, value in sums.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
        next_labels = self.loss.next_labels(pairs).tolist() if getattr(self.loss, "dynamic_labels", False) else None
        return {"pairs": [g.prompt_index for g in groups], "next_labels": next_labels, "sums": sums}

    def step(self, stats: dict[str, int], step_index: int) -> dict[str, float]:
        """Divide the accumulated gradient by the step's number of pairs (over all ranks) and update.
        Returns this rank's sums of the step; the driver adds the ranks up."""
        if not self._micro_batches:
            raise RuntimeError("step() before any micro-batch (or filler pass) of the step")
        lr, grad_norm = self._apply_gradient(float(stats["num_pairs"]), step_index)
        out = dict(self._sums)
        out.update({m.GRAD_NORM: grad_norm, m.LEARNING_RATE: lr})
        self._reset_step_totals()
        return out

    # --- checkpoints: the loss keeps no state (labels are the driver's) --------------------

    def _loss_state(self) -> dict[str, Any]:
        return {}

    def _load_loss_state(self, state: dict[str, Any]) -> None:
        pass

    # --- helpers ----------------------------------------------------------------------------

    def _pair_batch(self, groups: list[RolloutGroup], references, labels, *, grad: bool) -> PairBatch:
        chosen, rejected, chosen_len, rejected_len = self._sums_of(groups, grad=grad)
        device = chosen.device
        ref_chosen = ref_rejected = None
        if references is not None:
            ref = torch.tensor(references, dtype=torch.float32, device=device).reshape(-1, 2)
            ref_chosen, ref_rejected = ref[:, 0], ref[:, 1]
        return PairBatch(chosen_logps=chosen, rejected_logps=rejected, chosen_lengths=chosen_len,
                         rejected_lengths=rejected_len,
                         labels=None if labels is None else torch.tensor(labels, dtype=torch.float32, device=device),
                         ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)

    def _sums_of(self, groups: list[RolloutGroup], *, grad: bool):
        batch = _to_device(TrainBatch.from_groups(groups, self.tokenizer.pad_token_id), self.device)
        module = self.engine.module
        training = module.training
        if not grad:
            module.eval()  # no dropout in scores (the reference's, the held-out margins)
        try:
            logprobs, _ = policy_logprobs(self.engine, batch, SCORING_TEMPERATURE,
                                          share_prompts=not self.checkpointing)
        finally:
            module.train(training)
        return sums_and_lengths(logprobs, batch.completion_mask.to(logprobs))
