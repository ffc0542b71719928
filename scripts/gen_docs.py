"""Write the generated reference pages of the docs site; never edit them by hand.

    python scripts/gen_docs.py           # rewrite every generated page
    python scripts/gen_docs.py --check   # exit 1, naming the stale pages, if any is out of date

* ``docs/config.md``: every config key, from the config dataclasses (``rlkit.config``).
* ``docs/reference/cli.md``: every command and option, from the typer app (typer's own
  ``typer rlkit.cli utils docs``).
* ``docs/reference/api.md``: the public Python API (``rlkit.__all__``) and the extension points
  a plugin implements, rendered by mkdocstrings from their docstrings.

``tests/test_docs_site.py`` fails when a page is stale.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

CONFIG_HEADER = """# Configuration reference

Generated from `rlkit/config.py` by `python scripts/gen_docs.py`; do not edit by hand.

Set a key in a YAML file (`rollout:` then `  temperature: 0.7`) or on the command line
(`--rollout.temperature 0.7`). Precedence, lowest first: defaults, `--recipe`, the YAML file,
command-line overrides. The objective's own keys sit beside `objective.name` (see the method
pages); an environment's constructor arguments go under `env.args`.

| key | type | default | meaning |
| --- | --- | --- | --- |
"""

# What a plugin author implements or receives, beside rlkit.__all__ (module path, as the source has it)
EXTENSION_POINTS = {
    "Objectives": ["rlkit.objectives.base.Objective", "rlkit.objectives.base.PolicyBatch",
                   "rlkit.objectives.base.StepStats"],
    "Environments": ["envs.base.Environment", "envs.base.StepResult"],
    "Generation engines": ["rlkit.rollout.engines.base.Engine", "rlkit.rollout.engines.base.Request",
                           "rlkit.rollout.engines.base.SamplingParams", "rlkit.rollout.engines.base.Sample"],
    "Data crossing from rollout to learner": ["rlkit.data.Rollout", "rlkit.data.RolloutGroup"],
}


def render_config() -> str:
    from rlkit.config import describe_fields

    rows = [f"| `{key}` | {type_name.replace('|', 'or')} | `{default!r}` | {text} |"
            for key, type_name, default, text in describe_fields()]
    return CONFIG_HEADER + "\n".join(rows) + "\n"


def render_cli() -> str:
    out = subprocess.run([sys.executable, "-m", "typer", "rlkit.cli", "utils", "docs", "--name", "rlkit",
                          "--title", "CLI reference"], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    title, _, body = out.partition("\n")
    note = ("\nGenerated from the typer app (`rlkit/cli.py`) by `python scripts/gen_docs.py`, with typer's "
            "own `utils docs`; do not edit by hand.\n")
    return title + "\n" + note + body.rstrip() + "\n"


def public_names() -> dict[str, str]:
    """``rlkit.__all__`` (but ``__version__``): name -> the module path its object is defined at."""
    import rlkit

    paths = {}
    for name in rlkit.__all__:
        if name.startswith("__"):
            continue
        obj = getattr(rlkit, name)
        paths[name] = f"{obj.__module__}.{obj.__qualname__}"
    return paths


def render_api() -> str:
    names = public_names()
    groups = {
        "Trainers": [n for n in names if n.endswith("Trainer")],
        "Configuration": [n for n in names if n.endswith("Config")],
        "Plugin decorators": [n for n in names if n[0].islower()],
    }
    lines = ["# Python API", "",
             "Generated from `rlkit.__all__` and the extension points by `python scripts/gen_docs.py`; do not "
             "edit by hand. `from rlkit import NAME` for every name in the first three sections.", ""]
    for title, members in groups.items():
        lines += [f"## {title}", ""]
        for name in members:
            lines += [f"::: {names[name]}", "    options:", "      heading_level: 3", ""]
    for title, paths in EXTENSION_POINTS.items():
        lines += [f"## {title}", ""]
        for path in paths:
            lines += [f"::: {path}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines).rstrip() + "\n"


PAGES = {DOCS / "config.md": render_config, DOCS / "reference" / "cli.md": render_cli,
         DOCS / "reference" / "api.md": render_api}


def stale_pages() -> list[Path]:
    return [path for path, render in PAGES.items() if not path.is_file() or path.read_text() != render()]


def main() -> None:
    if "--check" in sys.argv:
        stale = stale_pages()
        for path in stale:
            print(f"stale: {path.relative_to(ROOT)} (run python scripts/gen_docs.py)")
        sys.exit(1 if stale else 0)
    for path, render in PAGES.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render())
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
