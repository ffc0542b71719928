"""Periodic-async vs sync: the same config, the same seed, one process, side by side.

    python bench/async_vs_sync.py                      # the embedded default, 12 steps
    python bench/async_vs_sync.py --steps 20 --set rollout.num_workers=2

Prints the training-loop wall time of each schedule (start-up and evaluation excluded), the
throughput ratio, how far apart their learning curves are (they should match: both are
on-policy and see the same samples), and the share of each step the learner was busy: overlap
can hide generation behind training, so once that share nears 1 the pipeline is learner-bound
and only a faster learner makes it faster. Writes the figures to
bench/results/async_vs_sync[-LABEL].json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

from rlkit.validation import load_config
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer


def run(schedule: str, steps: int, extra: dict[str, str], out: Path) -> dict:
    config = load_config(None, {"rollout.schedule": schedule, "max_steps": str(steps), "save_steps": "0",
                                "data.eval_limit": "50", "logging.progress": "false", "logging.plot": "false",
                                "output_dir": str(out / schedule), **extra})
    summary = RLTrainer(args=config).train()
    metrics = read_metrics(out / schedule / "metrics.jsonl")
    loop_seconds = sum(m["step_seconds"] for m in metrics)
    return {"summary": summary, "metrics": metrics, "loop_seconds": loop_seconds,
            "tokens": sum(m["tokens_per_second"] * m["step_seconds"] for m in metrics)}


def busy_fraction(metrics: list[dict]) -> float:
    """Learner compute time over wall time, summed over the steps."""
    return sum(m["learner_seconds"] for m in metrics) / sum(m["step_seconds"] for m in metrics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    extra = dict(item.split("=", 1) for item in args.set)
    with tempfile.TemporaryDirectory() as tmp:
        results = {s: run(s, args.steps, extra, Path(tmp)) for s in ("sync", "periodic_async")}
    sync, periodic = results["sync"], results["periodic_async"]
    ratio = sync["loop_seconds"] / periodic["loop_seconds"]
    reward_gap = max(abs(a["reward_mean"] - b["reward_mean"]) for a, b in zip(sync["metrics"], periodic["metrics"]))
    loss_gap = max(abs(a["loss"] - b["loss"]) for a, b in zip(sync["metrics"], periodic["metrics"]))
    report = {
        "steps": args.steps, "overrides": extra, "machine": platform.processor() or platform.machine(),
        "sync_loop_seconds": round(sync["loop_seconds"], 2),
        "periodic_async_loop_seconds": round(periodic["loop_seconds"], 2),
        "throughput_ratio": round(ratio, 3),
        "sync_tokens_per_second": round(sync["tokens"] / sync["loop_seconds"], 1),
        "periodic_async_tokens_per_second": round(periodic["tokens"] / periodic["loop_seconds"], 1),
        "max_reward_mean_gap": reward_gap, "max_loss_gap": loss_gap,
        "sync_step_seconds_median": statistics.median(m["step_seconds"] for m in sync["metrics"]),
        "periodic_step_seconds_median": statistics.median(m["step_seconds"] for m in periodic["metrics"]),
        "sync_learner_busy_fraction": round(busy_fraction(sync["metrics"]), 3),
        "periodic_async_learner_busy_fraction": round(busy_fraction(periodic["metrics"]), 3),
    }
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / f"async_vs_sync{'-' + args.label if args.label else ''}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"\nperiodic_async is {ratio:.2f}x the throughput of sync "
          f"(same samples: max reward gap {reward_gap:.2e}, max loss gap {loss_gap:.2e})")


if __name__ == "__main__":
    main()
