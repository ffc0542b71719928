"""F-TIS: does a collaborator running another model help the local model, per token it generates?

    python bench/ftis.py                       # 3 seeds x 4 variants, 150 steps each (about 10 min on 2 CPUs)
    python bench/ftis.py --seeds 0 --steps 60  # a quick look

Every variant trains ``tiny-arith`` on the same local budget: 16 prompts x 12 completions a step,
sampled by its own rollout worker. What differs is what joins each step:

* ``alone``: nothing (on-policy; the ``ftis`` objective then weighs only its own samples, w ~ 1);
* ``ftis+2l``: 16 more groups a step from a collaborator running ``tiny-arith-2l`` (2 layers, its
  own warm start, same tokenizer), weighed and filtered by F-TIS;
* ``nois+2l``: the same shared groups trained as if on-policy (``grpo``, no weights, no filter:
  the paper's NoIS baseline);
* ``ftis+untrained``: a collaborator running a random-init copy of tiny-arith (made here): badly
  mismatched, its samples should be dropped by the filter and not hurt;
* ``swarm (2l learns too)``: as ``ftis+2l``, but the collaborator is a swarm peer with its own
  learner, trained on its groups and on the local model's; its final greedy pass rate is printed.

Greedy pass rate on the held-out split is measured every ``--eval-every`` steps; the x axis of
the figure is the tokens the *local* model generated. Writes ``bench/results/ftis.json`` and
``ftis.png``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer
from rlkit.validation import load_config

QUIET = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false", "save_steps": "0"}


def untrained_copy(folder: Path) -> Path:
    """tiny-arith's architecture and tokenizer with fresh random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlkit.models import resolve_model_path

    source = resolve_model_path("tiny-arith")
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    return folder


def variants(untrained: Path) -> dict[str, dict[str, str]]:
    def collaborator(model: str, learn: bool = False) -> str:
        return json.dumps([{"name": "peer", "model": model, "prompts_per_step": 16, "learn": learn}])

    return {
        "alone": {"objective.name": "ftis"},
        "ftis+2l": {"objective.name": "ftis", "rollout.collaborators": collaborator("tiny-arith-2l")},
        "nois+2l": {"objective.name": "grpo", "rollout.collaborators": collaborator("tiny-arith-2l")},
        "ftis+untrained": {"objective.name": "ftis", "rollout.collaborators": collaborator(str(untrained))},
        "swarm (2l learns too)": {"objective.name": "ftis",
                                  "rollout.collaborators": collaborator("tiny-arith-2l", learn=True)},
    }


def run(label: str, overrides: dict[str, str], common: dict[str, str], out: Path) -> dict:
    run_dir = out / label
    config = load_config(None, {**QUIET, **common, **overrides, "output_dir": str(run_dir)})
    summary = RLTrainer(args=config).train()
    metrics = read_metrics(run_dir / "metrics.jsonl")
    tokens, curve = 0, [(0, summary["eval_pass_rate_before"])]
    for m in metrics:
        tokens += m["generated_tokens"]
        if "eval_pass_rate" in m:
            curve.append((tokens, m["eval_pass_rate"]))
    curve.append((tokens, summary["eval_pass_rate_after"]))
    shared = [m for m in metrics if "ftis_shared_kept" in m]
    peer_after = None
    if (run_dir / "final-peer").is_dir():  # a swarm peer's own model, trained beside the local one
        peer = load_config(None, {**QUIET, **common, **overrides, "model.name_or_path": str(run_dir / "final-peer"),
                                  "rollout.collaborators": "[]"})
        peer_after = RLTrainer(args=peer).evaluate()["pass_rate"]
    return {
        "eval_pass_rate_before": summary["eval_pass_rate_before"],
        "eval_pass_rate_after": summary["eval_pass_rate_after"],
        "local_generated_tokens": tokens,
        "curve": curve,
        "area_under_curve": statistics.fmean(rate for _, rate in curve),
        "shared_kept": statistics.fmean(m["ftis_shared_kept"] for m in shared) if shared else None,
        "weight_mean": statistics.fmean(m["ftis_weight_mean"] for m in shared) if shared else None,
        "divergence_mean": statistics.fmean(m["ftis_divergence_mean"] for m in shared) if shared else None,
        "shared_reward_mean": statistics.fmean(m["shared_reward_mean"] for m in metrics if "shared_reward_mean" in m)
        if any("shared_reward_mean" in m for m in metrics) else None,
        "loop_seconds": round(sum(m["step_seconds"] for m in metrics), 1),
        "peer_eval_pass_rate_after": peer_after,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, by_seed in results.items():
        curves = list(by_seed.values())
        xs = [x for x, _ in curves[0]["curve"]]
        ys = [statistics.fmean(c["curve"][i][1] for c in curves) for i in range(len(xs))]
        ax.plot(xs, ys, marker="o", markersize=3, label=f"{label} (mean of {len(curves)} seeds)")
    ax.set_xlabel("tokens generated by the local model")
    ax.set_ylabel("held-out greedy pass rate")
    ax.set_title("F-TIS on arith: tiny-arith with a collaborator")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", help="run only these variants")
    parser.add_argument("--label", default="", help="suffix of the results files (bench/results/ftis-LABEL.json)")
    args = parser.parse_args()
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        untrained = untrained_copy(Path(tmp) / "untrained")
        for label, overrides in variants(untrained).items():
            if args.only and label not in args.only:
                continue
            for seed in args.seeds:
                common = {"max_steps": str(args.steps), "eval_steps": str(args.eval_every), "seed": str(seed)}
                result = run(f"{label}-seed{seed}", {**_recipe(), **overrides}, common, Path(tmp))
                results.setdefault(label, {})[str(seed)] = result
                print(f"{label:16s} seed {seed}: greedy {result['eval_pass_rate_before']:.3f} -> "
                      f"{result['eval_pass_rate_after']:.3f}, mean over the curve {result['area_under_curve']:.3f}, "
                      f"shared kept {_fmt(result['shared_kept'])}, w {_fmt(result['weight_mean'])}, "
                      f"D {_fmt(result['divergence_mean'])}, peer after {_fmt(result['peer_eval_pass_rate_after'])} "
                      f"({result['loop_seconds']} s)", flush=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    stem = f"ftis{'-' + args.label if args.label else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"steps": args.steps, "variants": results}, indent=1) + "\n")
    plot(results, out / f"{stem}.png")
    print("\nvariant           after (mean of seeds)   mean over the curve   shared kept")
    for label, by_seed in results.items():
        runs = list(by_seed.values())
        kept = [r["shared_kept"] for r in runs if r["shared_kept"] is not None]
        print(f"{label:16s}  {statistics.fmean(r['eval_pass_rate_after'] for r in runs):.3f}"
              f"                  {statistics.fmean(r['area_under_curve'] for r in runs):.3f}"
              f"                 {_fmt(statistics.fmean(kept) if kept else None)}")
    print(f"wrote {out / stem}.json and .png")


def _recipe() -> dict[str, str]:
    """The ftis-arith recipe's settings, without its collaborator (each variant sets its own)."""
    return {"rollout.num_generations": "12", "rollout.prompts_per_step": "16", "rollout.collaborators": "[]"}


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
