"""Write docs/config.md from the config dataclasses (the single source of truth).

    python scripts/gen_config_docs.py          # rewrite docs/config.md
    python scripts/gen_config_docs.py --check  # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

from rlkit.config import describe_fields

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"

HEADER = """# Configuration reference

Generated from `rlkit/config.py` by `python scripts/gen_config_docs.py`; do not edit by hand.

Set a key in a YAML file (`rollout:` then `  temperature: 0.7`) or on the command line
(`--rollout.temperature 0.7`). Precedence, lowest first: defaults, `--recipe`, the YAML file,
command-line overrides. The objective's own keys sit beside `objective.name` (see
`docs/objectives/`); an environment's constructor arguments go under `env.args`.

| key | type | default | meaning |
| --- | --- | --- | --- |
"""


def render() -> str:
    rows = []
    for key, type_name, default, text in describe_fields():
        escaped = type_name.replace("|", "or")
        rows.append(f"| `{key}` | {escaped} | `{default!r}` | {text} |")
    return HEADER + "\n".join(rows) + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if DOC.read_text() == text else 1)
    DOC.write_text(text)
    print(f"wrote {DOC}")
