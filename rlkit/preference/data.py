"""Preference pairs in TRL's format, checked before anything trains.

A row holds ``prompt``, ``chosen`` and ``rejected``: plain text, or conversational (TRL's
"explicit prompt" form: ``prompt`` a list of ``{role, content}`` messages, ``chosen`` and
``rejected`` lists holding the assistant's reply). Conversational prompts are rendered with the
tokenizer's chat template, generation prompt added; the responses are their messages' text.

Every row is checked when the pairs are loaded, and every problem is reported at once with its
1-based row number: a missing column, an empty prompt or response, a chosen response identical to
the rejected one, a pair longer than the model's context, a conversational row without a chat
template to render it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Iterable

from rlkit.config import ConfigError

COLUMNS = ("prompt", "chosen", "rejected")
SHOWN_PROBLEMS = 10  # problems listed in the error; the rest are counted


@dataclass(frozen=True)
class PreferencePair:
    prompt: str  # as the model reads it (a conversational prompt rendered with the chat template)
    chosen: str
    rejected: str
    row: int  # 1-based number of the row in its source
    conversational: bool = False  # the prompt was rendered by the chat template (which wrote its special tokens)


def load_pairs(rows: Iterable[Any], origin: str, tokenizer=None, max_length: int | None = None, *,
               skip_bad: bool = False, system_prompt: str | None = None) -> list[PreferencePair]:
    """The rows as :class:`PreferencePair` s, or a ConfigError naming every bad row.

    With ``tokenizer`` and ``max_length``, a pair whose prompt plus longer response has more than
    ``max_length`` tokens is refused (the model could not score it whole). With ``skip_bad``
    (``data.on_bad_row: skip``) bad rows are dropped instead, and named in a warning.
    """
    rows = list(rows)
    pairs, problems = [], []
    for number, row in enumerate(rows, start=1):
        pair, problem = _pair(row, number, tokenizer, system_prompt)
        if problem is None and max_length is not None and tokenizer is not None:
            problem = _too_long(pair, tokenizer, max_length)
        if problem is None:
            pairs.append(pair)
        else:
            problems.append(f"row {number}: {problem}")
    if problems:
        shown = "\n  ".join(problems[:SHOWN_PROBLEMS])
        more = f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        message = f"{origin}: {len(problems)} bad preference row(s) of {len(rows)}:\n  {shown}{more}"
        if not skip_bad:
            raise ConfigError(message + "\n(set data.on_bad_row: skip to drop such rows)")
        print(f"warning: skipped {message}", file=sys.stderr)
    if not pairs:
        raise ConfigError(f"{origin}: no preference pairs")
    return pairs


def _pair(row: Any, number: int, tokenizer, system_prompt: str | None = None) -> tuple[PreferencePair | None, str | None]:
    if not isinstance(row, dict):
        return None, f"expected a mapping with columns {', '.join(COLUMNS)}, got {type(row).__name__}"
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        return None, f"missing column{'s' if len(missing) > 1 else ''} {', '.join(repr(c) for c in missing)}"
    conversational = isinstance(row["prompt"], list)
    if conversational:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            return None, "a conversational prompt needs a tokenizer with a chat template to render it"
        from rlkit.chat import messages_problem, render_prompt

        problem = messages_problem(row["prompt"])
        if problem is not None:
            return None, f"'prompt': {problem}"
        try:
            prompt = render_prompt(tokenizer, row["prompt"], system_prompt)
        except Exception as exc:  # noqa: BLE001 (a template raises what it likes on bad messages)
            return None, f"the chat template cannot render the prompt ({type(exc).__name__}: {exc})"
    else:
        prompt = row["prompt"]
    texts = {"prompt": prompt, "chosen": _response(row["chosen"]), "rejected": _response(row["rejected"])}
    for column, text in texts.items():
        if not isinstance(text, str):
            return None, f"{column!r} is {type(text).__name__}, not text (or a list of messages)"
        if not text.strip():
            return None, f"{column!r} is empty"
    if texts["chosen"] == texts["rejected"]:
        return None, "'chosen' and 'rejected' are identical"
    return PreferencePair(texts["prompt"], texts["chosen"], texts["rejected"], number, conversational), None


def _response(value: Any) -> Any:
    """A response as text: plain text, or the content of a list of messages (joined)."""
    if isinstance(value, list):
        if not all(isinstance(m, dict) and "content" in m for m in value):
            return value  # reported as not text
        return "".join(str(m["content"]) for m in value)
    return value


def _too_long(pair: PreferencePair, tokenizer, max_length: int) -> str | None:
    prompt = len(tokenizer(pair.prompt, add_special_tokens=not pair.conversational)["input_ids"])
    longest = max(len(tokenizer(pair.chosen, add_special_tokens=False)["input_ids"]),
                  len(tokenizer(pair.rejected, add_special_tokens=False)["input_ids"]))
    if prompt + longest + 1 > max_length:  # + the end token
        return (f"the pair needs {prompt + longest + 1} tokens (prompt {prompt}, longer response {longest}, end "
                f"token 1), more than the model's context of {max_length}")
    return None
