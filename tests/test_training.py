"""End-to-end runs of the tiny model: learning, schedule equivalence, DeepSpeed ZeRO, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlkit.config import load_config
from rlkit.runs import read_metrics
from rlkit.trainer import RLTrainer

pytestmark = pytest.mark.slow

QUICK = {"logging.progress": "false", "logging.plot": "false", "logging.tensorboard": "false",
         "data.eval_limit": "100", "save_steps": "0"}


def train(tmp_path: Path, name: str, **overrides: str) -> tuple[dict, list[dict]]:
    out = tmp_path / name
    config = load_config(None, {**QUICK, "output_dir": str(out), **overrides})
    summary = RLTrainer(args=config).train()
    return summary, read_metrics(out / "metrics.jsonl")


def same_curves(a: list[dict], b: list[dict], keys=("reward_mean", "loss", "entropy"), tol=1e-4) -> None:
    assert len(a) == len(b)
    for row_a, row_b in zip(a, b):
        for key in keys:
            assert row_a[key] == pytest.approx(row_b[key], abs=tol), (key, row_a["step"])


def test_seeded_run_improves_the_held_out_pass_rate(tmp_path):
    summary, metrics = train(tmp_path, "learn", max_steps="20", save_steps="10")
    assert summary["steps"] == 20
    assert summary["eval_pass_rate_after"] >= summary["eval_pass_rate_before"] + 0.08
    assert [m["step"] for m in metrics] == list(range(1, 21))
    assert {"reward_mean", "loss", "entropy", "tokens_per_second", "policy_version"} <= set(metrics[0])
    assert all(m["policy_version"] == m["step"] - 1 for m in metrics)  # on-policy: version k trains step k
    run = Path(summary["run_dir"])
    assert (run / "final" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step-000010" / "COMPLETE").is_file()
    assert json.loads((run / "summary.json").read_text())["eval_pass_rate_after"] == summary["eval_pass_rate_after"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "final")


def test_periodic_async_matches_sync(tmp_path):
    _, sync = train(tmp_path, "sync", max_steps="3", **{"rollout.schedule": "sync"})
    _, periodic = train(tmp_path, "periodic", max_steps="3", **{"rollout.schedule": "periodic_async"})
    same_curves(sync, periodic)


def test_zero_stage_2_with_two_learners_matches_a_single_plain_learner(tmp_path):
    _, plain = train(tmp_path, "zero0", max_steps="2", **{"learner.micro_batch_groups": "4"})
    _, zero2 = train(tmp_path, "zero2", max_steps="2", **{"learner.micro_batch_groups": "4",
                                                          "learner.zero_stage": "2", "learner.num_learners": "2"})
    same_curves(plain, zero2)


def test_bounded_staleness_runs_off_policy(tmp_path):
    _, metrics = train(tmp_path, "stale", max_steps="4", **{"rollout.max_staleness": "2"})
    assert max(m["staleness"] for m in metrics) == 2
    assert metrics[0]["policy_version"] == 0 and metrics[3]["policy_version"] == 1


def _rlkit(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rlkit.cli", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _flags(mapping: dict[str, str]) -> list[str]:
    return [item for key, value in mapping.items() for item in (f"--{key}", value)]


def test_killed_run_resumes_to_the_same_final_metrics(tmp_path):
    common = {**QUICK, "max_steps": "6", "save_steps": "2"}
    _, straight = train(tmp_path, "straight", **{k: v for k, v in common.items()})

    run = tmp_path / "killed"
    proc = _rlkit("train", *_flags({**common, "output_dir": str(run)}))
    marker = run / "checkpoints" / "step-000004" / "COMPLETE"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), proc.communicate()[0] if proc.poll() is not None else "no checkpoint in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()

    resumed = _rlkit("train", "--resume", str(run))
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    metrics = read_metrics(run / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 7))
    same_curves(straight, metrics, keys=("reward_mean", "loss", "entropy", "policy_version"), tol=1e-6)
