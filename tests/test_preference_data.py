"""Preference rows are checked before training, every bad row named by its number."""

from __future__ import annotations

import pytest

from rlkit.config import ConfigError, ModelConfig
from rlkit.models import load_tokenizer
from rlkit.preference.data import PreferencePair, load_pairs


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(ModelConfig())


def test_plain_rows_become_pairs_with_their_row_numbers(tokenizer):
    rows = [{"prompt": "2+3=", "chosen": "5", "rejected": "6"}, {"prompt": "1+1=", "chosen": "2", "rejected": "11"}]
    assert load_pairs(rows, "pairs.jsonl", tokenizer, max_length=128) == [
        PreferencePair("2+3=", "5", "6", 1), PreferencePair("1+1=", "2", "11", 2)]


def test_every_bad_row_is_reported_at_once_by_number(tokenizer):
    rows = [
        {"prompt": "2+3=", "chosen": "5", "rejected": "6"},
        {"prompt": "2+3=", "chosen": "5"},
        {"prompt": "2+3=", "chosen": "5", "rejected": "5"},
        {"prompt": " ", "chosen": "5", "rejected": "6"},
        {"prompt": "2+3=", "chosen": "", "rejected": "6"},
        {"prompt": "2+3=", "chosen": "5" * 200, "rejected": "6"},
        "not a row",
    ]
    with pytest.raises(ConfigError) as error:
        load_pairs(rows, "pairs.jsonl", tokenizer, max_length=128)
    message = str(error.value)
    assert message.startswith("pairs.jsonl: 6 bad preference row(s) of 7:")
    assert "row 2: missing column 'rejected'" in message
    assert "row 3: 'chosen' and 'rejected' are identical" in message
    assert "row 4: 'prompt' is empty" in message and "row 5: 'chosen' is empty" in message
    assert "row 6: the pair needs 205 tokens (prompt 4, longer response 200, end token 1), more than the " \
           "model's context of 128" in message
    assert "row 7: expected a mapping" in message and "row 1" not in message


def test_conversational_rows_are_rendered_with_the_chat_template(tokenizer):
    rows = [{"prompt": [{"role": "user", "content": "2+3="}], "chosen": [{"role": "assistant", "content": "5"}],
             "rejected": [{"role": "assistant", "content": "6"}]}]
    with pytest.raises(ConfigError, match="row 1: a conversational prompt needs a tokenizer with a chat template"):
        load_pairs(rows, "pairs", tokenizer)
    import copy

    templated = copy.deepcopy(tokenizer)
    templated.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
                              "{% if add_generation_prompt %}assistant: {% endif %}"
    (pair,) = load_pairs(rows, "pairs", templated)
    assert (pair.prompt, pair.chosen, pair.rejected) == ("user: 2+3=\nassistant: ", "5", "6")
