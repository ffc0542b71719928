"""What any engine must do for rlkit, as a check a plugin's author can run on their engine.

    from rlkit.rollout.engines.conformance import check_engine
    check_engine(MyEngine.from_config(config, device), tokenizer, reference_model)

``reference_model`` is the transformers model with the engine's weights (what the learner scores
with). The checks, each failing with a message that says what is wrong:

1. the stream yields every request once, with ``n`` samples each, within ``max_new_tokens``, the
   end token only as the last token, ``truncated`` exactly when it is missing;
2. samples depend on (seed, request key, sample index) only: a request alone gives the same
   samples as in company, another key or seed gives others;
3. behaviour log-probs (and entropies) equal the learner's recomputation, within ``tolerance``;
4. greedy decoding gives the reference model's greedy tokens;
5. ``load_weights`` changes what is sampled and ``version`` reports the version given.
"""

from __future__ import annotations

import torch

from rlkit.rollout.engines.base import Engine, Request, SamplingParams, generate

PROMPTS = ["12+7=", "3+4=", "20+22=", "5+9=", "31+8=", "40+2="]


def check_engine(engine: Engine, tokenizer, reference_model, *, tolerance: float = 1e-4) -> None:
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    params = SamplingParams(max_new_tokens=8, temperature=1.5)
    requests = [Request.of(p, 3, key=10 + i) for i, p in enumerate(prompts)]
    _check_stream(engine, requests, params, tokenizer.eos_token_id)
    together = generate(engine, requests, params, seed=7)
    alone = generate(engine, [requests[2]], params, seed=7)[0]
    assert _ids(alone) == _ids(together[2]), "a request's samples changed with the requests batched beside it"
    assert _ids(generate(engine, [Request.of(prompts[2], 3, key=99)], params, seed=7)[0]) != _ids(alone) or \
        _ids(generate(engine, [requests[2]], params, seed=8)[0]) != _ids(alone), "samples ignore the key and seed"
    _check_logprobs(together, requests, reference_model, tokenizer, params.temperature, tolerance)
    _check_greedy(engine, prompts, reference_model, tokenizer)
    _check_weights(engine, reference_model, requests, params)


def _ids(samples) -> list[list[int]]:
    return [s.completion_ids for s in samples]


def _check_stream(engine, requests, params, eos: int) -> None:
    seen = []
    for ended in engine.stream(requests, params, seed=3):
        assert ended, "the stream yielded an empty list"
        for index, samples in ended:
            seen.append(index)
            assert len(samples) == requests[index].n, f"request {index}: {len(samples)} samples, not {requests[index].n}"
            for s in samples:
                assert 1 <= len(s.completion_ids) <= params.max_new_tokens, "a sample is empty or too long"
                assert eos not in s.completion_ids[:-1], "the end token inside a sample"
                assert s.truncated == (s.completion_ids[-1] != eos), "truncated is wrong"
                assert len(s.logprobs) == len(s.entropies) == len(s.completion_ids), "log-probs or entropies missing"
    assert sorted(seen) == list(range(len(requests))), "the stream did not yield every request exactly once"


def _check_logprobs(outs, requests, model, tokenizer, temperature: float, tolerance: float) -> None:
    from rlkit.data import Rollout, RolloutGroup, TrainBatch
    from rlkit.learner.scoring import policy_logprobs

    groups = [RolloutGroup(i, "", list(r.prefix_ids), {},
                           [Rollout(s.completion_ids, s.logprobs, s.entropies, "", s.truncated) for s in g], 0)
              for i, (r, g) in enumerate(zip(requests, outs))]
    batch = TrainBatch.from_groups(groups, tokenizer.pad_token_id)
    with torch.no_grad():
        logprobs, entropy = policy_logprobs(model, batch, temperature, with_entropy=True)
    mask = batch.completion_mask.bool()
    gap = (logprobs - batch.behavior_logprobs)[mask].abs().max().item()
    assert gap < tolerance, f"behaviour log-probs differ from the learner's by {gap:.2e} (tolerance {tolerance:g})"
    recorded = torch.zeros_like(entropy)
    for row, rollout in enumerate(r for g in groups for r in g.rollouts):
        recorded[row, :len(rollout.entropies)] = torch.tensor(rollout.entropies)
    gap = (entropy - recorded)[mask].abs().max().item()
    assert gap < tolerance, f"entropies differ from the learner's by {gap:.2e}"


def _check_greedy(engine, prompts, model, tokenizer) -> None:
    outs = generate(engine, [Request.of(p, 1, key=i) for i, p in enumerate(prompts)],
                    SamplingParams(max_new_tokens=8, greedy=True), seed=0)
    for prompt, (sample,) in zip(prompts, outs):
        ids = torch.tensor([prompt], device=next(model.parameters()).device)
        with torch.no_grad():
            ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        if tokenizer.eos_token_id in ref:
            ref = ref[:ref.index(tokenizer.eos_token_id) + 1]
        assert sample.completion_ids == ref, f"greedy {sample.completion_ids} != transformers' {ref}"


def _check_weights(engine, model, requests, params) -> None:
    before = _ids(generate(engine, requests[:2], params, seed=5)[0])
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shaken = {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    engine.load_weights(shaken, 41)
    assert engine.version == 41, "version does not report the version loaded"
    after = _ids(generate(engine, requests[:2], params, seed=5)[0])
    engine.load_weights(state, 0)
    assert after != before, "load_weights did not change what is sampled"
