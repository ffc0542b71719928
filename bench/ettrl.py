"""ETTRL on arith: majority-vote accuracy and generated tokens of entropy-forked trees against flat
sampling, and label-free training (TTRL against ETTRL).

    python bench/ettrl.py vote                        # trees vs flat sampling, no training (~1 min)
    python bench/ettrl.py vote --model runs/x/final   # the same for another model
    python bench/ettrl.py train --steps 60            # label-free runs: ttrl (flat) vs ettrl (trees + EAR)

``vote``: for each held-out prompt, 60 responses as trees (M=12 roots, N=2 forks, B=2 branches;
and M=9, N=3, B=2 for 63) and as flat samples; the majority answer is compared with the true
answer (read here only, to measure). It prints the majority-vote accuracy, the tokens each
sampler generated, the measured token ratio against the spec's (1 + NB/2)/(1 + NB), and the
fewest flat samples whose majority is as accurate as the trees'.

``train``: label-free training on the held-out prompts themselves (test-time RL: the prompts are
the test set, the answers are never read in training), from the bundled model and from a model
first trained with labels on the train split (``--warm-start``); greedy pass rate before and after.

Writes ``bench/results/ettrl-vote.json`` / ``ettrl-train.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rlkit.config import RLConfig
from rlkit.rollout.engines import Request, SamplingParams, generate
from rlkit.rollout.tree import TreeShape, grow_trees

QUIET = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false", "save_steps": "0"}
FLAT_GRID = (1, 2, 4, 6, 8, 12, 16, 20, 24, 30, 36, 40, 48, 60)


def _engine_and_rows(model: str, rows_limit: int):
    from rlkit.envs.arith import ArithEnv
    from rlkit.models import load_model, load_tokenizer
    from rlkit.rollout.engines import HFEngine

    config = RLConfig()
    config.model.name_or_path = model
    tokenizer = load_tokenizer(config.model)
    engine = HFEngine(load_model(config.model, trainable=False), tokenizer, max_batch_sequences=512)
    return engine, tokenizer, ArithEnv().dataset("eval")[:rows_limit]


def _majority_correct(texts: list[str], answer: str, extract: str) -> bool:
    """Whether the majority answer (as the majority_vote reward reads answers) is the true one."""
    from rlkit.rewards.majority_vote import MajorityVoteReward, vote as majority

    reader = MajorityVoteReward(extract=extract)
    return majority([reader.answer(t) for t in texts]) == reader.answer(str(answer))


def vote(model: str, rows_limit: int, temperature: float, seed: int, extract: str = "stripped",
         max_new_tokens: int = 8) -> dict:
    engine, tokenizer, rows = _engine_and_rows(model, rows_limit)
    prompts = [tokenizer(r["prompt"])["input_ids"] for r in rows]
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)
    decode = lambda sample: tokenizer.decode(sample.completion_ids, skip_special_tokens=True)  # noqa: E731
    flat = generate(engine, [Request.of(p, max(FLAT_GRID), key=i) for i, p in enumerate(prompts)], params, seed)
    flat_texts = [[decode(s) for s in samples] for samples in flat]
    report = {"model": model, "prompts": len(rows), "temperature": temperature, "extract": extract,
              "max_new_tokens": max_new_tokens, "flat": {}, "trees": {}}
    for k in FLAT_GRID:  # the first k samples of each prompt
        report["flat"][k] = {
            "majority_accuracy": statistics.fmean(_majority_correct(t[:k], r["answer"], extract) for t, r in zip(flat_texts, rows)),
            "generated_tokens": sum(len(s.completion_ids) for samples in flat for s in samples[:k])}
    for forks, branches, roots in ((2, 2, 12), (3, 2, 9)):
        shape = TreeShape(roots=roots, forks=forks, branches=branches)
        trees = dict(item for ended in grow_trees(engine, prompts, list(range(len(prompts))), shape, params, seed,
                                                  eos_id=tokenizer.eos_token_id) for item in ended)
        leaves = [[decode(s) for s in trees[i].leaves] for i in range(len(prompts))]
        accuracy = statistics.fmean(_majority_correct(t, r["answer"], extract) for t, r in zip(leaves, rows))
        generated = sum(t.generated_tokens for t in trees.values())
        leaf_tokens = sum(len(s.completion_ids) for t in trees.values() for s in t.leaves)
        flat_same = report["flat"][shape.group_size] if shape.group_size in report["flat"] else None
        as_good = [k for k in FLAT_GRID if report["flat"][k]["majority_accuracy"] >= accuracy]
        needed = as_good[0] if as_good else None
        report["trees"][f"M{roots}N{forks}B{branches}"] = {
            "leaves": shape.group_size, "majority_accuracy": accuracy, "generated_tokens": generated,
            "leaf_tokens": leaf_tokens, "measured_token_ratio": generated / leaf_tokens,
            "formula_token_ratio": shape.token_ratio,
            "prefill_tokens": sum(t.prefill_tokens for t in trees.values()),
            "mean_fork_position": statistics.fmean(f for t in trees.values() for fs in t.forks for f in fs),
            "mean_leaf_length": leaf_tokens / (shape.group_size * len(rows)),
            "flat_same_count_accuracy": None if flat_same is None else flat_same["majority_accuracy"],
            "fewest_flat_samples_as_accurate": needed,
            "tokens_vs_that_flat": None if needed is None else generated / report["flat"][needed]["generated_tokens"],
        }
    return report


def train(steps: int, warm_start_steps: int, seed: int) -> dict:
    from rlkit.envs.arith import ArithEnv
    from rlkit.trainer import RLTrainer
    from rlkit.validation import load_config

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "held_out_prompts.jsonl"
        with prompts.open("w") as f:  # the test set's prompts; label_free drops the answers on load
            for row in ArithEnv().dataset("eval"):
                f.write(json.dumps(row) + "\n")
        starts = {"bundled": "tiny-arith"}
        if warm_start_steps:
            warm = Path(tmp) / "warm"
            RLTrainer(args=load_config(None, {**QUIET, "max_steps": str(warm_start_steps), "seed": str(seed),
                                              "output_dir": str(warm)})).train()
            starts[f"grpo-{warm_start_steps}-steps"] = str(warm / "final")
        variants = {"ttrl (flat)": {"objective.name": "ttrl", "rollout.sampler": "flat"},
                    "ettrl (trees + EAR)": {"objective.name": "ettrl", "rollout.sampler": "entropy_tree"}}
        for start, model in starts.items():
            for label, overrides in variants.items():
                run_dir = Path(tmp) / f"{start}-{label.split()[0]}"
                config = load_config(None, {**QUIET, "max_steps": str(steps), "seed": str(seed),
                                            "model.name_or_path": model, "data.train_file": str(prompts),
                                            "output_dir": str(run_dir), **overrides}, recipe="ettrl-arith")
                summary = RLTrainer(args=config).train()
                results[f"{start} / {label}"] = {k: summary[k] for k in ("eval_pass_rate_before", "eval_pass_rate_after")}
                print(f"{start:18s} {label:22s} greedy {summary['eval_pass_rate_before']:.3f} -> "
                      f"{summary['eval_pass_rate_after']:.3f}", flush=True)
    return {"steps": steps, "seed": seed, "runs": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("vote", "train"))
    parser.add_argument("--model", default="tiny-arith")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--extract", choices=("stripped", "last_number"), default="stripped",
                        help="how answers are read for the vote (last_number for a model that restates the problem)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warm-start", type=int, default=300, help="GRPO steps of the second starting model (0: none)")
    args = parser.parse_args()
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    if args.mode == "vote":
        report = vote(args.model, args.rows, args.temperature, args.seed, args.extract, args.max_new_tokens)
        for k in (12, 20, 36, 60):
            f = report["flat"][k]
            print(f"flat {k:2d} samples: majority accuracy {f['majority_accuracy']:.3f}, {f['generated_tokens']} tokens")
        for name, t in report["trees"].items():
            print(f"trees {name} ({t['leaves']} leaves): majority accuracy {t['majority_accuracy']:.3f} "
                  f"(flat {t['leaves']}: {t['flat_same_count_accuracy']}), {t['generated_tokens']} tokens; token ratio "
                  f"measured {t['measured_token_ratio']:.3f} vs formula {t['formula_token_ratio']:.3f} (mean fork "
                  f"at {t['mean_fork_position']:.2f} of {t['mean_leaf_length']:.2f} tokens); fewest flat samples as "
                  f"accurate: {t['fewest_flat_samples_as_accurate']}, tokens vs those: {_fmt(t['tokens_vs_that_flat'])}")
        suffix = "" if args.model == "tiny-arith" and args.temperature == 1.0 else f"-{Path(args.model).name}-t{args.temperature}"
        path = out / f"ettrl-vote{suffix}.json"
    else:
        report = train(args.steps, args.warm_start, args.seed)
        path = out / f"ettrl-train{'' if args.seed == 0 else f'-seed{args.seed}'}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
