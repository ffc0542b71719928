"""The rollout worker: samples G completions per prompt, scores them, reports groups.

Wrapped in a Ray actor by the driver. It holds a generation engine with the current policy
weights and their version number, and the run's reward functions.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from rlkit.config import RLConfig
from rlkit.data import Rollout, RolloutGroup
from rlkit.reward_runner import RewardFn, RewardRunner
from rlkit.rollout.hf_engine import HFEngine, SamplingParams


class RolloutWorker:
    def __init__(self, config: RLConfig, reward_funcs: list[tuple[str, RewardFn | str]], *, threads: int = 1):
        from rlkit.models import load_model, load_tokenizer

        if threads:  # 0 keeps the process's setting
            torch.set_num_threads(threads)
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        model = load_model(config.model, trainable=False)
        if torch.cuda.is_available():
            model = model.to("cuda")
        self.engine = HFEngine(model, self.tokenizer)
        from rlkit.plugins import rewards as reward_registry

        resolved = [(name, reward_registry.get(fn) if isinstance(fn, str) else fn) for name, fn in reward_funcs]
        self.rewards = RewardRunner(resolved, config.rewards.weights)
        self.policy_version = 0
        rollout = config.rollout
        self.sampling = SamplingParams(max_new_tokens=rollout.max_completion_length,
                                       temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k)

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(state_dict)
        self.policy_version = version
        return version

    def generate_groups(self, items: list[tuple[int, dict[str, Any]]], seed: int, *,
                        temperature: float | None = None, group_size: int | None = None) -> list[RolloutGroup]:
        """Sample ``num_generations`` completions for each ``(prompt_index, row)`` and score them
        (another temperature or group size when given: AEPO's tempered samples, DPH-RL's split)."""
        column = self.config.data.prompt_column
        group_size = group_size or self.config.rollout.num_generations
        sampling = self.sampling if temperature is None else dataclasses.replace(self.sampling, temperature=temperature)
        prompt_ids = [self._encode(row[column]) for _, row in items]
        samples = self.engine.generate(prompt_ids, group_size, sampling, seed=seed)
        groups = []
        for (index, row), ids, group_samples in zip(items, prompt_ids, samples):
            rollouts = [self._rollout(s) for s in group_samples]
            outcome = self.rewards.score([row[column]] * group_size, [r.text for r in rollouts],
                                         [r.completion_ids for r in rollouts], [row] * group_size)
            for rollout, total, parts in zip(rollouts, outcome.totals, outcome.components):
                rollout.reward, rollout.reward_components = total, parts
            groups.append(RolloutGroup(prompt_index=index, prompt=row[column], prompt_ids=ids, row=row,
                                       rollouts=rollouts, policy_version=self.policy_version))
        return groups

    def evaluate(self, rows: list[dict[str, Any]], pass_threshold: float, batch_size: int = 256) -> dict[str, float]:
        """Greedy pass rate: the share of rows whose greedy completion earns >= ``pass_threshold``."""
        column = self.config.data.prompt_column
        greedy = SamplingParams(max_new_tokens=self.config.rollout.max_completion_length, greedy=True)
        passed, reward_sum = 0, 0.0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = [self._encode(row[column]) for row in chunk]
            outs = [group[0] for group in self.engine.generate(ids, 1, greedy)]
            texts = [self._decode(s.completion_ids) for s in outs]
            scores = self.rewards.score([r[column] for r in chunk], texts, [s.completion_ids for s in outs], chunk)
            passed += sum(total >= pass_threshold for total in scores.totals)
            reward_sum += sum(scores.totals)
        return {"pass_rate": passed / len(rows), "reward_mean": reward_sum / len(rows), "num_rows": len(rows)}

    def pass_at_k(self, rows: list[dict[str, Any]], pass_threshold: float, ks: tuple[int, ...] = (1, 8),
                  num_samples: int = 16, seed: int = 0, batch_size: int = 32) -> dict[str, float]:
        """Unbiased pass@k (Chen et al., 2021) from ``num_samples`` completions per row at the
        sampling settings of the run: ``1 − C(n−c, k) / C(n, k)`` averaged over rows, c = correct."""
        if max(ks) > num_samples:
            raise ValueError(f"pass@{max(ks)} needs num_samples >= {max(ks)}, got {num_samples}")
        column = self.config.data.prompt_column
        totals = dict.fromkeys(ks, 0.0)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            ids = [self._encode(row[column]) for row in chunk]
            groups = self.engine.generate(ids, num_samples, self.sampling, seed=seed + start)
            for row, samples in zip(chunk, groups):
                texts = [self._decode(s.completion_ids) for s in samples]
                scores = self.rewards.score([row[column]] * num_samples, texts,
                                            [s.completion_ids for s in samples], [row] * num_samples)
                correct = sum(total >= pass_threshold for total in scores.totals)
                for k in ks:
                    totals[k] += unbiased_pass_at_k(num_samples, correct, k)
        return {f"pass@{k}": totals[k] / len(rows) for k in ks} | {"num_rows": len(rows)}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]  # adds BOS for models trained with one

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _rollout(self, sample) -> Rollout:
        return Rollout(completion_ids=sample.completion_ids, behavior_logprobs=sample.logprobs,
                       entropies=sample.entropies, text=self._decode(sample.completion_ids),
                       truncated=sample.truncated)


def unbiased_pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k completions drawn without replacement from n, c of them
    correct, is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)

