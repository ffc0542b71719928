"""RLTrainer: the TRL-style front door, and the driver loop of a run.

The driver holds no model. Each step it asks the pipeline for a trained step (generation on the
rollout actors, loss and update on the learner actors), logs, evaluates and checkpoints.
"""

from __future__ import annotations

import copy
import pickle
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

from rlkit import metric_names as m
from rlkit.config import ConfigError, RLConfig, apply_mapping
from rlkit.driver.stopping import StopRequest, checkpoint_or_stop, stopped_summary
from rlkit.objectives import objective_from_config
from rlkit.prompts import PromptSource, check_rows, load_rows
from rlkit.reward_runner import RewardFn
from rlkit.runs import (ACTOR_DIED, ACTOR_RETRY, MetricsLogger, RunDirectory, TrainingProgress, plot_reward_curve,
                        render_summary, write_summary)


class RLTrainer:
    """Train a causal LM with verifiable rewards.

    ``RLTrainer(model="tiny-arith", reward_funcs=[fn], args=RLConfig(...), train_dataset=rows)``
    where a reward function has TRL's signature ``fn(prompts, completions, **columns)`` and
    ``train_dataset`` is a ``datasets.Dataset`` or a list of dicts with a prompt column. Anything
    left out comes from the config (its environment, its reward plugins, its data files).
    """

    def __init__(self, model: Any = None, reward_funcs: RewardFn | str | Sequence[RewardFn | str] | None = None,
                 args: RLConfig | None = None, train_dataset: Any = None, eval_dataset: Any = None):
        from rlkit.validation import validate

        self.config = copy.deepcopy(args) if args is not None else RLConfig()
        if isinstance(model, (str, Path)):
            self.config.model.name_or_path = str(model)
        elif model is not None:
            raise TypeError("model must be a name, a local path or a hub id; save an in-memory model "
                            "with save_pretrained() and pass its folder")
        given = None
        if reward_funcs is not None:
            single = callable(reward_funcs) or isinstance(reward_funcs, str)
            given = [reward_funcs] if single else list(reward_funcs)
            self.config.rewards.funcs = [r for r in given if isinstance(r, str)]  # plugin refs get checked
        if self.config.trainer != "rl":
            raise ConfigError(f"trainer: {self.config.trainer} runs on offline pairs: use PreferenceTrainer "
                              "(rlkit train picks the trainer the config names)")
        validate(self.config)
        from rlkit.rollout.collaborators import check_same_tokenizer, parse_collaborators

        self.collaborators = parse_collaborators(self.config)
        check_same_tokenizer(self.config, self.collaborators)
        self.env = _make_env(self.config)
        from rlkit.models import load_tokenizer

        self.tokenizer = load_tokenizer(self.config.model)
        self.reward_funcs = _reward_list(given, self.config, self.env)
        self.eval_reward_funcs = _eval_reward_list(self.config, self.env)
        self.train_rows = self._rows(train_dataset, self.config.data.train_file, "train")
        if self.config.data.label_free:  # nothing but the prompt leaves the driver
            column = self.config.data.prompt_column
            self.train_rows = [{column: row[column]} for row in self.train_rows]
        self.eval_rows = self._rows(eval_dataset, self.config.data.eval_file, "eval")
        if self.config.data.eval_limit:
            self.eval_rows = self.eval_rows[: self.config.data.eval_limit]

    @classmethod
    def from_run(cls, run_dir: str | Path, overrides: dict[str, str] | None = None) -> "RLTrainer":
        """Rebuild the trainer of an existing run folder (for ``--resume``)."""
        from rlkit.config import apply_overrides

        run = RunDirectory(run_dir)
        config = RLConfig()
        apply_mapping(config, run.load_config(), str(run.config_path))
        apply_overrides(config, overrides or {})
        config.output_dir = str(run.path)
        return cls(args=config)

    def _rows(self, dataset: Any, file: str | None, split: str) -> list[dict[str, Any]]:
        """Rows for ``split``, checked now: a prompt (rendered with the chat template when it is a list
        of messages, and within data.max_prompt_length), plus the columns the environment's rewards need."""
        required = () if split == "train" and self.config.data.label_free else getattr(self.env, "required_columns", ())
        # a multi-turn environment writes the prompt the model reads: its rows are not rendered here
        tokenizer = None if getattr(self.env, "multi_turn", False) else self.tokenizer
        checks = {"required": required, "lists": getattr(self.env, "list_columns", ()), "tokenizer": tokenizer}
        if dataset is not None:
            return check_rows(list(dataset), self.config.data, origin=f"{split}_dataset", **checks)
        if file:
            return load_rows(file, getattr(self.config.data, f"{split}_split"), self.config.data, **checks)
        return check_rows(self.env.dataset(split), self.config.data,
                          origin=f"environment {self.config.env.name}, {split} split", **checks)

    def evaluate(self) -> dict[str, float]:
        """Greedy pass rate of the configured model on the eval rows, in this process (no Ray)."""
        from rlkit.rollout.worker import RolloutWorker

        worker = RolloutWorker(self.config, self.reward_funcs, threads=0, eval_reward_funcs=self.eval_reward_funcs)
        return worker.evaluate(self.eval_rows, self.config.rewards.pass_threshold)

    def pass_at_k(self, ks: tuple[int, ...] = (1, 8), num_samples: int = 16) -> dict[str, float]:
        """Sampled pass@k of the configured model on the eval rows (run's temperature), in this process."""
        from rlkit.rollout.worker import RolloutWorker

        worker = RolloutWorker(self.config, self.reward_funcs, threads=0, eval_reward_funcs=self.eval_reward_funcs)
        return worker.pass_at_k(self.eval_rows, self.config.rewards.pass_threshold, ks=ks,
                                num_samples=num_samples, seed=self.config.seed)

    # --- the run ---------------------------------------------------------------------------------

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run training to ``max_steps`` and return the run summary (also ``RUN/summary.json``).

        Places the actors, evaluates before and after, checkpoints every ``save_steps`` and on
        SIGTERM, and writes the final model to ``RUN/final``. ``resume=True`` continues the run in
        ``output_dir`` from its latest checkpoint (``RLTrainer.from_run`` builds the trainer).
        """
        from ray.exceptions import RayActorError

        from rlkit.cluster import place_actors
        from rlkit.driver.pipeline import StepPipeline
        from rlkit.driver.run_access import PipelineRunAccess

        config = self.config
        run = RunDirectory(config.output_dir or _default_run_dir(config))
        config.output_dir = str(run.path)
        run.check_usable(resume=resume)
        actors = place_actors(config, self.reward_funcs, self.eval_reward_funcs)
        state: dict[str, Any] = {"step": 0}
        try:
            # written once the actors are up, so a run that cannot start leaves no folder behind
            run.create(config.to_dict(), resume=resume)
            # the driver's one copy of the objective: its hooks are made here, once
            objective = objective_from_config(config.objective.name, config.objective.params)
            extras = objective.extra_rows(PipelineRunAccess(config, run.path, actors.fleet, actors.learners))
            rows = extras.prepare(self.train_rows) if extras is not None else self.train_rows
            source = PromptSource(rows, seed=config.seed, shuffle=config.data.shuffle)
            # ZeRO-2/3 reduce in every backward pass; some losses reduce in every micro-batch: then all
            # ranks must run as many micro-batches
            lockstep = config.learner.zero_stage >= 2 or objective.micro_batches_in_lockstep()
            pipeline = StepPipeline(config, actors.fleet, actors.learners, source, objective.assign_advantages,
                                    extras=extras, driver_state=objective.driver_state(), equal_passes=lockstep,
                                    weight_sync=actors.weight_sync,
                                    collaborators=[(c, actors.collaborator_fleets[c.name]) for c in self.collaborators],
                                    peer_learners=actors.collaborator_learners)
            state = self._restore(run, actors, pipeline) if resume else {"step": 0}
            pipeline.push_initial_weights(state["step"])
            if "eval_before" not in state:
                state["eval_before"] = self._evaluate(actors)["pass_rate"]
            run.append_failures(state["step"], actors.fleet.take_retries())
            summary = self._loop(run, actors, pipeline, state)
        except RayActorError as exc:
            raise _actor_lost(exc, actors, run, state["step"]) from exc
        finally:
            actors.shutdown()
        return summary

    def _loop(self, run: RunDirectory, actors, pipeline, state: dict[str, Any]) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        wall_before = state.get("wall_seconds", 0.0)
        with MetricsLogger(run, tensorboard=config.logging.tensorboard) as logger, StopRequest() as stop, \
                TrainingProgress(config.max_steps, start_step=state["step"], enabled=config.logging.progress) as bar:
            if state["step"]:
                logger.truncate_after(state["step"])
                run.truncate_failures_after(state["step"])
            run.stopped_path.unlink(missing_ok=True)  # a resumed run is no longer stopped
            for step in range(state["step"], config.max_steps):
                t0 = time.perf_counter()
                out = pipeline.run_step(step)
                metrics = step_metrics(out, step, time.perf_counter() - t0)
                if config.eval_steps and (step + 1) % config.eval_steps == 0 and step + 1 < config.max_steps:
                    metrics["eval_pass_rate"] = self._evaluate(actors)["pass_rate"]
                eval_retries = actors.fleet.take_retries()
                metrics["actor_retries"] += len(eval_retries)
                run.append_failures(step + 1, [f for g in sampled_groups(out) for f in g.failures]
                                    + out.retries + eval_retries)
                logger.log(step + 1, metrics)
                bar.update(step + 1, metrics)
                state.update(step=step + 1, wall_seconds=wall_before + time.perf_counter() - started)
                if checkpoint_or_stop(run, stop, step + 1, config.max_steps, config.save_steps,
                                      lambda: self._checkpoint(run, actors, pipeline, state)):
                    break
        if state["step"] < config.max_steps:  # stopped by request: checkpointed, resumable
            return stopped_summary(run, state)
        after = self._evaluate(actors)
        run.append_failures(state["step"], actors.fleet.take_retries())
        ray_get([a.save_pretrained.remote(str(run.final_model_dir)) for a in actors.learners]
                + [a.save_pretrained.remote(str(run.path / f"final-{name}"))  # swarm peers' models
                   for name, peers in actors.collaborator_learners.items() for a in peers])
        summary = {
            "run_dir": str(run.path), "steps": state["step"],
            "eval_pass_rate_before": state["eval_before"], "eval_pass_rate_after": after["pass_rate"],
            "eval_rows": after["num_rows"], "wall_seconds": round(state["wall_seconds"], 2),
            "objective": config.objective.name, "schedule": config.rollout.schedule,
            "final_model": str(run.final_model_dir), "peak_memory_mb": _peak_memory(actors),
        }
        write_summary(run, summary)
        if config.logging.plot:
            plot_reward_curve(run.metrics_path, run.plot_path, title=f"{config.env.name} / {config.objective.name}")
        render_summary(summary)
        return summary

    def _evaluate(self, actors) -> dict[str, float]:
        fleet = actors.fleet
        return fleet.result(fleet.call(0, "evaluate", self.eval_rows, self.config.rewards.pass_threshold,
                                       what=f"evaluation on {len(self.eval_rows)} rows"))

    def _checkpoint(self, run: RunDirectory, actors, pipeline, state: dict[str, Any]) -> None:
        path = run.checkpoint_dir(state["step"])
        path.mkdir(parents=True, exist_ok=True)
        ray_get([a.save_checkpoint.remote(str(path), {"step": state["step"]}) for a in actors.learners]
                + [a.save_checkpoint.remote(str(path / f"peer-{name}"), {"step": state["step"]})
                   for name, peers in actors.collaborator_learners.items() for a in peers])
        driver = {"trainer": dict(state), "pipeline": pipeline.state_dict()}
        with open(path / "driver.pkl", "wb") as f:
            pickle.dump(driver, f)
        run.mark_checkpoint_complete(state["step"])
        run.prune_checkpoints(self.config.save_total_limit)

    def _restore(self, run: RunDirectory, actors, pipeline) -> dict[str, Any]:
        latest = run.latest_checkpoint()
        if latest is None:
            raise ConfigError(f"{run.path} has no complete checkpoint to resume from")
        _, path = latest
        ray_get([a.load_checkpoint.remote(str(path)) for a in actors.learners]
                + [a.load_checkpoint.remote(str(path / f"peer-{name}"))
                   for name, peers in actors.collaborator_learners.items() for a in peers])
        with open(path / "driver.pkl", "rb") as f:
            driver = pickle.load(f)
        pipeline.load_state_dict(driver["pipeline"])
        return driver["trainer"]


def step_metrics(out, step: int, seconds: float) -> dict[str, float]:
    """What one step logs: rewards and lengths from the groups, loss and entropy from the learners."""
    import statistics

    sampled = sampled_groups(out)
    rewards = [r for g in sampled for r in g.rewards]
    lengths = [r.num_generated_tokens for g in sampled for r in g.rollouts]  # the model's own tokens
    versions = [g.policy_version for g in out.groups]
    learner = out.learner
    metrics = {
        "reward_mean": statistics.fmean(rewards), "reward_std": statistics.pstdev(rewards),
        "loss": learner[m.LOSS], "entropy": learner[m.ENTROPY],
        "completion_length": statistics.fmean(lengths),
        "truncated_fraction": statistics.fmean(r.truncated for g in sampled for r in g.rollouts),
        "tokens_per_second": sum(lengths) / seconds, "step_seconds": seconds, "trained_groups": len(out.groups),
        "policy_version": min(versions), "staleness": step - min(versions),
        "update_seconds": out.update_seconds,
        "solved_groups": sum(all(r > 0 for r in g.rewards) for g in sampled) / len(sampled),
        "zero_variance_groups": sum(len(set(g.rewards)) == 1 for g in sampled) / len(sampled),
        # reward and environment failures, and calls sent again after an actor died (all in failures.jsonl)
        "failures": sum(f.get("kind") != ACTOR_RETRY for g in sampled for f in g.failures),
        "actor_retries": len(out.retries) + sum(f.get("kind") == ACTOR_RETRY for g in sampled for f in g.failures),
    }
    counted = [g for g in sampled if g.generated_tokens is not None and g.source == "policy"]
    if counted:  # tokens the policy sampled per prompt, and their share of the completions' length
        # (< 1 when completions share prefixes: rollout.sampler entropy_tree)
        metrics["generated_tokens"] = sum(g.generated_tokens for g in counted)
        metrics["generated_tokens_per_prompt"] = statistics.fmean(g.generated_tokens for g in counted)
        metrics["generated_token_ratio"] = sum(g.generated_tokens for g in counted) / max(
            1, sum(len(r.completion_ids) for g in counted for r in g.rollouts))
    others = [g for g in sampled if g.source != "policy"]
    if others:  # groups other models sampled (F-TIS collaborators)
        metrics["shared_groups"] = len(others)
        metrics["shared_reward_mean"] = statistics.fmean(r for g in others for r in g.rewards)
    if any(g.multi_turn for g in sampled):
        metrics["turns_mean"] = statistics.fmean(len(r.turn_rewards or [0]) for g in sampled for r in g.rollouts)
    metrics.update({k: v for k, v in learner.items() if k not in (m.LOSS, m.ENTROPY, m.LOSS_SUM, m.ENTROPY_SUM)})
    metrics.update(out.extra)
    return metrics


def _peak_memory(actors) -> dict[str, dict[str, float | None]]:
    """Each actor's peak resident memory (and peak CUDA allocation), in MB."""
    names = [f"learner rank {r}" for r in range(len(actors.learners))]
    names += [f"rollout worker {i}" for i in range(len(actors.workers))]
    peaks = ray_get([a.peak_memory.remote() for a in actors.learners + actors.workers])
    return {name: {k: (round(v, 1) if v is not None else None) for k, v in peak.items()}
            for name, peak in zip(names, peaks)}


def _actor_lost(exc, actors, run: RunDirectory, steps_done: int) -> BaseException:
    """An actor error the rollout fleet does not recover from (a learner's death): record it in
    failures.jsonl and say how the run goes on."""
    name = actors.name_of(exc) or "an actor"
    detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    run.append_failures(steps_done + 1, [{"kind": ACTOR_DIED, "actor": name, "error": type(exc).__name__,
                                          "detail": detail}])
    latest = run.latest_checkpoint()
    how = (f"resume it from its last checkpoint (step {latest[0]}): rlkit train --resume {run.path}" if latest
           else "it has no checkpoint yet (save_steps), so start it again")
    why = ("a learner's calls cannot run twice and its optimizer state is lost with it, so the run stops"
           if name.startswith("learner") else "the run stops")
    return RuntimeError(f"{name} died during step {steps_done + 1} ({type(exc).__name__}: {detail}); {why}; {how}")


def sampled_groups(out) -> list:
    """What was sampled this step: groups dynamic sampling left out count, replayed ones do not."""
    return _without(out.groups, out.replayed) + out.dropped


def _without(groups: list, removed: list) -> list:
    gone = {id(g) for g in removed}
    return [g for g in groups if id(g) not in gone]


def ray_get(refs):
    import ray

    return ray.get(refs)


def _eval_reward_list(config: RLConfig, env) -> list[tuple[str, str]] | None:
    """Evaluation's rewards when they differ from training's (None: the same): ``rewards.eval_funcs``,
    or under ``data.label_free`` the environment's own, which read the held-out rows' answers."""
    names = config.rewards.eval_funcs or (list(env.default_rewards) if config.data.label_free else [])
    if getattr(env, "multi_turn", False) or not names:
        return None
    return [(name, name) for name in names]


def _default_run_dir(config: RLConfig) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    method = config.preference.loss if config.trainer == "preference" else config.objective.name
    return str(Path("runs") / f"{config.env.name}-{method}-{stamp}")


def _make_env(config: RLConfig):
    from rlkit import plugins

    env_class = plugins.envs.get(config.env.name)
    try:
        return env_class(**config.env.args)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"env.args: {exc}") from exc


def _reward_list(given, config: RLConfig, env) -> list[tuple[str, RewardFn | str]]:
    """(name, function or plugin reference) pairs; references are resolved inside each worker."""
    if getattr(env, "multi_turn", False):
        if given or config.rewards.funcs:
            raise ConfigError(f"environment {config.env.name!r} is multi-turn and scores each turn itself; "
                              "leave rewards.funcs empty")
        return []
    if config.data.label_free and not (given or config.rewards.funcs):
        raise ConfigError("data.label_free: training rows carry no answers, so the environment's rewards cannot "
                          "score them; set rewards.funcs to a label-free reward (majority_vote)")
    names = given or config.rewards.funcs or list(env.default_rewards)
    if not names:
        raise ConfigError(f"no reward functions: set rewards.funcs (environment {config.env.name!r} has no default)")
    pairs = [(f, f) if isinstance(f, str) else (getattr(f, "__name__", f"reward_{i}"), f)
             for i, f in enumerate(names)]
    weights = config.rewards.weights
    if weights is not None and len(weights) != len(pairs):
        raise ConfigError(f"rewards.weights has {len(weights)} entries for {len(pairs)} reward functions")
    return pairs

