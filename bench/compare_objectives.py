"""Train several objectives on the same config and budget, one after another, and compare them.

    python bench/compare_objectives.py grpo gbpo --steps 300 --label gbpo
    python bench/compare_objectives.py grpo aepo:target_entropy=0.6 --label aepo
    python bench/compare_objectives.py grpo bapo --set rollout.max_staleness=4 --label bapo
    python bench/compare_objectives.py grpo dph:divergence=forward_kl dph:divergence=js --pass-at 8 --label dph
    python bench/compare_objectives.py trloo trloo:baseline=group_mean,scale_by_std=true grpo \
        --set env.name=arith_retry --steps 150 --label trloo      # multi-turn: TRLOO vs GRPO-style

A variant is ``OBJECTIVE[:param=value,...]`` (objective params, as ``--objective.param``). Every
variant gets the same seed, data, model and step budget. For each the script reports the greedy
pass rate before and after, sampled pass@1 / pass@k of the final model (and of the initial
model, once), the mean entropy over the first and second halves of the run, and the largest
step-to-step entropy drop. It writes ``bench/results/objectives[-LABEL].json`` and a PNG of the
reward and entropy curves next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rlkit.validation import load_config
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer

QUIET = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false", "save_steps": "0"}


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    name, _, params = text.partition(":")
    overrides = {"objective.name": name}
    for item in filter(None, params.split(",")):
        key, _, value = item.partition("=")
        overrides[f"objective.{key}"] = value
    return text, overrides


def run_variant(label: str, overrides: dict[str, str], common: dict[str, str], out: Path, pass_at: int) -> dict:
    run_dir = out / label.replace(":", "_").replace(",", "_").replace("=", "-")
    config = load_config(None, {**QUIET, **common, **overrides, "output_dir": str(run_dir)})
    summary = RLTrainer(args=config).train()
    metrics = read_metrics(run_dir / "metrics.jsonl")
    final = load_config(None, {**QUIET, **common, **overrides, "model.name_or_path": str(run_dir / "final")})
    passes = RLTrainer(args=final).pass_at_k(ks=(1, pass_at), num_samples=2 * pass_at)
    half = len(metrics) // 2
    entropy = [m["entropy"] for m in metrics]
    return {
        "overrides": overrides,
        "eval_pass_rate_before": summary["eval_pass_rate_before"],
        "eval_pass_rate_after": summary["eval_pass_rate_after"],
        "pass@1": passes["pass@1"], f"pass@{pass_at}": passes[f"pass@{pass_at}"],
        "entropy_first_half": statistics.fmean(entropy[:half]),
        "entropy_second_half": statistics.fmean(entropy[half:]),
        "entropy_final": entropy[-1],
        "max_entropy_drop": max((a - b for a, b in zip(entropy, entropy[1:])), default=0.0),
        "reward_last_20": statistics.fmean(m["reward_mean"] for m in metrics[-20:]),
        "loop_seconds": round(sum(m["step_seconds"] for m in metrics), 1),
        "curves": {key: [m.get(key) for m in metrics] for key in
                   ("reward_mean", "entropy", *sorted(k for k in metrics[-1] if k.startswith(overrides["objective.name"])))},
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for label, result in results.items():
        for ax, key in zip(axes, ("reward_mean", "entropy")):
            ax.plot(result["curves"][key], label=label, linewidth=1)
    for ax, key in zip(axes, ("sampled reward", "policy entropy (nats/token)")):
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+", help="OBJECTIVE[:param=value,...]")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for all")
    parser.add_argument("--pass-at", type=int, default=8, help="k of the sampled pass@k")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    common = {"max_steps": str(args.steps), **dict(item.split("=", 1) for item in args.set)}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        initial = RLTrainer(args=load_config(None, {**QUIET, **common})).pass_at_k(
            ks=(1, args.pass_at), num_samples=2 * args.pass_at)
        for text in args.variants:
            label, overrides = parse_variant(text)
            results[label] = run_variant(label, overrides, common, Path(tmp), args.pass_at)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stem = f"objectives{'-' + args.label if args.label else ''}"
    report = {"steps": args.steps, "common_overrides": common, "initial_model": initial, "variants": results}
    (out / f"{stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(results, out / f"{stem}.png")
    print(f"initial model: pass@1 {initial['pass@1']:.3f}  pass@{args.pass_at} {initial[f'pass@{args.pass_at}']:.3f}")
    for label, r in results.items():
        print(f"{label:32s} greedy {r['eval_pass_rate_before']:.3f} -> {r['eval_pass_rate_after']:.3f}  "
              f"pass@1 {r['pass@1']:.3f}  pass@{args.pass_at} {r[f'pass@{args.pass_at}']:.3f}  "
              f"entropy {r['entropy_first_half']:.3f} -> {r['entropy_second_half']:.3f}  "
              f"({r['loop_seconds']} s)")
    print(f"wrote {out / stem}.json and .png")


if __name__ == "__main__":
    main()
