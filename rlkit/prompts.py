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
              lists: Sequence[str] = (), tokenizer=None) -> list[dict[str, Any]]:
    """Rows of a local file, a ``save_to_disk`` folder or a hub dataset, checked by :func:`check_rows`."""
    return check_rows(read_rows(source, split), data, origin=source, required=required, lists=lists,
                      tokenizer=tokenizer)


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
               required: Sequence[str] = (), lists: Sequence[str] = (), tokenizer=None) -> list[dict[str, Any]]:
    """Refuse (or skip, per ``data.on_bad_row``) malformed rows, naming each by its 1-based number.

    A row is usable when its prompt column holds non-blank text (or a list of well-formed messages)
    and every ``required`` column (an environment's ``required_columns``, e.g. ``answer``) holds
    non-blank text or a finite number. With ``tokenizer``, what needs it too: a conversational
    prompt renders with the chat template, and no prompt is longer than ``data.max_prompt_length``
    (under ``on_long_prompt: error``). Everything is checked here, when rows are loaded, so nothing
    fails mid-run.
    """
    numbers = getattr(rows, "row_numbers", None)
    where = f"{origin} ({rows.source})" if isinstance(rows, NumberedRows) else origin
    rows = list(rows)
    numbers = numbers or range(1, len(rows) + 1)
    if tokenizer is not None:
        _check_template(rows, numbers, tokenizer, data, where)
    good: list[dict[str, Any]] = []
    for number, row in zip(numbers, rows):
        problem = row_problem(row, data.prompt_column, required, lists)
        if problem is None and tokenizer is not None:
            problem = _rendering_problem(row[data.prompt_column], tokenizer, data)
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


def _check_template(rows: list[Any], numbers, tokenizer, data: DataConfig, where: str) -> None:
    """Conversational prompts and no chat template: one error, naming the first such row."""
    from rlkit.chat import is_conversational

    if getattr(tokenizer, "chat_template", None):
        return
    for number, row in zip(numbers, rows):
        if isinstance(row, dict) and is_conversational(row.get(data.prompt_column)):
            raise ConfigError(f"{where}, row {number}: a conversational prompt, and the tokenizer has no chat "
                              "template to render it; set model.chat_template (a template string or a file)")


def _rendering_problem(prompt: Any, tokenizer, data: DataConfig) -> str | None:
    """A prompt the chat template cannot render, or one over ``data.max_prompt_length`` (``error``)."""
    from rlkit.chat import encode_prompt, is_conversational

    limit = data.max_prompt_length if data.on_long_prompt == "error" else 0
    if not limit and not is_conversational(prompt):
        return None
    try:
        length = len(encode_prompt(tokenizer, prompt, data.system_prompt))
    except Exception as exc:  # noqa: BLE001 (a template raises what it likes on bad messages)
        return f"the chat template cannot render the prompt ({type(exc).__name__}: {exc})"
    if limit and length > limit:
        return (f"the prompt has {length} tokens, more than data.max_prompt_length {limit} (or set "
                "data.on_long_prompt: truncate)")
    return None


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
