"""A run's folder and what the user sees of it: metrics, TensorBoard, plot, summary, progress.

Every file a killed run could leave half-written is written atomically (temp file, fsync,
rename); metrics are appended line by line and a torn last line is dropped on reading.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

COMPLETE = "COMPLETE"
# failures.jsonl entries about the run's actors rather than a step's samples: a call sent again after
# its rollout worker died or was out of reach, and the death that ended a run
ACTOR_RETRY, ACTOR_DIED = "actor_retry", "actor_died"
RUN_EVENTS = (ACTOR_RETRY, ACTOR_DIED)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


class RunDirectory:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    tensorboard_dir = property(lambda self: self.path / "tb")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    final_model_dir = property(lambda self: self.path / "final")
    plot_path = property(lambda self: self.path / "reward_curve.png")
    summary_path = property(lambda self: self.path / "summary.json")
    failures_path = property(lambda self: self.path / "failures.jsonl")  # reward/environment failures, kept whole

    def truncate_failures_after(self, step: int) -> None:
        """On resume: drop failures logged by steps the checkpoint does not cover (they run again)."""
        if self.failures_path.is_file():
            # what happened to the run's actors stays: it is history, not a result the steps redo
            kept = [line for line in self.failures_path.read_text().splitlines()
                    if json.loads(line).get("step", 0) <= step or json.loads(line).get("kind") in RUN_EVENTS]
            atomic_write_text(self.failures_path, "".join(line + "\n" for line in kept))

    def append_failures(self, step: int, failures: list[dict[str, Any]]) -> None:
        """Keep each failed reward call or environment step, with its sample, for inspection."""
        if not failures:
            return
        with open(self.failures_path, "a") as f:
            for failure in failures:
                f.write(json.dumps({"step": step, **failure}, default=str) + "\n")

    def create(self, config: dict[str, Any], *, resume: bool) -> None:
        self.check_usable(resume=resume)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def check_usable(self, *, resume: bool) -> None:
        """Refuse a folder that holds another run (or, to resume, one that holds none)."""
        if resume:
            if not self.config_path.is_file():
                raise FileNotFoundError(f"cannot resume: {self.path} is not a run folder (no config.yaml)")
        elif self.config_path.exists():
            raise FileExistsError(f"{self.path} already holds a run; pick another output_dir "
                                  f"or continue it with --resume {self.path}")

    def load_config(self) -> dict[str, Any]:
        if not self.config_path.is_file():
            raise FileNotFoundError(f"{self.path} is not a run folder (no config.yaml)")
        return yaml.safe_load(self.config_path.read_text()) or {}

    def checkpoint_dir(self, step: int) -> Path:
        return self.checkpoints_dir / f"step-{step:06d}"

    stopped_path = property(lambda self: self.path / "stopped.json")

    def mark_stopped(self, step: int, reason: str) -> None:
        """Say in the run folder that the run was stopped at ``step`` (a checkpoint of it exists)."""
        atomic_write_json(self.stopped_path, {"step": step, "reason": reason,
                                              "checkpoint": str(self.checkpoint_dir(step)),
                                              "resume": f"rlkit train --resume {self.path}"})

    def mark_checkpoint_complete(self, step: int) -> None:
        atomic_write_text(self.checkpoint_dir(step) / COMPLETE, f"{step}\n")

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        if not self.checkpoints_dir.is_dir():
            return []
        found = []
        for child in self.checkpoints_dir.iterdir():
            if child.name.startswith("step-") and (child / COMPLETE).is_file():
                found.append((int(child.name.split("-", 1)[1]), child))
        return sorted(found)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        found = self.complete_checkpoints()
        return found[-1] if found else None

    def prune_checkpoints(self, keep: int) -> None:
        for _, path in self.complete_checkpoints()[:-max(keep, 1)]:
            shutil.rmtree(path, ignore_errors=True)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl; a torn final line (a killed writer) is skipped."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLogger:
    """Appends one JSON line per step (fsynced) and mirrors numbers to TensorBoard."""

    def __init__(self, run: RunDirectory, *, tensorboard: bool = True):
        self.run = run
        self._file = open(run.metrics_path, "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run.tensorboard_dir))

    def log(self, step: int, metrics: dict[str, Any], histograms: dict[str, list[float]] | None = None) -> None:
        """One row of ``metrics``; ``histograms`` (name -> values) go to TensorBoard only."""
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._tb is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(key, value, step)
            for key, values in (histograms or {}).items():
                if values:
                    import numpy as np

                    self._tb.add_histogram(key, np.asarray(values, dtype=np.float32), step)

    def truncate_after(self, step: int) -> None:
        """On resume: keep the rows up to the checkpoint's step, the later ones are re-run."""
        kept = [row for row in read_metrics(self.run.metrics_path) if row.get("step", 0) <= step]
        self._file.close()
        atomic_write_text(self.run.metrics_path, "".join(json.dumps(row) + "\n" for row in kept))
        self._file = open(self.run.metrics_path, "a")

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_reward_curve(metrics_path: str | Path, out_path: str | Path, *, title: str | None = None) -> Path:
    """reward_mean per step, a moving average, and held-out pass rates where evaluated."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # an RL run's reward; a preference run's training accuracy (its implicit reward ranks the pair right)
    metric, held_out, label = "reward_mean", "eval_pass_rate", "reward"
    rows = [r for r in read_metrics(metrics_path) if metric in r]
    if not rows:
        metric, held_out, label = "accuracy", "eval_preference_accuracy", "preference accuracy"
        rows = [r for r in read_metrics(metrics_path) if metric in r]
    if not rows:
        raise ValueError(f"{metrics_path} has no reward_mean (or preference accuracy) rows to plot")
    steps = [r["step"] for r in rows]
    rewards = [r[metric] for r in rows]
    window = max(1, len(rows) // 10)
    smooth = [sum(rewards[max(0, i - window + 1):i + 1]) / len(rewards[max(0, i - window + 1):i + 1])
              for i in range(len(rewards))]
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot(steps, rewards, alpha=0.35, label=metric)
    axes.plot(steps, smooth, linewidth=2, label=f"moving average ({window})")
    evals = [(r["step"], r[held_out]) for r in read_metrics(metrics_path) if held_out in r]
    if evals:
        axes.plot(*zip(*evals), "o--", label=held_out.replace("_", " "))
    axes.set_xlabel("step")
    axes.set_ylabel(label)
    axes.set_title(title or Path(metrics_path).parent.name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = Path(out_path)
    figure.savefig(out)
    return out


def write_summary(run: RunDirectory, summary: dict[str, Any]) -> None:
    atomic_write_json(run.summary_path, summary)


def render_summary(summary: dict[str, Any], console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="run summary", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key == "peak_memory_mb":
            text = "; ".join(f"{name} {peak['rss']:.0f} MB" + (f" (GPU {peak['cuda']:.0f} MB)" if peak.get("cuda") else "")
                             for name, peak in value.items())
        elif isinstance(value, float) and ("pass_rate" in key or "accuracy" in key):
            text = f"{value:.1%}"
        elif isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
        table.add_row(key, text)
    console.print(table)


class TrainingProgress:
    """A rich progress bar in a terminal; a bounded number of plain lines elsewhere (CI, logs)."""

    SHOWN = ("reward_mean", "loss", "entropy", "accuracy", "label_mean", "tokens_per_second", "pairs_per_second")

    def __init__(self, total_steps: int, *, start_step: int = 0, enabled: bool = True, console=None):
        from rich.console import Console

        self.total = total_steps
        self.start = start_step
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.every = max(1, total_steps // 15)
        self._progress = None

    def __enter__(self) -> TrainingProgress:
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            self._progress = Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                      console=self.console)
            self._progress.start()
            self._task = self._progress.add_task("train", total=self.total, completed=self.start, info="")
        return self

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        info = "  ".join(f"{k} {metrics[k]:.3g}" for k in self.SHOWN if k in metrics)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info)
        elif step % self.every == 0 or step == self.total:
            print(f"step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()
