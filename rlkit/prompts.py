"""Prompt datasets: where rows come from, how bad rows are handled, and the resumable cursor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rlkit.config import ConfigError, DataConfig


def load_rows(source: str, split: str, data: DataConfig) -> list[dict[str, Any]]:
    """Rows of a local file, a ``save_to_disk`` folder or a hub dataset, checked by :func:`check_rows`."""
    return check_rows(_read(source, split), data, origin=source)


def _read(source: str, split: str) -> list[dict[str, Any]]:
    import datasets

    path = Path(source).expanduser()
    builders = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
    try:
        if path.is_file():
            if path.suffix not in builders:
                raise ConfigError(f"{path}: unsupported file type {path.suffix!r} "
                                  f"(use {', '.join(builders)})")
            dataset = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
        elif path.is_dir():
            dataset = datasets.load_from_disk(str(path))
            if isinstance(dataset, datasets.DatasetDict):
                dataset = dataset[split]
        else:
            dataset = datasets.load_dataset(source, split=split)  # a hub id the user named
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read dataset {source!r}: {type(exc).__name__}: {exc}") from exc
    return [dict(row) for row in dataset]


def check_rows(rows: Iterable[Any], data: DataConfig, origin: str) -> list[dict[str, Any]]:
    """Refuse (or skip, per ``data.on_bad_row``) rows without a non-empty string prompt."""
    good: list[dict[str, Any]] = []
    column = data.prompt_column
    for number, row in enumerate(rows, start=1):
        problem = _row_problem(row, column)
        if problem is None:
            good.append(row)
            continue
        message = f"{origin}, row {number}: {problem}"
        if data.on_bad_row == "error":
            raise ConfigError(message + " (set data.on_bad_row: skip to drop such rows)")
        print(f"warning: skipped {message}", file=sys.stderr)
    if not good:
        raise ConfigError(f"{origin}: no usable rows")
    return good


def _row_problem(row: Any, column: str) -> str | None:
    if not isinstance(row, dict):
        return f"expected a mapping of columns, got {type(row).__name__}"
    if column not in row:
        return f"missing the prompt column {column!r} (columns: {', '.join(map(str, row)) or 'none'})"
    if not isinstance(row[column], str):
        return f"prompt column {column!r} is {type(row[column]).__name__}, expected text"
    if not row[column].strip():
        return f"empty prompt in column {column!r}"
    return None


class PromptSource:
    """Hands out prompts step after step, reshuffled each epoch; its state resumes exactly."""

    def __init__(self, rows: list[dict[str, Any]], *, seed: int, shuffle: bool):
        self.rows = rows
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.cursor = 0
        self._order = self._permutation()

    def _permutation(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.rows))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.rows))

    def take(self, n: int) -> list[dict[str, Any]]:
        batch = []
        while len(batch) < n:
            if self.cursor == len(self.rows):
                self.epoch, self.cursor = self.epoch + 1, 0
                self._order = self._permutation()
            batch.append(self.rows[int(self._order[self.cursor])])
            self.cursor += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._permutation()
