"""A run asked to stop (SIGTERM: `rlkit stop`, Ray's job stop, Slurm, Kubernetes) finishes its step,
writes a checkpoint, says so in the run folder, and resumes to completion."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rlkit.cli import app
from rlkit.runs import read_metrics


# a preference step takes milliseconds here: that run is longer, so the signal lands before its end
@pytest.mark.parametrize("recipe, steps", [("grpo-arith", 12), ("power-dl-arith", 60)])
def test_sigterm_checkpoints_marks_the_run_stopped_and_it_resumes(tmp_path, recipe, steps):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "rlkit.cli", "train", "--recipe", recipe, "--max_steps", str(steps),
               "--save_steps", "0", "--output_dir", str(out), "--logging.progress", "false",
               "--logging.tensorboard", "false", "--data.eval_limit", "20"]
    if recipe == "power-dl-arith":
        command += ["--preference.epochs", "0", "--preference.eval_generation", "false"]
    else:
        command += ["--rollout.prompts_per_step", "4"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while len(read_metrics(out / "metrics.jsonl")) < 2 if (out / "metrics.jsonl").exists() else True:
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    stopped = json.loads((out / "stopped.json").read_text())
    step = stopped["step"]
    assert 2 <= step < steps and stopped["reason"] == "SIGTERM received"
    assert (Path(stopped["checkpoint"]) / "COMPLETE").is_file()
    assert not (out / "summary.json").exists() and not (out / "final").exists()
    assert f"stopped after step {step}" in err and f"rlkit train --resume {out}" in err
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == list(range(1, step + 1))
    result = CliRunner().invoke(app, ["train", "--resume", str(out), "--logging.progress", "false"])
    assert result.exit_code == 0, result.output
    assert [m["step"] for m in read_metrics(out / "metrics.jsonl")] == list(range(1, steps + 1))
    assert (out / "summary.json").is_file() and not (out / "stopped.json").exists()
