"""TTRL and ETTRL: the majority vote, entropy-forked trees and their token accounting, EAR, all
pinned to the spec's hand-computed numbers (specs/rollout-periodic-async-ftis-ettrl.md §0, §3e)."""

from __future__ import annotations

import pytest
import torch

from rlkit.config import ConfigError, ModelConfig, RLConfig
from rlkit.data import Rollout, RolloutGroup, TrainBatch
from rlkit.envs.arith import ArithEnv
from rlkit.learner.scoring import policy_logprobs
from rlkit.models import load_model, load_tokenizer
from rlkit.objectives import objective_from_config
from rlkit.objectives.ettrl import entropy_gain
from rlkit.plugins import rewards
from rlkit.rollout.engines import HFEngine, Request, Sample, SamplingParams
from rlkit.rollout.tree import TreeShape, fork_positions, grow_trees
from rlkit.validation import validate

EOS = 99


def _vote(answers, **kwargs):
    return rewards.get("majority_vote")(**kwargs)(["q"] * len(answers), answers, group_ids=[0] * len(answers))


# --- TTRL: majority vote -----------------------------------------------------------------------


def test_majority_vote_rewards_agreement_with_the_most_common_answer():
    assert _vote(["5", "5", "3", "5", "7"], extract="stripped") == [1.0, 1.0, 0.0, 1.0, 0.0]
    # ten distinct answers: the tie goes to the first seen
    assert _vote([str(i) for i in range(10)], extract="stripped") == [1.0] + [0.0] * 9


def test_majority_vote_keeps_groups_apart_and_skips_completions_without_an_answer():
    vote = rewards.get("majority_vote")(extract="last_number")
    out = vote(["a"] * 6, ["x=4", "4", "no idea", "the answer is 7", "7.0", "9"], group_ids=[0, 0, 0, 1, 1, 1])
    assert out == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]  # 7 and 7.0 are the same number
    assert vote(["a", "a"], ["none", "here"], group_ids=[0, 0]) == [0.0, 0.0]  # nobody answered


def test_majority_vote_with_math_verify_counts_equal_values_as_agreeing():
    out = _vote(["\\frac{1}{2}", "0.5", "the answer is 1/2", "7", "\\frac{1}{2}"])
    assert out == [1.0, 1.0, 1.0, 0.0, 1.0]


def test_without_group_ids_consecutive_equal_prompts_form_a_group():
    vote = rewards.get("majority_vote")(extract="stripped")
    assert vote(["p", "p", "p", "q", "q"], ["1", "1", "2", "3", "4"]) == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_ttrl_advantages_use_the_unbiased_std_plus_1e6():
    advantages, _ = objective_from_config("ttrl", {}).estimate(torch.tensor([[1.0, 1, 0, 1, 0]]), torch.ones(1, 5))
    expected = torch.tensor([[0.7303, 0.7303, -1.09544, 0.7303, -1.09544]])
    assert torch.allclose(advantages, expected, atol=5e-5)


# --- EAR ---------------------------------------------------------------------------------------


def test_adv_res_scales_each_advantage_by_its_entropy_against_the_group():
    entropy = torch.tensor([[0.4, 0.8, 1.2, 0.6, 1.0]])
    assert torch.allclose(entropy_gain(entropy), torch.tensor([[1.5, 1.0, 0.5, 1.25, 0.75]]))
    advantages, _ = objective_from_config("ettrl", {}).estimate(torch.tensor([[1.0, 1, 0, 1, 0]]), entropy)
    expected = torch.tensor([[1.09544, 0.7303, -0.54772, 0.91287, -0.82158]])
    assert torch.allclose(advantages, expected, atol=5e-5)


def test_adv_res_gain_floor_and_a_certain_group():
    entropy = torch.tensor([[0.1, 0.1, 2.8]])  # mean 1.0: the last gain is 2 - 2.8 = -0.8
    assert entropy_gain(entropy)[0, 2].item() == pytest.approx(-0.8)
    assert entropy_gain(entropy, floor=0.0)[0, 2].item() == 0.0
    assert torch.equal(entropy_gain(torch.zeros(1, 4)), torch.ones(1, 4))  # all certain: plain advantages


def test_adv_clip_bounds_the_lone_agreeing_sample():
    rewards_ = torch.tensor([[1.0] + [0.0] * 9])
    plain, _ = objective_from_config("ttrl", {}).estimate(rewards_, torch.ones(1, 10))
    assert plain[0, 0].item() == pytest.approx(2.84604, abs=5e-5)
    clipped, _ = objective_from_config("ettrl", {"reshaping": "clip"}).estimate(rewards_, torch.ones(1, 10))
    assert clipped[0, 0].item() == pytest.approx(2.0)
    assert clipped[0, 1:].tolist() == pytest.approx([-0.31623] * 9, abs=5e-5)


def test_the_estimator_reads_entropies_of_the_models_tokens_from_the_rollouts():
    def rollout(entropies, reward):
        return Rollout([1] * len(entropies), [0.0] * len(entropies), entropies, "", False, reward=reward)

    group = RolloutGroup(0, "q", [1], {}, [rollout([0.2, 0.6], 1.0), rollout([0.4, 1.2, 0.8], 1.0),
                                           rollout([1.2], 0.0), rollout([0.6, 0.6], 1.0), rollout([1.0], 0.0)], 0)
    objective_from_config("ettrl", {}).assign_advantages([group])
    got = [r.advantage for r in group.rollouts]
    assert got == pytest.approx([1.09544, 0.7303, -0.54772, 0.91287, -0.82158], abs=5e-5)


# --- ETMR: tree shape, fork selection, token accounting ----------------------------------------


def test_tree_sizes_and_the_token_cost_formula():
    shape = TreeShape.for_group(60, forks=2, branches=2)
    assert (shape.roots, shape.group_size, shape.token_ratio) == (12, 60, pytest.approx(0.6))
    shape = TreeShape.for_group(63, forks=3, branches=2)
    assert (shape.roots, shape.token_ratio) == (9, pytest.approx(0.5714, abs=1e-4))


def test_a_group_too_small_for_the_fork_budget_is_refused_by_name():
    config = RLConfig()
    config.rollout.sampler = "entropy_tree"  # N = B = 2: trees of 5 leaves
    config.rollout.num_generations = 8
    with pytest.raises(ConfigError, match=r"num_generations=8 is too small for the fork budget.*multiple of 5"):
        validate(config)
    config.rollout.num_generations = 10
    validate(config)


def test_forks_go_to_the_highest_entropy_positions_but_never_the_final_end_token():
    entropies = [0.05, 1.90, 0.10, 0.02, 1.20, 0.70, 0.01, 2.50]
    root = Sample(list(range(7)) + [EOS], [0.0] * 8, entropies, truncated=False)
    assert fork_positions(root, 2, EOS) == [1, 4]
    short = Sample([5, EOS], [0.0, 0.0], [0.3, 0.9], truncated=False)
    assert fork_positions(short, 3, EOS) == [0, 0, 0]  # one eligible position, then fresh samples
    surprisal = Sample([1, 2, 3, EOS], [-0.1, -2.0, -0.5, -0.1], [0.0] * 4, truncated=False)
    assert fork_positions(surprisal, 1, EOS, kind="surprisal") == [1]


class ScriptedEngine:
    """Roots and branches from a script: the root is ``ROOT``; a branch continuing from fork f
    is ``8 - f`` tokens, the last the end token, so every leaf has 8 tokens."""

    ROOT = [10, 11, 12, 13, 14, 15, 16, EOS]
    ENTROPIES = [0.05, 1.90, 0.10, 0.02, 1.20, 0.70, 0.01, 2.50]
    version = 0

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.requests: list[Request] = []

    def stream(self, requests, params, seed):
        self.requests += requests
        out = []
        for i, request in enumerate(requests):
            fork = len(request.prefix_ids) - self.prompt_length
            if fork == 0 and request.max_new_tokens is None:
                samples = [Sample(list(self.ROOT), [-0.5] * 8, list(self.ENTROPIES), False) for _ in range(request.n)]
            else:
                tail = [20 + fork] * (7 - fork) + [EOS]
                assert len(tail) <= request.limit(params)
                samples = [Sample(list(tail), [-1.0] * len(tail), [0.3] * len(tail), False) for _ in range(request.n)]
            out.append((i, samples))
        yield out


def test_a_tree_reuses_its_prefixes_and_counts_the_tokens_it_samples():
    engine = ScriptedEngine(prompt_length=3)
    shape = TreeShape(roots=1, forks=2, branches=2)
    ((index, tree),) = [item for ended in grow_trees(engine, [[1, 2, 3]], [7], shape,
                                                     SamplingParams(max_new_tokens=8), seed=0, eos_id=EOS)
                        for item in ended]
    assert index == 0 and tree.forks == [[1, 4]]
    # the branch requests continue prompt + root[:1] and prompt + root[:4], B samples each
    prefixes = [r.prefix_ids for r in engine.requests[1:]]
    assert prefixes == [(1, 2, 3, 10), (1, 2, 3, 10, 11, 12, 13)]
    assert [r.n for r in engine.requests[1:]] == [2, 2]
    assert [r.max_new_tokens for r in engine.requests[1:]] == [7, 4]
    assert len(tree.leaves) == 5 and all(len(leaf.completion_ids) == 8 for leaf in tree.leaves)
    assert tree.leaves[1].completion_ids[:1] == [10] and tree.leaves[3].completion_ids[:4] == [10, 11, 12, 13]
    # the prefix keeps the root's log-probs, the rest is the branch's own
    assert tree.leaves[3].logprobs == [-0.5] * 4 + [-1.0] * 4
    assert tree.generated_tokens == 8 + 2 * (8 - 1) + 2 * (8 - 4) == 30  # against 5 x 8 = 40 independent
    assert tree.generated_tokens / 40 == pytest.approx(0.75)
    assert tree.prefill_tokens == (3 + 1) + (3 + 4)


@pytest.fixture(scope="module")
def engine_and_tokenizer():
    config = ModelConfig()
    model, tokenizer = load_model(config, trainable=False), load_tokenizer(config)
    return HFEngine(model, tokenizer, max_batch_sequences=16), tokenizer


def test_real_trees_are_seeded_sized_and_score_like_the_learner(engine_and_tokenizer):
    engine, tokenizer = engine_and_tokenizer
    prompts = [tokenizer(row["prompt"])["input_ids"] for row in ArithEnv().dataset("eval")[:6]]
    shape = TreeShape(roots=2, forks=2, branches=2)
    params = SamplingParams(max_new_tokens=6)

    def trees(seed, keys):
        return dict(item for ended in grow_trees(engine, prompts, keys, shape, params, seed, eos_id=tokenizer.eos_token_id)
                    for item in ended)

    first = trees(3, list(range(6)))
    assert sorted(first) == list(range(6)) and all(len(t.leaves) == 10 for t in first.values())
    again = trees(3, list(range(6)))
    assert all(a.leaves == b.leaves for a, b in zip(first.values(), again.values()))
    assert [l.completion_ids for l in trees(4, list(range(6)))[0].leaves] != [l.completion_ids for l in first[0].leaves]
    for tree in first.values():
        leaves = tree.leaves
        assert tree.generated_tokens < sum(len(l.completion_ids) for l in leaves)
        for m in range(shape.roots):
            root = leaves[m * 5]
            for j, fork in enumerate(tree.forks[m]):
                for b in range(2):
                    leaf = leaves[m * 5 + 1 + j * 2 + b]
                    assert leaf.completion_ids[:fork] == root.completion_ids[:fork]
                    assert len(leaf.completion_ids) <= params.max_new_tokens
    # every leaf's behaviour log-probs are what the learner computes for the whole leaf
    groups = [RolloutGroup(i, "", prompts[i], {}, [Rollout(l.completion_ids, l.logprobs, l.entropies, "", l.truncated)
                                                   for l in first[i].leaves], 0) for i in range(6)]
    batch = TrainBatch.from_groups(groups, tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, _ = policy_logprobs(engine.model, batch, 1.0)
    mask = batch.completion_mask.bool()
    assert (logprobs - batch.behavior_logprobs)[mask].abs().max().item() < 1e-4


# --- label-free runs ---------------------------------------------------------------------------


def test_label_free_training_rows_hold_only_the_prompt_and_need_a_label_free_reward():
    from rlkit.trainer import RLTrainer

    config = RLConfig()
    config.data.label_free = True
    with pytest.raises(ConfigError, match="label-free reward"):
        RLTrainer(args=config)
    config.rewards.funcs = ["majority_vote"]
    trainer = RLTrainer(args=config)
    assert all(set(row) == {"prompt"} for row in trainer.train_rows)
    assert all("answer" in row for row in trainer.eval_rows)
    assert trainer.eval_reward_funcs == [("exact_match", "exact_match")]


class Unreadable:
    """An answer that fails the run if anything reads, compares, prints or ships it."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("the answer column was read in a label-free run")

    __str__ = __repr__ = __eq__ = __hash__ = __reduce__ = __reduce_ex__ = __format__ = _refuse


def _label_free_run(tmp_path, name: str, rows: list[dict]):
    from rlkit.runs import read_metrics
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    config = load_config(None, {"max_steps": "4", "rollout.prompts_per_step": "4", "rollout.num_generations": "10",
                                "data.eval_limit": "20", "output_dir": str(tmp_path / name), "save_steps": "0",
                                "logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false"},
                         recipe="ettrl-arith")
    summary = RLTrainer(args=config, train_dataset=rows).train()
    return summary, read_metrics(tmp_path / name / "metrics.jsonl")


def test_a_label_free_run_never_reads_the_answer_column(tmp_path):
    rows = ArithEnv().dataset("train")[:64]
    poisoned = [{"prompt": row["prompt"], "answer": Unreadable()} for row in rows]
    summary, metrics = _label_free_run(tmp_path, "poisoned", poisoned)
    assert summary["steps"] == 4 and summary["eval_rows"] == 20  # evaluation reads the held-out answers
    _, with_answers = _label_free_run(tmp_path, "answers", rows)
    keys = ("reward_mean", "loss", "entropy", "generated_tokens", "grad_norm")
    assert [[m[k] for k in keys] for m in metrics] == [[m[k] for k in keys] for m in with_answers]
    # the trees were sampled: 10 leaves a prompt for fewer sampled tokens than their lengths
    assert all(m["generated_token_ratio"] < 1.0 for m in metrics)
    assert all(0.0 < m["reward_mean"] <= 1.0 for m in metrics)  # the majority vote scored
