"""PreferenceTrainer: offline preference optimization (DPO, POWER-DL) on the DeepSpeed learner.

The TRL-style front door beside :class:`~rlkit.trainer.RLTrainer`, and the driver loop of a
preference run. It shares the RL run's machinery: learner actors placed by Ray (ZeRO stages, LoRA,
several data-parallel ranks), the run folder, checkpoints, ``metrics.jsonl``, TensorBoard, the plot
and the summary. The config's ``trainer: preference`` selects it (``rlkit train`` dispatches on it),
and its own keys are under ``preference``.

What the driver keeps, and checkpoints, is the per-pair state: the reference log-probs (scored
once, by the learners before their first update, for exactly the pairs the run will draw), and the
dynamic labels with how often each pair was used. A resumed run therefore ends with the same
labels and metrics as one never stopped.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rlkit import metric_names as m
from rlkit.config import ConfigError, RLConfig, apply_mapping
from rlkit.driver.micro_batches import MicroBatchLimits, pack
from rlkit.driver.stopping import StopRequest, checkpoint_or_stop, stopped_summary
from rlkit.preference.batches import encode_pairs
from rlkit.preference.data import PreferencePair, load_pairs
from rlkit.prompts import PromptSource, read_rows
from rlkit.runs import (MetricsLogger, RunDirectory, TrainingProgress, atomic_write_text, plot_reward_curve,
                        render_summary, write_summary)

LABEL_BINS = 10  # the label histogram in metrics.jsonl: counts over [0, 0.1), ..., [0.9, 1.0]


class PreferenceTrainer:
    """Train a causal LM on preference pairs.

    ``PreferenceTrainer(model="tiny-arith", args=RLConfig(preference=PreferenceConfig(loss="power")),
    train_dataset=rows, eval_dataset=held_out)`` where rows are TRL's preference format: ``prompt``,
    ``chosen``, ``rejected``, as text or as conversational messages. Left out, the pairs come from
    ``data.train_file`` / ``data.eval_file``, or from the environment (``arith`` makes them). Every
    bad row is reported by number before anything starts.
    """

    def __init__(self, model: Any = None, args: RLConfig | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None):
        from rlkit.models import load_tokenizer
        from rlkit.trainer import _make_env
        from rlkit.validation import validate

        self.config = copy.deepcopy(args) if args is not None else RLConfig()
        self.config.trainer = "preference"
        if isinstance(model, (str, Path)):
            self.config.model.name_or_path = str(model)
        elif model is not None:
            raise TypeError("model must be a name, a local path or a hub id; save an in-memory model "
                            "with save_pretrained() and pass its folder")
        validate(self.config)
        config = self.config
        self.env = _make_env(config)
        tokenizer = load_tokenizer(config.model)
        self.max_length = config.preference.max_length or model_context(config)
        self.train_pairs = self._pairs(train_dataset, config.data.train_file, "train", tokenizer, required=True)
        self.eval_pairs = self._pairs(eval_dataset, config.data.eval_file, "eval", tokenizer, required=False)
        if config.data.eval_limit:
            self.eval_pairs = self.eval_pairs[: config.data.eval_limit]
        self.train_groups = encode_pairs(self.train_pairs, tokenizer)
        self.eval_groups = encode_pairs(self.eval_pairs, tokenizer)
        if config.preference.epochs:
            config.max_steps = max(1, math.ceil(config.preference.epochs * len(self.train_pairs)
                                                / config.preference.pairs_per_step))
        self.reward_funcs, self.eval_rows = [], []
        if config.preference.eval_generation:
            from rlkit.trainer import _reward_list

            self.reward_funcs = _reward_list(None, config, self.env)
            self.eval_rows = self.env.dataset("eval")
            if config.data.eval_limit:
                self.eval_rows = self.eval_rows[: config.data.eval_limit]

    @classmethod
    def from_run(cls, run_dir: str | Path, overrides: dict[str, str] | None = None) -> "PreferenceTrainer":
        """Rebuild the trainer of an existing run folder (for ``--resume``)."""
        from rlkit.config import apply_overrides

        run = RunDirectory(run_dir)
        config = RLConfig()
        apply_mapping(config, run.load_config(), str(run.config_path))
        apply_overrides(config, overrides or {})
        if "max_steps" in (overrides or {}):
            config.preference.epochs = 0.0  # a max_steps given now wins over the epochs that set it before
        config.output_dir = str(run.path)
        return cls(args=config)

    def _pairs(self, dataset: Any, file: str | None, split: str, tokenizer, *, required: bool) -> list[PreferencePair]:
        if dataset is not None:
            rows, origin = list(dataset), f"{split}_dataset"
        elif file:
            rows, origin = read_rows(file, getattr(self.config.data, f"{split}_split")), file
        else:
            try:
                rows = self.env.preference_dataset(split)
            except NotImplementedError as exc:
                if required:
                    raise ConfigError(str(exc)) from None
                return []  # no held-out pairs: the run reports no held-out accuracy
            origin = f"environment {self.config.env.name}, {split} pairs"
        return load_pairs(rows, origin, tokenizer, self.max_length, skip_bad=self.config.data.on_bad_row == "skip",
                          system_prompt=self.config.data.system_prompt)

    # --- the run ---------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Train on the preference pairs for ``preference.epochs`` (or ``max_steps``) and return the
        run summary; the run folder is that of an RL run, plus ``pair_labels.jsonl``.
        ``resume=True`` continues from the latest checkpoint, labels included."""
        from ray.exceptions import RayActorError

        from rlkit.cluster import place_actors
        from rlkit.preference.learner import PreferenceLearner
        from rlkit.trainer import _actor_lost, _default_run_dir

        config = self.config
        run = RunDirectory(config.output_dir or _default_run_dir(config))
        config.output_dir = str(run.path)
        run.check_usable(resume=resume)
        placed = copy.deepcopy(config)
        placed.rollout.num_workers = 1 if config.preference.eval_generation else 0  # evaluation's worker only
        actors = place_actors(placed, self.reward_funcs, learner_class=PreferenceLearner)
        state: dict[str, Any] = {"step": 0}
        try:
            run.create(config.to_dict(), resume=resume)
            self.loss_class = _loss_class(config)
            source = PromptSource(list(range(len(self.train_groups))), seed=config.seed, shuffle=config.data.shuffle)
            if resume:
                state = self._restore(run, actors, source)
            else:
                state = self._fresh_state(actors, source)
            if "eval_before" not in state:
                state["eval_before"] = self._evaluate(actors, state, step=0)
            summary = self._loop(run, actors, source, state)
        except RayActorError as exc:
            raise _actor_lost(exc, actors, run, state["step"]) from exc
        finally:
            actors.shutdown()
        return summary

    def _fresh_state(self, actors, source: PromptSource) -> dict[str, Any]:
        """Labels at 1, and the reference log-probs of every pair the run will use, scored by the
        learners before their first update (the initial policy is the reference)."""
        state: dict[str, Any] = {"step": 0, "labels": [1.0] * len(self.train_groups),
                                 "uses": [0] * len(self.train_groups), "references": None, "eval_references": None}
        if self.loss_class.needs_reference:
            draw = PromptSource(source.rows, seed=source.seed, shuffle=source.shuffle)
            used = sorted(set(draw.take(self.config.max_steps * self.config.preference.pairs_per_step)))
            if self.config.logging.progress:
                print(f"scoring the reference log-probs of {len(used)} training and {len(self.eval_groups)} "
                      "held-out pairs (once)", file=sys.stderr, flush=True)
            scores = self._score([self.train_groups[i] for i in used], actors.learners)
            state["references"] = dict(zip(used, scores))
            state["eval_references"] = self._score(self.eval_groups, actors.learners)
        return state

    def _loop(self, run: RunDirectory, actors, source: PromptSource, state: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        wall_before = state.get("wall_seconds", 0.0)
        with MetricsLogger(run, tensorboard=config.logging.tensorboard) as logger, StopRequest() as stop, \
                TrainingProgress(config.max_steps, start_step=state["step"], enabled=config.logging.progress) as bar:
            if state["step"]:
                logger.truncate_after(state["step"])
            run.stopped_path.unlink(missing_ok=True)  # a resumed run is no longer stopped
            for step in range(state["step"], config.max_steps):
                t0 = time.perf_counter()
                metrics = self._train_step(actors.learners, source, state, step)
                metrics["step_seconds"] = time.perf_counter() - t0
                metrics["pairs_per_second"] = config.preference.pairs_per_step / metrics["step_seconds"]
                if config.eval_steps and (step + 1) % config.eval_steps == 0 and step + 1 < config.max_steps:
                    metrics.update({f"eval_{k}": v for k, v in self._evaluate(actors, state, step + 1).items()})
                histograms = {}
                if self.loss_class.dynamic_labels:
                    seen = [label for label, uses in zip(state["labels"], state["uses"]) if uses]
                    metrics.update(label_statistics(seen))
                    histograms["labels"] = seen
                logger.log(step + 1, metrics, histograms=histograms)
                bar.update(step + 1, metrics)
                state.update(step=step + 1, wall_seconds=wall_before + time.perf_counter() - started)
                if checkpoint_or_stop(run, stop, step + 1, config.max_steps, config.save_steps,
                                      lambda: self._checkpoint(run, actors, source, state)):
                    break
        if state["step"] < config.max_steps:  # stopped by request: checkpointed, resumable
            return stopped_summary(run, state)
        after = self._evaluate(actors, state, state["step"])
        ray_get([a.save_pretrained.remote(str(run.final_model_dir)) for a in actors.learners])
        self._write_labels(run, state)
        before = state["eval_before"]
        summary: dict[str, Any] = {"run_dir": str(run.path), "trainer": "preference", "loss": config.preference.loss,
                                   "steps": state["step"], "train_pairs": len(self.train_pairs),
                                   "eval_pairs": len(self.eval_pairs)}
        for key in ("preference_accuracy", "likelihood_accuracy", "margin_mean", "pass_rate"):
            if key in after:
                summary[f"eval_{key}_before"], summary[f"eval_{key}_after"] = before[key], after[key]
        if self.loss_class.dynamic_labels:
            seen = [label for label, uses in zip(state["labels"], state["uses"]) if uses]
            summary.update(label_statistics(seen))
        summary.update({"wall_seconds": round(state["wall_seconds"], 2), "final_model": str(run.final_model_dir),
                        "peak_memory_mb": _peak_memory(actors)})
        write_summary(run, summary)
        if config.logging.plot:
            plot_reward_curve(run.metrics_path, run.plot_path, title=f"preference / {config.preference.loss}")
        render_summary(summary)
        return summary

    # --- one step --------------------------------------------------------------------------------

    def _train_step(self, learners: list, source: PromptSource, state: dict[str, Any], step: int) -> dict[str, float]:
        config = self.config
        ids = source.take(config.preference.pairs_per_step)
        groups = [self.train_groups[i] for i in ids]
        per_rank = self._split(groups, len(learners))
        # ZeRO-2/3 reduce in every backward pass: every rank runs as many passes (fillers add zero)
        passes = max(map(len, per_rank)) if config.learner.zero_stage >= 2 else 1
        references, labels = state["references"], state["labels"]
        calls = []
        for learner, batches in zip(learners, per_rank):
            for batch in batches:
                refs = [references[g.prompt_index] for g in batch] if references is not None else None
                calls.append(learner.train_pairs.remote(batch, [labels[g.prompt_index] for g in batch], refs))
            for _ in range(max(0, passes - len(batches))):
                filler = batches[:1] or [groups[:1]]
                refs = [references[g.prompt_index] for g in filler[0]] if references is not None else None
                calls.append(learner.train_pairs.remote(filler[0], [1.0] * len(filler[0]), refs, filler=True))
        steps = [learner.step.remote({"num_pairs": len(groups)}, step) for learner in learners]
        outs, totals = ray_get(calls), ray_get(steps)
        for out in outs:  # labels move only after the whole step used the old ones
            if out["next_labels"] is not None:
                for pair, label in zip(out["pairs"], out["next_labels"]):
                    labels[pair] = label
        for pair in ids:
            state["uses"][pair] += 1
        return step_metrics(totals, len(groups))

    def _split(self, groups: list, ranks: int) -> list[list[list]]:
        """Micro-batches (by the learner's token budget) dealt round robin to the ranks."""
        config = self.config
        share = -(-len(groups) // ranks) if ranks > 1 else 0
        limits = MicroBatchLimits(max_tokens=config.learner.micro_batch_tokens,
                                  max_sequences=config.learner.micro_batch_size, max_groups=share)
        per_rank: list[list[list]] = [[] for _ in range(ranks)]
        for index, batch in enumerate(pack(groups, limits)):
            per_rank[index % ranks].append(batch)
        return per_rank

    def _score(self, groups: list, learners: list) -> list[tuple[float, float]]:
        """(Σ log π(chosen), Σ log π(rejected)) of each group under the learners' current weights,
        each rank scoring a share (every rank as many passes: ZeRO-3 gathers in each forward)."""
        return self._over_ranks(groups, learners, "score_pairs")

    def _over_ranks(self, groups: list, learners: list, method: str, references=None) -> list:
        if not groups:
            return []
        per_rank = self._split(groups, len(learners))
        passes = max(map(len, per_rank))
        calls = []  # (rank, index of the batch or None for a filler)
        refs_of = {id(g): r for g, r in zip(groups, references)} if references is not None else None
        for rank, (learner, batches) in enumerate(zip(learners, per_rank)):
            for i in range(passes):
                batch = batches[i] if i < len(batches) else (batches[:1] or [groups[:1]])[0]
                args = (batch,) if refs_of is None else (batch, [refs_of[id(g)] for g in batch])
                calls.append((rank, i < len(batches), batch, getattr(learner, method).remote(*args)))
        results = ray_get([call for *_, call in calls])
        by_group = {}
        for (_, real, batch, _), values in zip(calls, results):
            if real:
                by_group.update({id(g): v for g, v in zip(batch, values)})
        return [by_group[id(g)] for g in groups]

    # --- evaluation ------------------------------------------------------------------------------

    def _evaluate(self, actors, state: dict[str, Any], step: int) -> dict[str, float]:
        """Held-out preference accuracy (the loss's margin > 0) and, with ``preference.eval_generation``,
        the greedy pass rate on the environment's held-out prompts."""
        out: dict[str, float] = {}
        if self.eval_groups:
            margins = self._over_ranks(self.eval_groups, actors.learners, "pair_margins",
                                       references=state.get("eval_references"))
            # the loss's own implicit reward ranks the pair right (as TRL's rewards/accuracies; DPO's
            # margin is 0 for every pair before training), and the policy finds chosen more likely
            out["preference_accuracy"] = statistics.fmean(h > 0 for h, _ in margins)
            out["likelihood_accuracy"] = statistics.fmean(d > 0 for _, d in margins)
            out["margin_mean"] = statistics.fmean(h for h, _ in margins)
        if self.config.preference.eval_generation:
            from rlkit.driver.weight_sync import ObjectStoreSync

            sync = ObjectStoreSync(actors.learners, actors.fleet)
            sync.confirm(sync.send(step))
            fleet = actors.fleet
            result = fleet.result(fleet.call(0, "evaluate", self.eval_rows, self.config.rewards.pass_threshold,
                                             what=f"evaluation on {len(self.eval_rows)} rows"))
            out["pass_rate"] = result["pass_rate"]
        return out

    # --- checkpoints -----------------------------------------------------------------------------

    def _checkpoint(self, run: RunDirectory, actors, source: PromptSource, state: dict[str, Any]) -> None:
        path = run.checkpoint_dir(state["step"])
        path.mkdir(parents=True, exist_ok=True)
        ray_get([a.save_checkpoint.remote(str(path), {"step": state["step"]}) for a in actors.learners])
        with open(path / "driver.pkl", "wb") as f:
            pickle.dump({"trainer": dict(state), "source": source.state_dict()}, f)
        run.mark_checkpoint_complete(state["step"])
        run.prune_checkpoints(self.config.save_total_limit)

    def _restore(self, run: RunDirectory, actors, source: PromptSource) -> dict[str, Any]:
        latest = run.latest_checkpoint()
        if latest is None:
            raise ConfigError(f"{run.path} has no complete checkpoint to resume from")
        _, path = latest
        ray_get([a.load_checkpoint.remote(str(path)) for a in actors.learners])
        with open(path / "driver.pkl", "rb") as f:
            driver = pickle.load(f)
        state = driver["trainer"]
        if len(state["labels"]) != len(self.train_groups):
            raise ConfigError(f"{run.path}: the checkpoint holds {len(state['labels'])} pairs' labels, the "
                              f"training data now has {len(self.train_groups)} pairs; resume with the same data")
        source.load_state_dict(driver["source"])
        return state

    def _write_labels(self, run: RunDirectory, state: dict[str, Any]) -> None:
        """RUN/pair_labels.jsonl: each training pair's row, final label and uses (dynamic-label losses)."""
        if not self.loss_class.dynamic_labels:
            return
        lines = [json.dumps({"row": pair.row, "label": label, "uses": uses})
                 for pair, label, uses in zip(self.train_pairs, state["labels"], state["uses"])]
        atomic_write_text(run.path / "pair_labels.jsonl", "\n".join(lines) + "\n")


def step_metrics(totals: list[dict[str, float]], num_pairs: int) -> dict[str, float]:
    """The ranks' sums of one step as per-pair means (loss, accuracy, margin...), plus the update's figures."""
    summed: dict[str, float] = {}
    for total in totals:
        for key, value in total.items():
            if key not in (m.GRAD_NORM, m.LEARNING_RATE):
                summed[key] = summed.get(key, 0.0) + value
    metrics = {"loss": summed.pop(m.LOSS_SUM, 0.0) / num_pairs}
    seconds = summed.pop(m.LEARNER_SECONDS, 0.0)
    tokens = summed.pop(m.TRAINED_TOKENS, 0.0)
    summed.pop("pairs", None)
    metrics.update({key: value / num_pairs for key, value in summed.items()})
    metrics.update({"grad_norm": totals[0][m.GRAD_NORM], "learning_rate": totals[0][m.LEARNING_RATE],
                    "trained_tokens": tokens, "learner_seconds": seconds})
    return metrics


def label_statistics(labels: list[float]) -> dict[str, Any]:
    """Mean, minimum, share below 1/2 and histogram of the labels of the pairs used so far."""
    if not labels:
        return {}
    counts = [0] * LABEL_BINS
    for label in labels:
        counts[min(LABEL_BINS - 1, max(0, int(label * LABEL_BINS)))] += 1
    return {"label_mean": statistics.fmean(labels), "label_min": min(labels),
            "labels_below_half": statistics.fmean(label < 0.5 for label in labels), "label_histogram": counts}


def model_context(config: RLConfig) -> int:
    """Tokens the model can attend over (``max_position_embeddings``), for the pair length check."""
    from transformers import AutoConfig

    from rlkit.models import resolve_model_path

    model_config = AutoConfig.from_pretrained(resolve_model_path(config.model.name_or_path),
                                              trust_remote_code=config.model.trust_remote_code)
    context = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
    if not context:
        raise ConfigError(f"{config.model.name_or_path}: the model config has no max_position_embeddings; "
                          "set preference.max_length")
    return int(context)


def _loss_class(config: RLConfig):
    from rlkit import plugins

    return plugins.preference_losses.get(config.preference.loss)


def _peak_memory(actors) -> dict[str, dict[str, float | None]]:
    names = [f"learner rank {r}" for r in range(len(actors.learners))]
    peaks = ray_get([a.peak_memory.remote() for a in actors.learners])
    return {name: {k: (round(v, 1) if v is not None else None) for k, v in peak.items()}
            for name, peak in zip(names, peaks)}


def ray_get(refs):
    import ray

    return ray.get(refs)
