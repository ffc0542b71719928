"""docs/from-trl.md maps TRL's GRPOConfig fields to rlkit keys: every mapped field exists in the
installed TRL, and every rlkit key takes its example value."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from trl import GRPOConfig

from rlkit.config import RLConfig, apply_overrides
from rlkit.validation import validate

PAGE = Path(__file__).parents[1] / "docs" / "from-trl.md"


def table_rows() -> list[tuple[str, str, str]]:
    rows = []
    for line in PAGE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0] != "GRPOConfig":
            rows.append((cells[0].strip("`"), cells[1].strip("`"), cells[2].strip("`")))
    return rows


def test_the_table_covers_the_fields_users_set_most():
    fields = {name for name, _, _ in table_rows()}
    assert len(fields) >= 35
    assert {"learning_rate", "num_generations", "beta", "loss_type", "max_completion_length"} <= fields


@pytest.mark.parametrize("trl_field, key, example", table_rows())
def test_each_mapped_key_loads(trl_field, key, example):
    assert trl_field in {f.name for f in dataclasses.fields(GRPOConfig)}, f"GRPOConfig has no {trl_field}"
    if key == "—":
        return
    config = RLConfig()
    apply_overrides(config, {key: example})
    validate(config)
