"""Prompt datasets: where rows come from, how bad rows are handled, and the resumable cursor."""

from __future__ import annotations

import json
import math
import numbers
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from rlkit.config import ConfigError, DataConfig

#: local file suffixes read as datasets, and the ``datasets`` builder used for the columnar ones
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def load_rows(source: str, split: str, data: DataConfig, required: Sequence[str] = (),
              lists: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Rows of a local file, a ``save_to_disk`` folder or a hub dataset, checked by :func:`check_rows`."""
    return check_rows(read_rows(source, split), data, origin=source, required=required, lists=lists)


def read_rows(source: str, split: str, name: str | None = None) -> list[dict[str, Any]]:
    """Every row of ``source``, in file order, unchecked.

    ``source`` is a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file, a folder written by
    ``datasets``' ``save_to_disk`` (``split`` picks from a ``DatasetDict``), or a hub dataset id
    (``split`` is read). JSON and JSON Lines are parsed here rather than by ``datasets``: Arrow
    refuses a column whose type changes between rows, which would hide the bad row's number.
    """
    path = Path(source).expanduser()
    if not path.exists() and looks_local(source):
        raise ConfigError(f"no such file {source}")
    if path.is_file() and path.suffix not in FILE_TYPES:
        raise ConfigError(f"{path}: unsupported file type {path.suffix!r} (use {', '.join(FILE_TYPES)})")
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        return _read_json(path)
    try:
        return [dict(row) for row in _load_with_datasets(source, path, split, name)]
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read dataset {source!r}: {type(exc).__name__}: {exc}") from exc


_read = read_rows  # the name this helper had before it was public


def looks_local(source: str) -> bool:
    """True when ``source`` names a local path (a known suffix, or an explicit / . ~ start), not a hub id."""
    return source.endswith(tuple(FILE_TYPES)) or source.startswith(("/", ".", "~"))


def has_splits(source: str) -> bool:
    """Whether ``source`` holds named splits: a hub id or a saved ``DatasetDict``; a single file has none."""
    path = Path(source).expanduser()
    if path.is_file() or (not path.exists() and looks_local(source)):
        return False
    return not path.is_dir() or (path / "dataset_dict.json").is_file()


def _load_with_datasets(source: str, path: Path, split: str, name: str | None = None):
    import datasets

    if path.is_file():
        return datasets.load_dataset(FILE_TYPES[path.suffix], data_files=str(path), split="train")
    if path.is_dir():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ConfigError(f"{path}: no split {split!r} (splits: {', '.join(dataset)})")
            dataset = dataset[split]
        return dataset
    return datasets.load_dataset(source, name, split=split)  # a hub id the user named


def _read_json(path: Path) -> list[Any]:
    """A JSON array of objects, or JSON Lines (one object per non-blank line; also accepted as .json)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # perhaps JSON Lines under a .json name
        if isinstance(whole, list):
            return whole
        if whole is not None:
            raise ConfigError(f"{path}: expected a JSON array of rows or JSON Lines, got a {type(whole).__name__}")
    rows = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}, line {line_number}: not valid JSON ({exc.msg})") from exc
    return rows


class NumberedRows(list):
    """Rows that keep their numbers in a source file: a held-out split of a file is still reported
    by the file's row numbers (``check_rows`` uses ``row_numbers`` and ``source`` when present)."""

    def __init__(self, rows: Iterable[Any], row_numbers: Iterable[int], source: str):
        super().__init__(rows)
        self.row_numbers, self.source = list(row_numbers), source
        if len(self.row_numbers) != len(self):
            raise ValueError(f"{len(self)} rows but {len(self.row_numbers)} row numbers")

    @classmethod
    def subset(cls, rows: list[Any], keep: Iterable[int], source: str) -> NumberedRows:
        """The rows at 0-based positions ``keep`` (in order), numbered as in the file (1-based)."""
        positions = sorted(keep)
        return cls([rows[i] for i in positions], [i + 1 for i in positions], source)


def check_rows(rows: Iterable[Any], data: DataConfig, origin: str,
               required: Sequence[str] = (), lists: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Refuse (or skip, per ``data.on_bad_row``) malformed rows, naming each by its 1-based number.

    A row is usable when its prompt column holds non-blank text and every ``required`` column
    (an environment's ``required_columns``, e.g. ``answer``) holds non-blank text or a finite
    number. Everything is checked here, when rows are loaded, so nothing fails mid-run.
    """
    numbers = getattr(rows, "row_numbers", None)
    where = f"{origin} ({rows.source})" if isinstance(rows, NumberedRows) else origin
    rows = list(rows)
    good: list[dict[str, Any]] = []
    for number, row in zip(numbers or range(1, len(rows) + 1), rows):
        problem = row_problem(row, data.prompt_column, required, lists)
        if problem is None:
            good.append(row)
            continue
        message = f"{where}, row {number}: {problem}"
        if data.on_bad_row == "error":
            raise ConfigError(message + " (set data.on_bad_row: skip to drop such rows)")
        print(f"warning: skipped {message}", file=sys.stderr)
    if not good:
        raise ConfigError(f"{origin}: no usable rows")
    return good


def check_prompt_rendering(rows: list[dict[str, Any]], tokenizer, data: DataConfig,
                           origin: str) -> list[dict[str, Any]]:
    """What needs the tokenizer, checked before anything starts: conversational prompts render with
    the chat template, and no prompt is longer than ``data.max_prompt_length`` (under
    ``on_long_prompt: error``). A bad row is refused, or skipped per ``data.on_bad_row``, by number."""
    from rlkit.chat import encode_prompt, is_conversational

    column = data.prompt_column
    numbers = getattr(rows, "row_numbers", None) or range(1, len(rows) + 1)
    limit = data.max_prompt_length if data.on_long_prompt == "error" else 0
    conversational = [n for n, row in zip(numbers, rows) if is_conversational(row[column])]
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"{origin}, row {conversational[0]}: a conversational prompt, and the tokenizer has no "
                          "chat template to render it; set model.chat_template (a template string or a file)")
    if not conversational and not limit:
        return rows
    good = []
    for number, row in zip(numbers, rows):
        try:
            length = len(encode_prompt(tokenizer, row[column], data.system_prompt))
        except Exception as exc:  # noqa: BLE001 (a template raises what it likes on bad messages)
            problem = f"the chat template cannot render the prompt ({type(exc).__name__}: {exc})"
        else:
            problem = (f"the prompt has {length} tokens, more than data.max_prompt_length {limit} (or set "
                       "data.on_long_prompt: truncate)") if limit and length > limit else None
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


def row_problem(row: Any, prompt_column: str, required: Sequence[str] = (), lists: Sequence[str] = ()) -> str | None:
    """What is wrong with ``row`` (a short phrase), or None when it is usable."""
    if not isinstance(row, dict):
        return f"expected a mapping of columns, got {type(row).__name__}"
    if prompt_column not in row:
        return f"missing the prompt column {prompt_column!r} ({_columns_of(row)})"
    prompt = row[prompt_column]
    if prompt is None:
        return f"no value in the prompt column {prompt_column!r}"
    if isinstance(prompt, (list, tuple)):  # conversational: {role, content} messages
        from rlkit.chat import messages_problem

        problem = messages_problem(prompt)
        if problem is not None:
            return f"prompt column {prompt_column!r}: {problem}"
    elif not isinstance(prompt, str):
        return f"prompt column {prompt_column!r} is {type(prompt).__name__}, expected text or a list of messages"
    elif not prompt.strip():
        return f"empty prompt in column {prompt_column!r}"
    for column in required:
        problem = _value_problem(row, column, column in lists)
        if problem is not None:
            return problem
    return None


def _value_problem(row: dict[str, Any], column: str, allow_list: bool = False) -> str | None:
    """A required column must hold non-blank text or a finite number (bools are neither), or, where
    the environment allows it (``list_columns``, e.g. ``tests``), a non-empty list."""
    if column not in row:
        return f"missing the required column {column!r} ({_columns_of(row)})"
    value = row[column]
    if value is None:
        return f"no value in the required column {column!r}"
    if isinstance(value, str):
        return None if value.strip() else f"empty value in the required column {column!r}"
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return None if math.isfinite(value) else f"required column {column!r} is {value}, expected a finite number"
    if allow_list and isinstance(value, (list, tuple, np.ndarray)):
        return None if len(value) else f"empty list in the required column {column!r}"
    expected = "text, a number or a list" if allow_list else "text or a number"
    return f"required column {column!r} is {type(value).__name__}, expected {expected}"


def _columns_of(row: dict[str, Any]) -> str:
    return f"columns: {', '.join(map(str, row)) or 'none'}"


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
