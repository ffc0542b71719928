"""Multi-turn episodes: the model answers, the environment replies, the model tries again.

Each episode runs on its own shallow copy of the environment, so ``reset(row)`` may keep
per-episode state on ``self``. An episode's completion is every token after the prompt: the
model's turns with their sampling log-probs and entropies, and between them the environment's
feedback, encoded without special tokens and masked out of the loss (``loss_mask`` 0). Turn 0
samples the group's G episodes from one shared prompt prefill; later turns continue each
episode from its own context.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from rlkit.chat import is_conversational, render_prompt, with_system_prompt
from rlkit.data import Rollout
from rlkit.envs.base import StepResult
from rlkit.rollout.engines import Engine, Request, Sample, SamplingParams, generate

logger = logging.getLogger("rlkit.envs")


@dataclass
class Episode:
    env: Any
    prompt_ids: list[int]
    # prompt, completion, feedback, completion, ... (text); for a conversational prompt, its messages
    # followed by an assistant message per turn and a user message per feedback
    history: list[Any]
    context: str = ""  # conversational: the text the model has read and written so far
    completion_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    behavior_logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    token_turns: list[int] = field(default_factory=list)
    turn_rewards: list[float] = field(default_factory=list)
    truncated: bool = False
    done: bool = False

    def add_model_turn(self, sample: Sample, turn: int) -> None:
        n = len(sample.completion_ids)
        self.completion_ids += sample.completion_ids
        self.loss_mask += [1] * n
        self.behavior_logprobs += sample.logprobs or [0.0] * n
        self.entropies += sample.entropies or [0.0] * n
        self.token_turns += [turn] * n
        self.truncated = sample.truncated

    def add_feedback(self, ids: list[int], next_turn: int) -> None:
        n = len(ids)
        self.completion_ids += ids
        self.loss_mask += [0] * n
        self.behavior_logprobs += [0.0] * n
        self.entropies += [0.0] * n
        self.token_turns += [next_turn] * n

    def to_rollout(self, text_of: Callable[[list[int]], str]) -> Rollout:
        model_ids = [t for t, m in zip(self.completion_ids, self.loss_mask) if m]
        return Rollout(completion_ids=self.completion_ids, behavior_logprobs=self.behavior_logprobs,
                       entropies=self.entropies, text=text_of(model_ids), truncated=self.truncated,
                       reward=sum(self.turn_rewards), loss_mask=self.loss_mask, token_turns=self.token_turns,
                       turn_rewards=list(self.turn_rewards),
                       reward_components={f"turn_{t}": r for t, r in enumerate(self.turn_rewards)})


class EpisodeRunner:
    """Plays ``n`` episodes per row against an environment, batching each turn's generation."""

    def __init__(self, engine: Engine, tokenizer, env, max_turns: int, max_positions: int,
                 system_prompt: str | None = None):
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        self.engine, self.tokenizer, self.env = engine, tokenizer, env
        self.max_turns, self.max_positions = max_turns, max_positions
        self.system_prompt = system_prompt
        self.failures: list[dict[str, Any]] = []  # environment errors, with the turn that caused them

    def prompt(self, row: dict[str, Any]) -> Any:
        """The episode's opening prompt (text, or messages); it must depend on the row only (a group
        shares its prompt)."""
        return copy.copy(self.env).reset(row)

    def run(self, rows: list[dict[str, Any]], n: int, sampling: SamplingParams,
            seed: int | None = None) -> list[list[Rollout]]:
        seed = 0 if seed is None else seed
        groups = [self._start(row, n) for row in rows]
        first = generate(self.engine, [Request.of(g[0].prompt_ids, n, key=i) for i, g in enumerate(groups)],
                         sampling, seed)
        for group, samples in zip(groups, first):
            for episode, sample in zip(group, samples):
                self._take_turn(episode, sample, 0, sampling)
        for turn in range(1, self.max_turns):
            active = [(i * n + j, e) for i, group in enumerate(groups) for j, e in enumerate(group) if not e.done]
            if not active:
                break
            # each episode continues from its own context: one sample, keyed by the episode
            requests = [Request.of(e.prompt_ids + e.completion_ids, 1, key=k) for k, e in active]
            for (_, episode), (sample,) in zip(active, generate(self.engine, requests, sampling, seed + turn)):
                self._take_turn(episode, sample, turn, sampling)
        return [[e.to_rollout(self._decode) for e in group] for group in groups]

    def _start(self, row: dict[str, Any], n: int) -> list[Episode]:
        episodes, first = [], None
        for _ in range(n):
            env = copy.copy(self.env)
            prompt = env.reset(row)
            first = prompt if first is None else first
            if prompt != first:
                raise ValueError(f"{type(self.env).__name__}.reset() gave two prompts for one row; a group's "
                                 "episodes share their prompt, so put any randomness in the row itself")
            if is_conversational(prompt):
                messages = with_system_prompt(prompt, self.system_prompt)
                context = render_prompt(self.tokenizer, messages)
                episodes.append(Episode(env=env, prompt_ids=self._encode(context, special=False),
                                        history=list(messages), context=context))
            else:
                episodes.append(Episode(env=env, prompt_ids=self._encode(prompt, special=True), history=[prompt]))
        return episodes

    def _take_turn(self, episode: Episode, sample: Sample, turn: int, sampling: SamplingParams) -> None:
        episode.add_model_turn(sample, turn)
        text = self._decode(sample.completion_ids)
        result = self._step(episode, text)
        chat = bool(episode.context)
        episode.history.append({"role": "assistant", "content": text} if chat else text)
        episode.turn_rewards.append(result.reward)
        if chat and result.feedback:
            feedback = self._feedback_through_template(episode, sample, result.feedback)
        else:
            feedback = self._encode(result.feedback, special=False) if result.feedback else []
        room = len(episode.prompt_ids) + len(episode.completion_ids) + len(feedback) + sampling.max_new_tokens
        if result.done or turn + 1 >= self.max_turns or room > self.max_positions:
            episode.done = True
            return
        episode.history.append({"role": "user", "content": result.feedback} if chat else result.feedback)
        episode.add_feedback(feedback, turn + 1)

    def _feedback_through_template(self, episode: Episode, sample: Sample, feedback: str) -> list[int]:
        """The tokens between the model's turn and its next one, as the chat template writes them: the
        end of the assistant message (when the model did not write it), the user message holding the
        feedback, and the next generation prompt. They are the template's rendering of the whole
        conversation past what the model has read and written, so the context stays exactly the
        template's own rendering of the messages."""
        written = episode.context + self.tokenizer.decode(sample.completion_ids, skip_special_tokens=False)
        messages = [*episode.history, {"role": "user", "content": feedback}]
        full = render_prompt(self.tokenizer, messages)
        if not full.startswith(written):
            raise ValueError(
                "the chat template renders the conversation so far differently once a turn is added (it "
                "rewrites earlier turns, e.g. drops their reasoning), so an episode cannot grow by appending "
                f"tokens; the context ended {written[-60:]!r}, the template gives {full[len(written) - 60:][:120]!r}")
        episode.context = full
        return self._encode(full[len(written):], special=False)

    def _step(self, episode: Episode, text: str) -> StepResult:
        """The environment's answer; one that raises or returns no finite reward ends the episode
        with reward 0, counted in ``failures`` with the offending turn kept."""
        try:
            result = episode.env.step(list(episode.history), text)
            reward = float(result.reward)
            if not math.isfinite(reward):
                raise ValueError(f"non-finite reward {result.reward!r}")
            return StepResult(reward=reward, done=bool(result.done), feedback=str(result.feedback or ""))
        except Exception as exc:  # a broken environment must not take the run down
            error = f"{type(exc).__name__}: {exc}"
            self.failures.append({"env": type(self.env).__name__, "error": error,
                                  "history": list(episode.history), "completion": text})
            logger.warning("environment %s failed: %s", type(self.env).__name__, error)
            return StepResult(reward=0.0, done=True)

    def _encode(self, text: str, special: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)
