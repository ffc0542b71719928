"""The rollout worker: samples G completions per prompt, scores them, reports groups.

Wrapped in a Ray actor by the driver. It holds a generation engine with the current policy
weights and their version number, and the run's reward functions.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import torch

from rlkit.chat import as_completion, encode_prompt, render_prompt
from rlkit.config import RLConfig
from rlkit.data import Rollout, RolloutGroup
from rlkit.reward_pool import build_reward_scorer
from rlkit.reward_runner import RewardFn
from rlkit.rollout.engines import Engine, Request, SamplingParams, build_engine, generate
from rlkit.rollout.episodes import EpisodeRunner
from rlkit.rollout.tree import TreeShape, grow_trees
from rlkit.sandbox import configure as configure_sandbox


class RolloutWorker:
    def __init__(self, config: RLConfig, reward_funcs: list[tuple[str, RewardFn | str]], *, threads: int = 1,
                 eval_reward_funcs: list[tuple[str, RewardFn | str]] | None = None, source: str = "policy"):
        from rlkit.models import load_tokenizer

        if threads:  # 0 keeps the process's setting
            torch.set_num_threads(threads)
        self.config = config
        self.source = source  # what its groups say made them ("policy", or an F-TIS collaborator)
        # a new id for every start of this actor: the driver tells a restarted worker by it
        self._incarnation = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.tokenizer = load_tokenizer(config.model)
        self.device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        self.engine: Engine = build_engine(config, self.device)
        configure_sandbox(config.sandbox.require, config.sandbox.url)  # environments may run code here
        # plugin references are resolved where the rewards run (the reward actors, or here)
        self.rewards = None  # multi-turn environments score their own turns
        if reward_funcs:
            self.rewards = build_reward_scorer(reward_funcs, config.rewards.weights, config.rewards,
                                               cpus=config.cluster.reward_cpus, gpus=config.cluster.reward_gpus,
                                               sandbox=config.sandbox)
        # evaluation may score otherwise (label-free training still evaluates against answers)
        self.eval_rewards = self.rewards
        if eval_reward_funcs:
            self.eval_rewards = build_reward_scorer(eval_reward_funcs, None, config.rewards,
                                                    cpus=config.cluster.reward_cpus, gpus=config.cluster.reward_gpus,
                                                    sandbox=config.sandbox)
        rollout = config.rollout
        self.tree = None  # ETTRL's entropy-forked trees (rlkit/rollout/tree.py)
        if rollout.sampler == "entropy_tree":
            self.tree = TreeShape.for_group(rollout.num_generations, rollout.fork_points, rollout.fork_branches)
        self.sampling = SamplingParams(max_new_tokens=rollout.max_completion_length,
                                       temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
                                       stop=tuple(rollout.stop))
        self.episodes = _episode_runner(config, self.engine, self.tokenizer)

    @property
    def multi_turn(self) -> bool:
        return self.episodes is not None

    @property
    def policy_version(self) -> int:
        return self.engine.version

    def incarnation(self) -> str:
        """Which start of this actor answers: a restart after a death draws a new one."""
        return self._incarnation

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> dict[str, Any]:
        """Load the learner's weights: the incarnation that now holds them, bytes and seconds."""
        started = time.perf_counter()
        self.engine.load_weights(state_dict, version)
        return {"incarnation": self._incarnation, "seconds": time.perf_counter() - started,
                "bytes": sum(t.numel() * t.element_size() for t in state_dict.values())}

    def join_weight_group(self, host: str, port: int, rank: int, world_size: int, specs: list,
                          timeout_s: float) -> str:
        """Join the learner's weight-broadcast group as ``rank``; the incarnation that joined."""
        from rlkit.weight_broadcast import WeightGroup

        self.weight_group = WeightGroup(host, port, rank, world_size, self.device, timeout_s)
        self.weight_specs = specs
        return self._incarnation

    def receive_weights(self, version: int) -> dict[str, Any]:
        """Take the weights the learner broadcasts, as :meth:`set_weights` takes them from the object store."""
        started = time.perf_counter()
        state = self.weight_group.receive(self.weight_specs)
        self.engine.load_weights(state, version)
        return {"incarnation": self._incarnation, "seconds": time.perf_counter() - started,
                "bytes": sum(t.numel() * t.element_size() for t in state.values())}

    def peak_memory(self) -> dict[str, float | None]:
        from rlkit.learner.learner import peak_memory

        return peak_memory()

    def stream_groups(self, items: list[tuple[int, dict[str, Any]]], seed: int, *, temperature: float | None = None,
                      group_size: int | None = None, evaluation: bool = False) -> Iterator[list[RolloutGroup]]:
        """Sample ``num_generations`` completions for each ``(prompt_index, row)`` and yield the
        groups, scored, as they end: each item is the groups that ended together. (Another
        temperature or group size when given: what an objective's extra rows ask for.
        ``evaluation``: flat samples scored with the evaluation rewards, as pass@k wants.) Called
        through Ray, each item reaches the caller as soon as it is yielded."""
        column = self.config.data.prompt_column
        group_size = group_size or self.config.rollout.num_generations
        sampling = self.sampling if temperature is None else dataclasses.replace(self.sampling, temperature=temperature)
        if self.multi_turn:  # episodes are played turn by turn over all rows: they end together
            yield self._episode_groups(items, seed, sampling, group_size)
            return
        prompt_ids = [self._encode_prompt(row[column]) for _, row in items]
        for ended in self._sample(items, prompt_ids, group_size, sampling, seed, flat=evaluation):
            groups = []
            for i, samples, generated in ended:
                index, row = items[i]
                groups.append(RolloutGroup(prompt_index=index, prompt=self._prompt_text(row[column]),
                                           prompt_ids=prompt_ids[i], row=row,
                                           rollouts=[self._rollout(s) for s in samples],
                                           policy_version=self.policy_version, generated_tokens=generated,
                                           source=self.source))
            self._score(groups, self.eval_rewards if evaluation else self.rewards)
            yield groups

    def _sample(self, items, prompt_ids, group_size: int, sampling: SamplingParams, seed: int, flat: bool = False):
        """Yield ``(item position, samples, tokens sampled for them)`` lists as groups end: flat, or as
        entropy-forked trees when the run's sampler says so (for the run's own groups only)."""
        keys = [index for index, _ in items]
        if self.tree is not None and group_size == self.tree.group_size and not flat:
            for ended in grow_trees(self.engine, prompt_ids, keys, self.tree, sampling, seed,
                                    eos_id=self.tokenizer.eos_token_id, entropy=self.config.rollout.fork_entropy):
                yield [(i, tree.leaves, tree.generated_tokens) for i, tree in ended]
            return
        requests = [Request.of(ids, group_size, key=key) for key, ids in zip(keys, prompt_ids)]
        for ended in self.engine.stream(requests, sampling, seed):
            yield [(i, samples, sum(len(s.completion_ids) for s in samples)) for i, samples in ended]

    def generate_groups(self, items: list[tuple[int, dict[str, Any]]], seed: int, *,
                        temperature: float | None = None, group_size: int | None = None,
                        evaluation: bool = False) -> list[RolloutGroup]:
        """All of :meth:`stream_groups` at once, in the order of ``items``."""
        order = {index: position for position, (index, _) in enumerate(items)}
        groups = [g for ended in self.stream_groups(items, seed, temperature=temperature, group_size=group_size,
                                                    evaluation=evaluation)
                  for g in ended]
        return sorted(groups, key=lambda g: order[g.prompt_index])

    def _score(self, groups: list[RolloutGroup], scorer) -> None:
        """Reward every completion of ``groups`` in one call (one round trip to the reward actors);
        failures go to the group they happened in."""
        pairs = [(g, r) for g in groups for r in g.rollouts]
        group_ids = [k for k, g in enumerate(groups) for _ in g.rollouts]
        # as TRL's GRPOTrainer gives them: the dataset's prompt (messages, or text), and each completion
        # as an assistant message when the prompt is conversational
        prompts = [g.row.get(self.config.data.prompt_column, g.prompt) for g, _ in pairs]
        outcome = scorer.score(prompts, [as_completion(p, r.text) for p, (_, r) in zip(prompts, pairs)],
                               [r.completion_ids for _, r in pairs], [g.row for g, _ in pairs], group_ids)
        for (_, rollout), total, parts in zip(pairs, outcome.totals, outcome.components):
            rollout.reward, rollout.reward_components = total, parts
        size = len(groups[0].rollouts) if groups else 1
        for example in outcome.failure_examples:
            groups[min(example.get("index", 0) or 0, len(pairs) - 1) // size].failures.append(example)
        if groups:
            groups[0].failures.extend(outcome.retries)

    def _episode_groups(self, items: list[tuple[int, dict[str, Any]]], seed: int, sampling: SamplingParams,
                        group_size: int) -> list[RolloutGroup]:
        rows = [row for _, row in items]
        episodes = self.episodes.run(rows, group_size, sampling, seed=seed)
        groups = []
        for (index, row), rollouts in zip(items, episodes):
            prompt = self.episodes.prompt(row)
            groups.append(RolloutGroup(prompt_index=index, prompt=self._prompt_text(prompt),
                                       prompt_ids=self._encode_prompt(prompt), row=row,
                                       rollouts=rollouts, policy_version=self.policy_version))
        groups[0].failures.extend(self.episodes.failures)  # environment errors of this batch
        self.episodes.failures.clear()
        return groups

    def evaluate(self, rows: list[dict[str, Any]], pass_threshold: float, batch_size: int = 256) -> dict[str, float]:
        """Greedy pass rate: the share of rows whose greedy completion (or, in a multi-turn
        environment, greedy episode) earns >= ``pass_threshold`` in total."""
        column = self.config.data.prompt_column
        greedy = SamplingParams(max_new_tokens=self.config.rollout.max_completion_length, greedy=True,
                                stop=tuple(self.config.rollout.stop))
        passed, reward_sum = 0, 0.0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            if self.multi_turn:
                totals = [group[0].reward for group in self.episodes.run(chunk, 1, greedy)]
                self.episodes.failures.clear()  # logged already; failures.jsonl is for training steps
                passed += sum(total >= pass_threshold for total in totals)
                reward_sum += sum(totals)
                continue
            requests = [Request.of(self._encode_prompt(row[column]), 1, key=i) for i, row in enumerate(chunk)]
            outs = [samples[0] for samples in generate(self.engine, requests, greedy, seed=0)]
            texts = [as_completion(row[column], self._rollout(s).text) for row, s in zip(chunk, outs)]
            scores = self.eval_rewards.score([r[column] for r in chunk], texts, [s.completion_ids for s in outs], chunk)
            passed += sum(total >= pass_threshold for total in scores.totals)
            reward_sum += sum(scores.totals)
        return {"pass_rate": passed / len(rows), "reward_mean": reward_sum / len(rows), "num_rows": len(rows)}

    def pass_at_k(self, rows: list[dict[str, Any]], pass_threshold: float, ks: tuple[int, ...] = (1, 8),
                  num_samples: int = 16, seed: int = 0, batch_size: int = 32) -> dict[str, float]:
        """Unbiased pass@k (Chen et al., 2021) from ``num_samples`` completions per row at the
        sampling settings of the run: ``1 − C(n−c, k) / C(n, k)`` averaged over rows, c = correct."""
        if max(ks) > num_samples:
            raise ValueError(f"pass@{max(ks)} needs num_samples >= {max(ks)}, got {num_samples}")
        totals = dict.fromkeys(ks, 0.0)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            items = list(enumerate(chunk))
            for group in self.generate_groups(items, seed + start, group_size=num_samples, evaluation=True):
                correct = sum(r.reward >= pass_threshold for r in group.rollouts)
                for k in ks:
                    totals[k] += unbiased_pass_at_k(num_samples, correct, k)
        return {f"pass@{k}": totals[k] / len(rows) for k in ks} | {"num_rows": len(rows)}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]  # adds BOS for models trained with one

    def _encode_prompt(self, prompt: Any) -> list[int]:
        """A dataset prompt as ids: text, or messages through the chat template; over
        ``data.max_prompt_length`` it keeps its last tokens (``on_long_prompt: truncate``; under
        ``error`` the driver refused such rows before the run)."""
        ids = encode_prompt(self.tokenizer, prompt, self.config.data.system_prompt)
        limit = self.config.data.max_prompt_length
        return ids[-limit:] if limit and len(ids) > limit else ids

    def _prompt_text(self, prompt: Any) -> str:
        return render_prompt(self.tokenizer, prompt, self.config.data.system_prompt)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _rollout(self, sample) -> Rollout:
        sample, text = cut_at_stop(sample, self.config.rollout.stop, self._decode)
        return Rollout(completion_ids=sample.completion_ids, behavior_logprobs=sample.logprobs,
                       entropies=sample.entropies, text=text, truncated=sample.truncated)


def cut_at_stop(sample, stops: list[str], decode) -> tuple[Any, str]:
    """``(sample, text)`` ended at its first stop string (``rollout.stop``): the tokens up to the one
    that completed it (kept: the policy wrote them), the text before it (what rewards read, as vLLM
    gives it). The engine stops there already; this also holds for an engine that ignores stops."""
    text = decode(sample.completion_ids)
    found = [text.find(stop) for stop in stops if stop and stop in text]
    if not found:
        return sample, text
    ids = sample.completion_ids
    end = next(k for k in range(1, len(ids) + 1) if any(stop in decode(ids[:k]) for stop in stops if stop))
    if end < len(ids) or sample.truncated:
        sample = dataclasses.replace(sample, completion_ids=ids[:end], logprobs=sample.logprobs[:end],
                                     entropies=sample.entropies[:end], truncated=False)
    return sample, text[:min(found)]


def _episode_runner(config: RLConfig, engine: Engine, tokenizer) -> EpisodeRunner | None:
    """An episode runner when the run's environment is multi-turn, else None."""
    from transformers import AutoConfig

    from rlkit.models import resolve_model_path
    from rlkit.plugins import envs

    env_class = envs.get(config.env.name)
    if not getattr(env_class, "multi_turn", False):
        return None
    env = env_class(**config.env.args)
    model_config = AutoConfig.from_pretrained(resolve_model_path(config.model.name_or_path),
                                              trust_remote_code=config.model.trust_remote_code)
    max_positions = getattr(model_config, "max_position_embeddings", None) or 1 << 30
    return EpisodeRunner(engine, tokenizer, env, max_turns=env.max_turns, max_positions=max_positions,
                         system_prompt=config.data.system_prompt)


def unbiased_pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k completions drawn without replacement from n, c of them
    correct, is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

