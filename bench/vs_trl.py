"""rlkit against TRL's GRPOTrainer on the same work: same model, reward, prompts and shape, one after
the other in one process.

    python bench/vs_trl.py --shape tiny              # the bundled model, rlkit's default config, CPU
    python bench/vs_trl.py --shape 0.5b --small      # 4M parameters, 32k vocabulary, 32-token completions: CPU
    python bench/vs_trl.py --shape 0.5b              # Qwen2.5-0.5B's shape, 256-token completions: a GPU

Every step is 32 prompts x 8 completions. TRL runs with its defaults (HF generate over the whole
generation batch, gradient checkpointing on) apart from what defines the work (batch, lengths,
temperature 1, learning rate, no KL). rlkit runs ``sync`` and ``periodic_async``. Printed and
written to ``bench/results/vs_trl-<shape>.json``: seconds a step and generated tokens a second
(the first step, warm-up, left out), the reward, each process's peak memory, and the ratios.
TRL runs first, so the process's peak memory is TRL's (rlkit's driver holds no model).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import resource
import statistics
import tempfile
import time
import zlib
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def hash_reward(prompts, completions, **kwargs):
    """Scores text by a hash: varied rewards in every group, so no group is skipped (random weights)."""
    return [(zlib.crc32(c.encode()) % 1000) / 1000 for c in completions]


def exact_reward(prompts, completions, answer, **kwargs):
    return [float(c.strip() == a) for c, a in zip(completions, answer)]


def workload(args) -> dict:
    if args.shape == "tiny":
        from rlkit.envs.arith import ArithEnv

        return {"model": "tiny-arith", "completion": 8, "steps": args.steps or 20, "lr": 3e-4,
                "rows": ArithEnv().dataset("train"), "reward": exact_reward, "dtype": "float32"}
    from rlkit.shape_models import make_shape_model

    gpu = torch.cuda.is_available()
    dtype = "bfloat16" if gpu else "float32"
    folder = make_shape_model(Path(tempfile.gettempdir()) / f"rlkit-shape-{'small' if args.small else '0.5b'}-{dtype}",
                              "small" if args.small else "0.5b", dtype=dtype)
    rng = random.Random(0)
    pairs = [(rng.randint(0, 99), rng.randint(0, 99)) for _ in range(4096)]
    rows = [{"prompt": f"{a}+{b}=", "answer": str(a + b)} for a, b in pairs]
    return {"model": str(folder), "completion": 32 if args.small else 256, "steps": args.steps or (4 if args.small else 6),
            "lr": 1e-6, "rows": rows, "reward": hash_reward, "dtype": dtype}


def run_rlkit(work: dict, schedule: str, out: Path, overrides: dict[str, str] | None = None) -> dict:
    from rlkit import RLConfig, RLTrainer
    from rlkit.config import apply_overrides
    from rlkit.runs import read_metrics

    config = RLConfig(
        max_steps=work["steps"], save_steps=0, output_dir=str(out / schedule), progress=False, plot=False,
        tensorboard=False, learning_rate=work["lr"], beta=0.0, prompts_per_step=32, num_generations=8,
        max_completion_length=work["completion"], temperature=1.0, schedule=schedule, eval_limit=8)
    config.model.name_or_path, config.model.dtype = work["model"], work["dtype"]
    apply_overrides(config, overrides or {})
    rows = work["rows"]
    summary = RLTrainer(reward_funcs=[work["reward"]], args=config, train_dataset=rows, eval_dataset=rows[:8]).train()
    metrics = read_metrics(out / schedule / "metrics.jsonl")
    timed = metrics[1:] or metrics
    seconds = [m["step_seconds"] for m in timed]
    tokens = [m["tokens_per_second"] * m["step_seconds"] for m in timed]
    return {"step_seconds": [round(m["step_seconds"], 3) for m in metrics],
            "median_step_seconds": statistics.median(seconds), "tokens_per_second": sum(tokens) / sum(seconds),
            "reward": [round(m["reward_mean"], 4) for m in metrics],
            "learner_overlap_seconds": statistics.fmean(m.get("learner_overlap_seconds", 0.0) for m in timed),
            "weight_sync_bytes": metrics[-1].get("weight_sync_bytes"), "peak_memory_mb": summary.get("peak_memory_mb")}


def run_trl(work: dict, out: Path) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlkit.models import DTYPES, resolve_model_path

    path = resolve_model_path(work["model"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[work["dtype"]])
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *args, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, *args, **kwargs):
            times.append(time.perf_counter() - self.started)

    gpu = torch.cuda.is_available()
    config = GRPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=64, gradient_accumulation_steps=4,
                        num_generations=8, max_completion_length=work["completion"], max_steps=work["steps"],
                        learning_rate=work["lr"], bf16=gpu and work["dtype"] == "bfloat16", logging_steps=1,
                        report_to=[], beta=0.0, temperature=1.0, save_strategy="no", use_cpu=not gpu,
                        disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=model, reward_funcs=[work["reward"]], args=config,
                          train_dataset=Dataset.from_list(work["rows"]), processing_class=tokenizer,
                          callbacks=[StepTimer()])
    trainer.train()
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    timed = list(zip(times, logs))[1:] or list(zip(times, logs))
    tokens = [log["completions/mean_length"] * 256 for _, log in timed]
    return {"step_seconds": [round(t, 3) for t in times], "median_step_seconds": statistics.median(t for t, _ in timed),
            "tokens_per_second": sum(tokens) / sum(t for t, _ in timed),
            "reward": [round(log.get("reward", float("nan")), 4) for log in logs],
            "peak_memory_mb": {"trainer process": {
                "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "cuda": torch.cuda.max_memory_allocated() / 2**20 if gpu else None}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=("tiny", "0.5b"), default="tiny")
    parser.add_argument("--small", action="store_true", help="0.5b only: the 4M-parameter model of that kind")
    parser.add_argument("--steps", type=int, default=0, help="steps of each run (default: 20 tiny, 4 small, 6 0.5b)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="rlkit config override")
    parser.add_argument("--label", default="", help="suffix of the results file")
    args = parser.parse_args()
    work = workload(args)
    overrides = dict(item.split("=", 1) for item in args.set)
    label = args.shape + ("-small" if args.small else "") + (f"-{args.label}" if args.label else "")
    with tempfile.TemporaryDirectory() as tmp:
        results = {"trl": run_trl(work, Path(tmp)),
                   "rlkit_sync": run_rlkit(work, "sync", Path(tmp), overrides),
                   "rlkit_periodic_async": run_rlkit(work, "periodic_async", Path(tmp), overrides)}
    trl, sync, periodic = results["trl"], results["rlkit_sync"], results["rlkit_periodic_async"]
    report = {
        "shape": label, "steps": work["steps"], "rlkit_overrides": overrides, "completion_tokens": work["completion"], "prompts": 32,
        "group_size": 8, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.machine(),
        "results": results,
        "periodic_async_vs_trl_tokens_per_second": periodic["tokens_per_second"] / trl["tokens_per_second"],
        "sync_vs_trl_tokens_per_second": sync["tokens_per_second"] / trl["tokens_per_second"],
        "periodic_async_vs_sync_tokens_per_second": periodic["tokens_per_second"] / sync["tokens_per_second"],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"vs_trl-{label}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{label}: {work['steps']} steps of 32 x 8 completions of up to {work['completion']} tokens")
    print(f"{'':24}{'s/step':>10}{'tokens/s':>12}{'reward (last)':>15}")
    for name, result in results.items():
        print(f"{name:24}{result['median_step_seconds']:>10.3f}{result['tokens_per_second']:>12.1f}"
              f"{result['reward'][-1]:>15.3f}")
    print(f"periodic_async / TRL: {report['periodic_async_vs_trl_tokens_per_second']:.2f}x   "
          f"sync / TRL: {report['sync_vs_trl_tokens_per_second']:.2f}x   "
          f"periodic_async / sync: {report['periodic_async_vs_sync_tokens_per_second']:.2f}x")


if __name__ == "__main__":
    main()
