"""``math``: question/answer rows from a dataset file, scored by the ``math`` reward.

Sources (``train_file``, ``eval_file``): a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file,
a folder written by ``datasets``' ``save_to_disk``, or a hub dataset id (read only because the
user named it). Splits:

* ``eval_file`` given: train rows come from ``train_file``, eval rows from ``eval_file``.
* ``train_file`` with named splits (a hub id or a saved ``DatasetDict``) and no ``eval_file``:
  ``train_split`` (default "train") and ``eval_split`` (default "test") of that source.
* a single file and ``eval_size: n``: ``n`` rows drawn with ``seed`` are held out for eval and the
  rest train; both keep the file's order and its row numbers.

Each row becomes ``{**original_columns, "prompt": template filled with the question, "answer": ...}``;
with ``chat: true`` the prompt is a user message (TRL's conversational format, rendered with the
chat template) and the answer is also in ``solution``, the column TRL's ``accuracy_reward`` reads.
``dataset_config`` names a hub dataset's configuration (GSM8K's ``main``).
GSM8K-style answers (a worked solution ending ``#### 1,234``) become the text after the last
``####`` with thousands separators removed (``1234``); numbers become text (``3.0`` as ``3``);
other text is kept as it is.

Malformed rows (no answer, an answer that is neither text nor a number, a blank question) are
not dropped here: the rows keep their order and number, with ``answer``/``prompt`` left None or
empty, so the trainer's ``check_rows`` names each by its row number and refuses or skips it per
``data.on_bad_row``; a split held out with ``eval_size`` keeps the file's row numbers.
"""

from __future__ import annotations

import math
import numbers
import random
import re
from pathlib import Path
from typing import Any

import rlkit
from rlkit.config import ConfigError
from rlkit.envs.base import Environment
from rlkit.prompts import NumberedRows, has_splits, looks_local, read_rows

#: a comma between digits that sets off a group of three (``1,234,567``), not a list (``1,2``)
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
#: ``{name}`` placeholders of the prompt template
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

DEFAULT_TEMPLATE = "{question}"


def parse_answer(value: Any) -> Any:
    """The gold answer of one row: GSM8K's ``#### 72`` final line, a number as text, text as is.

    Anything else (None, a list, a dict, a bool) comes back unchanged for ``check_rows`` to report.
    """
    if isinstance(value, str):
        if "####" not in value:
            return value
        return _THOUSANDS_COMMA.sub("", value.rsplit("####", 1)[1].strip())  # "" if nothing follows
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        # a whole float is written as an integer: Arrow turns an integer column with one decimal into floats
        return str(int(value)) if float(value).is_integer() else str(value)
    return value  # NaN and infinities stay numbers, for check_rows to report


def render_prompt(template: str, question: str, row: dict[str, Any]) -> str:
    """Fill ``{question}`` and any ``{column}`` of ``row``; other braces (``\\boxed{}``) stay as written."""
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name == "question":
            return question
        return str(row[name]) if name in row else match.group(0)

    return _PLACEHOLDER.sub(fill, template)


@rlkit.env("math")
class MathEnv(Environment):
    """Math word problems with a gold answer per row, from a file or dataset (see the module docstring)."""

    default_rewards = ("math",)
    required_columns = ("answer",)

    def __init__(self, train_file: str | None = None, eval_file: str | None = None, *,
                 question_column: str = "question", answer_column: str = "answer",
                 prompt_template: str = DEFAULT_TEMPLATE, train_split: str = "train", eval_split: str = "test",
                 eval_size: int = 0, seed: int = 0, dataset_config: str | None = None, chat: bool = False):
        if not train_file:
            raise ValueError("the math environment needs env.args.train_file (a .jsonl/.json/.parquet/.csv "
                             "file, a save_to_disk folder or a hub dataset id)")
        for source in (train_file, eval_file):
            if source and looks_local(source) and not Path(source).expanduser().exists():
                raise ValueError(f"no such file {source}")
        if "{question}" not in prompt_template:
            raise ValueError(f"prompt_template must contain {{question}}, got {prompt_template!r}")
        if eval_size < 0:
            raise ValueError(f"eval_size must be >= 0, got {eval_size}")
        if eval_file and eval_size:
            raise ValueError("give either eval_file or eval_size (rows held out of train_file), not both")
        if not eval_file and not eval_size and not has_splits(train_file):
            raise ValueError(f"{train_file} has no named splits: give eval_file, or eval_size to hold out rows")
        self.train_file, self.eval_file = train_file, eval_file
        self.question_column, self.answer_column = question_column, answer_column
        self.prompt_template = prompt_template
        self.train_split, self.eval_split = train_split, eval_split
        self.eval_size, self.seed = eval_size, seed
        self.dataset_config, self.chat = dataset_config, chat

    def dataset(self, split: str) -> list[dict[str, Any]]:
        if split not in ("train", "eval"):
            raise ValueError(f"unknown split {split!r}; math has 'train' and 'eval'")
        if self.eval_size:
            return self._held_out_split(split)
        if split == "train":
            return self._rows(self.train_file, self.train_split)
        return self._rows(self.eval_file or self.train_file, self.eval_split)

    def _rows(self, source: str, split: str) -> list[dict[str, Any]]:
        """One output row per source row, in order, so check_rows' row numbers are the file's."""
        return [self.row(raw) for raw in read_rows(source, split, self.dataset_config)]

    def row(self, raw: Any) -> Any:
        """``raw`` with ``prompt`` and ``answer`` added; a non-mapping is passed on for check_rows to report."""
        if not isinstance(raw, dict):
            return raw
        question = raw.get(self.question_column)
        if isinstance(question, numbers.Real) and not isinstance(question, bool):
            question = str(question)
        if not isinstance(question, str):
            prompt = None  # reported as "no value in the prompt column"
        else:
            prompt = render_prompt(self.prompt_template, question, raw) if question.strip() else ""
        row = {**raw, "prompt": [{"role": "user", "content": prompt}] if self.chat and prompt else prompt}
        row.pop("answer", None)
        if self.answer_column in raw:  # left out otherwise: reported as "missing the required column"
            row["answer"] = parse_answer(raw[self.answer_column])
            if self.chat:
                row["solution"] = row["answer"]  # the column TRL's accuracy_reward reads
        return row

    def _held_out_split(self, split: str) -> list[dict[str, Any]]:
        """``eval_size`` rows drawn with ``seed`` for eval, the rest for train, each in file order and
        numbered as in the file (so a bad row is still named by its row number there)."""
        rows = self._rows(self.train_file, self.train_split)
        if self.eval_size >= len(rows):
            raise ConfigError(f"env.args.eval_size ({self.eval_size}) must be smaller than the "
                              f"{len(rows)} rows of {self.train_file}")
        held_out = set(random.Random(self.seed).sample(range(len(rows)), self.eval_size))
        keep = [i for i in range(len(rows)) if (i in held_out) == (split == "eval")]
        return NumberedRows.subset(rows, keep, source=self.train_file)
