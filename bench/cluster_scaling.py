"""The cluster path, measured: runs submitted through Ray's Jobs API to a local multi-node cluster
(a head and worker nodes, each its own `ray start` on loopback), with 1, 2 and 4 rollout workers.

    python bench/cluster_scaling.py                          # 2 worker nodes x 2 CPUs, 1/2/4 workers
    python bench/cluster_scaling.py --workers 1 2 --steps 10 --set rollout.prompts_per_step=16

For each run it reports, from the run's own metrics.jsonl (the first step, which warms up, left out):
the training loop's seconds, trained and generated tokens per second, the weight sync per step
(bytes sent, the learner's export seconds, the workers' load seconds), and the step's time split
between generation and learning. The same config also runs in-process (no cluster) with 1 worker,
as the baseline the cluster path costs against. Writes bench/results/cluster_scaling[-LABEL].json.

Read the figures with the machine in mind: the nodes of this cluster share the machine's cores, so
more workers than cores cannot make generation faster here; what the runs show is what the cluster
path itself costs (placement, the object store between nodes, the Jobs API) and whether it scales
until the cores run out.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rlkit import jobs
from rlkit.runs import read_metrics
from rlkit.validation import load_config

ROOT = Path(__file__).resolve().parents[1]


def _launcher():
    spec = importlib.util.spec_from_file_location("local_multinode", ROOT / "launch" / "local_multinode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def summarize(metrics: list[dict], wall_s: float) -> dict:
    steady = metrics[1:] or metrics
    seconds = sum(m["step_seconds"] for m in steady)
    mean = lambda key: statistics.fmean(m.get(key, 0.0) for m in steady)  # noqa: E731
    return {
        "steps": len(metrics), "job_wall_seconds": round(wall_s, 1),
        "loop_seconds": round(seconds, 2), "seconds_per_step": round(seconds / len(steady), 3),
        "trained_tokens_per_second": round(sum(m["tokens_per_second"] * m["step_seconds"] for m in steady) / seconds, 1),
        "generated_tokens_per_second": round(sum(m.get("generated_tokens", 0) for m in steady) / seconds, 1),
        "weight_sync_bytes": int(mean("weight_sync_bytes")),
        "weight_export_seconds": round(mean("weight_export_seconds"), 4),
        "weight_load_seconds": round(mean("weight_load_seconds"), 4),
        "learner_seconds": round(mean("learner_seconds"), 4),
        "reward_mean_last": round(metrics[-1]["reward_mean"], 3),
    }


def run_on_cluster(address: str, overrides: dict[str, str], out: Path) -> dict:
    config = load_config(None, {**overrides, "output_dir": str(out)})
    started = time.monotonic()
    job, run_dir = jobs.submit(config, address, python=sys.executable, staging_root=out.parent)
    log = io.StringIO()
    jobs.logs(address, job, follow=True, out=log)
    status = jobs.status(address, job)["status"]
    if status != "SUCCEEDED":
        raise RuntimeError(f"job {job} ended {status}:\n{log.getvalue()[-3000:]}")
    return summarize(read_metrics(Path(run_dir) / "metrics.jsonl"), time.monotonic() - started)


def run_in_process(overrides: dict[str, str], out: Path) -> dict:
    """`rlkit train` in a process of its own (Ray keeps a process's first auth settings; this one
    talks to the token-authenticated cluster)."""
    import subprocess

    started = time.monotonic()
    command = [sys.executable, "-m", "rlkit.cli", "train", "--output_dir", str(out)]
    for key, value in overrides.items():
        command += [f"--{key}", value]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return summarize(read_metrics(out / "metrics.jsonl"), time.monotonic() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="rollout.num_workers to run")
    parser.add_argument("--nodes", type=int, default=2, help="worker nodes of the local cluster")
    parser.add_argument("--node-cpus", type=int, default=2, help="CPUs each worker node offers Ray")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--label", default="")
    args = parser.parse_args()
    base = {"max_steps": str(args.steps), "save_steps": "0", "data.eval_limit": "0", "logging.progress": "false",
            "logging.plot": "false", "logging.tensorboard": "false", "rollout.prompts_per_step": "32",
            "cluster.placement": "spread", "cluster.worker_cpus": "0.5"}
    base.update(dict(item.split("=", 1) for item in args.set))
    local = _launcher()
    report: dict = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                    "cluster": {"worker_nodes": args.nodes, "cpus_per_node": args.node_cpus}, "overrides": base,
                    "runs": {}}
    with tempfile.TemporaryDirectory(prefix="rlkit-bench-") as tmp:
        tmp_path = Path(tmp)
        print("in-process baseline, 1 rollout worker ...", flush=True)
        report["in_process_1_worker"] = run_in_process(
            {**base, "rollout.num_workers": "1", "cluster.placement": "default"}, tmp_path / "inproc")
        print(json.dumps(report["in_process_1_worker"]), flush=True)
        state_dir = tmp_path / "cluster"
        state = local.start(state_dir, workers=args.nodes, cpus=args.node_cpus)
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=state["token"])
        try:
            for workers in args.workers:
                print(f"cluster, {workers} rollout worker(s) ...", flush=True)
                result = run_on_cluster(state["dashboard"], {**base, "rollout.num_workers": str(workers)},
                                        tmp_path / f"w{workers}")
                report["runs"][str(workers)] = result
                print(json.dumps(result), flush=True)
        finally:
            local.stop(state_dir)
    one = report["runs"].get("1")
    if one:
        for result in report["runs"].values():
            result["speedup_vs_1_worker"] = round(one["loop_seconds"] / result["loop_seconds"], 2)
        one["cluster_cost_vs_in_process"] = round(one["loop_seconds"] / report["in_process_1_worker"]["loop_seconds"], 2)
    name = "cluster_scaling" + (f"-{args.label}" if args.label else "")
    path = ROOT / "bench" / "results" / f"{name}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
