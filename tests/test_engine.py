"""The generation engine: greedy equals transformers' generate; samples depend on seed, request and
index only, not on batching; behaviour log-probs equal the learner's; memory stays O(rows x V)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from rlkit import plugins
from rlkit.config import ModelConfig, RLConfig
from rlkit.data import Rollout, RolloutGroup, TrainBatch
from rlkit.envs.arith import ArithEnv
from rlkit.learner.scoring import policy_logprobs
from rlkit.models import load_model, load_tokenizer
from rlkit.rollout.engines import Engine, HFEngine, Request, SamplingParams, generate
from rlkit.rollout.engines.sampling import sample_next


@pytest.fixture(scope="module")
def model_and_tokenizer():
    config = ModelConfig()
    return load_model(config, trainable=False), load_tokenizer(config)


@pytest.fixture(scope="module")
def prompts(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    return [tokenizer(row["prompt"])["input_ids"] for row in ArithEnv().dataset("eval")[:32]]


def test_the_hf_engine_is_registered_and_meets_the_protocol(model_and_tokenizer):
    assert plugins.engines.get("hf") is HFEngine
    assert isinstance(HFEngine(*model_and_tokenizer), Engine)


def test_greedy_output_equals_transformers_generate(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    # 5 rows at a time: requests wait, join as others finish, and the cache is compacted and re-aligned
    engine = HFEngine(model, tokenizer, max_batch_sequences=5)
    outs = generate(engine, [Request.of(p, 1, key=i) for i, p in enumerate(prompts)],
                    SamplingParams(max_new_tokens=8, greedy=True), seed=0)
    for prompt, (sample,) in zip(prompts, outs):
        ids = torch.tensor([prompt])
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        if tokenizer.eos_token_id in ref:
            ref = ref[:ref.index(tokenizer.eos_token_id) + 1]
        assert sample.completion_ids == ref
        assert sample.truncated == (tokenizer.eos_token_id not in ref)


SETTINGS = {"one batch": {}, "5 rows": {"max_batch_sequences": 5}, "20 rows": {"max_batch_sequences": 20},
            "token budget": {"max_batch_tokens": 400}}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_every_engine_setting_gives_the_same_samples_and_the_learners_log_probs(model_and_tokenizer, prompts,
                                                                                setting):
    model, tokenizer = model_and_tokenizer
    requests = [Request.of(p, 4, key=i) for i, p in enumerate(prompts)]
    params = SamplingParams(max_new_tokens=8, temperature=1.3)
    reference = generate(HFEngine(model, tokenizer), requests, params, seed=11)
    outs = generate(HFEngine(model, tokenizer, **SETTINGS[setting]), requests, params, seed=11)
    assert [[s.completion_ids for s in g] for g in outs] == [[s.completion_ids for s in g] for g in reference]
    lengths = {len(s.completion_ids) for g in outs for s in g}
    assert len(lengths) > 2  # samples of many lengths: requests finish at different steps
    groups = [RolloutGroup(i, "", list(r.prefix_ids), {}, [Rollout(s.completion_ids, s.logprobs, s.entropies, "",
                                                                     s.truncated) for s in g], 0)
              for i, (r, g) in enumerate(zip(requests, outs))]
    batch = TrainBatch.from_groups(groups, tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, entropy = policy_logprobs(model, batch, params.temperature, with_entropy=True)
    mask = batch.completion_mask.bool()
    assert (logprobs - batch.behavior_logprobs)[mask].abs().max() < 1e-4
    recorded = torch.zeros_like(entropy)
    for i, rollout in enumerate(r for g in groups for r in g.rollouts):
        recorded[i, :len(rollout.entropies)] = torch.tensor(rollout.entropies)
    assert (entropy - recorded)[mask].abs().max() < 1e-4


def test_samples_depend_on_the_seed_and_the_request_key_not_on_the_batch(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine, params = HFEngine(model, tokenizer), SamplingParams(max_new_tokens=8, temperature=1.5)
    both = generate(engine, [Request.of(prompts[0], 6, key=3), Request.of(prompts[1], 6, key=4)], params, seed=1)
    alone = generate(engine, [Request.of(prompts[1], 6, key=4)], params, seed=1)
    assert [s.completion_ids for s in alone[0]] == [s.completion_ids for s in both[1]]
    other_key = generate(engine, [Request.of(prompts[1], 6, key=5)], params, seed=1)
    other_seed = generate(engine, [Request.of(prompts[1], 6, key=4)], params, seed=2)
    for changed in (other_key, other_seed):
        assert [s.completion_ids for s in changed[0]] != [s.completion_ids for s in alone[0]]


def test_the_stream_yields_each_request_when_its_last_sample_ends(model_and_tokenizer, prompts):
    model, tokenizer = model_and_tokenizer
    engine = HFEngine(model, tokenizer)  # all start together, so each ends when its longest sample does
    requests = [Request.of(p, 3, key=i) for i, p in enumerate(prompts[:12])]
    longest_seen = 0
    order = []
    for ended in engine.stream(requests, SamplingParams(max_new_tokens=24, temperature=2.0), seed=0):
        for index, samples in ended:
            assert len(samples) == 3
            longest = max(len(s.completion_ids) for s in samples)
            assert longest >= longest_seen  # a request ends when its longest sample does
            longest_seen = longest
            order.append(index)
    assert sorted(order) == list(range(12)) and order != sorted(order)  # in the order they ended


def test_sampling_reports_the_distribution_it_drew_from():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    u = torch.tensor([0.999])
    # top-k 2 at temperature 0.5: logits 4, 2 -> p = softmax([4, 2]) = [0.8808, 0.1192]
    token, logp, entropy = sample_next(logits, SamplingParams(8, temperature=0.5, top_k=2), u)
    p = torch.softmax(torch.tensor([4.0, 2.0]), dim=0)
    assert token.item() == 1 and logp.item() == pytest.approx(p[1].log().item(), abs=1e-6)
    assert entropy.item() == pytest.approx(-(p * p.log()).sum().item(), abs=1e-6)
    # top-p 0.5: the most likely token alone has 0.64 of the mass at temperature 1, so it is the nucleus
    token, logp, entropy = sample_next(logits, SamplingParams(8, top_p=0.5), u)
    assert token.item() == 0 and logp.item() == pytest.approx(0.0) and entropy.item() == pytest.approx(0.0)
    # u below the first token's mass picks it; u just above picks the next
    first = torch.softmax(logits, dim=-1)[0, 0].item()
    for value, expected in ((first - 1e-3, 0), (first + 1e-3, 1)):
        assert sample_next(logits, SamplingParams(8), torch.tensor([value]))[0].item() == expected


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from rlkit.config import ModelConfig
    from rlkit.models import load_model, load_tokenizer
    from rlkit.rollout.engines import HFEngine, Request, SamplingParams, generate
    config = ModelConfig(name_or_path=sys.argv[1], dtype="float32")
    model, tokenizer = load_model(config, trainable=False), load_tokenizer(config)
    engine = HFEngine(model, tokenizer)
    requests = [Request.of(tokenizer(f"{i}+{2 * i}=")["input_ids"], 8, key=i) for i in range(32)]
    generate(engine, requests[:2], SamplingParams(max_new_tokens=4), seed=0)  # kernels and allocator warm
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    out = generate(engine, requests, SamplingParams(max_new_tokens=256), seed=0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"extra": peak - before, "tokens": sum(len(s.completion_ids) for g in out for s in g)}))
""")


@pytest.mark.slow
def test_256_completions_of_256_tokens_at_a_32k_vocabulary_never_hold_n_t_v_logits(tmp_path):
    from rlkit.shape_models import make_shape_model

    folder = make_shape_model(tmp_path / "model", "small", dtype="float32")
    out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder)], capture_output=True, text=True,
                         timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    rows, vocab, steps = 256, 32_000, 256
    assert measured["tokens"] > 0.9 * rows * steps  # random weights rarely end early: the full work
    # The bound. Keeping the [N, T, V] logits in fp32, as generate(output_scores=True) does, is
    # rows x steps x vocab x 4 B = 8.4 GB. The engine's live set is a handful of fp32 [rows, V]
    # tensors at a time (logits, log-probs, probs/cdf, a product: 33 MB each) plus the KV cache
    # (2 layers x K and V x 256 rows x 2 heads x 32 dims x 270 positions x 4 B = 35 MB, twice while
    # a step appends to it). 12 [rows, V] tensors + 2 caches + 100 MB of allocator slack = 570 MB:
    # 1/15 of the [N, T, V] scores.
    bound = 12 * rows * vocab * 4 + 2 * (2 * 2 * rows * 2 * 32 * 270 * 4) + 100 * 2**20
    assert measured["extra"] < bound, f"{measured['extra'] / 2**20:.0f} MB > {bound / 2**20:.0f} MB"


def test_the_conformance_check_passes_for_the_hf_engine_and_catches_a_broken_one(model_and_tokenizer):
    from rlkit.rollout.engines.conformance import check_engine

    model, tokenizer = model_and_tokenizer
    check_engine(HFEngine(model, tokenizer, max_batch_sequences=4), tokenizer, model)

    class OffByAToken(HFEngine):  # reports log-probs of the wrong distribution
        def stream(self, requests, params, seed):
            for ended in super().stream(requests, params, seed):
                for _, samples in ended:
                    for s in samples:
                        s.logprobs = [lp - 0.01 for lp in s.logprobs]
                yield ended

    with pytest.raises(AssertionError, match="behaviour log-probs differ from the learner's"):
        check_engine(OffByAToken(model, tokenizer), tokenizer, model)
