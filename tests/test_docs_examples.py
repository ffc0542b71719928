"""Every code example of the docs runs, with small settings, so the docs cannot rot.

* ``python``: run as a script, in a fresh folder: in this process (a trainer joins the suite's
  Ray session), or in a process of its own when it registers plugins (``@rlkit.``), which would
  stay registered here.
* ``yaml``: an rlkit config (every top-level key a config section or key), loaded and validated
  as ``rlkit train that.yaml`` would.
* ``bash``: each command through the CLI. ``rlkit train`` gets small settings unless the
  example sets them (``--max_steps 2``, no saves, 8 evaluation rows, no progress bar or plots);
  an example followed by a ``text`` block must fail with that message. The page's file blocks
  (``# my_rewards.py``) are written beside it first.

A block that cannot run here says why on the line before it (``<!-- not run: ... -->``). The
counts are printed at the end of the session (``-s``) and checked here.
"""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import docs_examples  # noqa: E402

ALL = [e for page in docs_examples.pages() for e in docs_examples.examples(page)]
RUN = [e for e in ALL if e.not_run is None]
SMALL = {"--max_steps": "2", "--save_steps": "0", "--data.eval_limit": "8", "--logging.progress": "false",
         "--logging.plot": "false", "--logging.tensorboard": "false"}


def test_examples_are_found_and_every_one_not_run_says_why():
    counts = {lang: sum(e.language == lang for e in RUN) for lang in docs_examples.LANGUAGES}
    skipped = [e for e in ALL if e.not_run is not None]
    print(f"\ndocs examples: {len(RUN)} executed ({counts}), {len(skipped)} not run:")
    for e in skipped:
        print(f"  {e.name}: {e.not_run}")
    assert len(RUN) >= 30 and all(e.not_run.strip() for e in skipped)


@pytest.mark.parametrize("example", RUN, ids=[e.name for e in RUN])
def test_a_docs_example_runs(example, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if example.language == "python":
        script = tmp_path / "example.py"
        script.write_text(example.code)
        if "@rlkit." not in example.code:
            runpy.run_path(str(script), run_name="__main__")
            return
        result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, f"{example.name} failed:\n{result.stderr[-3000:]}"
    elif example.language == "yaml":
        check_config(example, tmp_path)
    else:
        for page_file in (e for e in ALL if e.page == example.page and e.file_name):
            Path(page_file.file_name).write_text(page_file.code)
        run_commands(example)


def check_config(example, tmp_path: Path) -> None:
    from rlkit.config import RLConfig
    from rlkit.validation import load_config

    data = yaml.safe_load(example.code)
    sections = set(RLConfig().to_dict())
    assert isinstance(data, dict) and set(data) <= sections, (
        f"{example.name}: not an rlkit config (keys {sorted(data)}); say why it is not run")
    path = tmp_path / "example.yaml"
    path.write_text(example.code)
    load_config(path)


PASSED: set[tuple[str, ...]] = set()  # training commands that already ran in this session, but for their folder


def run_commands(example) -> None:
    from typer.testing import CliRunner

    from rlkit.cli import app

    assert example.commands, f"{example.name}: an empty bash block"
    for i, words in enumerate(example.commands):
        last = i == len(example.commands) - 1
        assert words[0] == "rlkit", (f"{example.name}: `{' '.join(words)}` is not an rlkit command; make it one "
                                     "or say why it is not run")
        # a page's file named by a command (my_rewards.py:brevity) is where the page's folder is: the
        # suite's Ray workers started elsewhere, and resolve relative paths from there
        args = [_page_file_absolute(word) for word in words[1:]]
        if args[0] == "train" and "--resume" not in args:
            args += [item for key, value in SMALL.items() if key not in args for item in (key, value)]
            if "--output_dir" not in args:
                args += ["--output_dir", f"runs/example-{i}"]
            same = _without_output_dir(args)
            if same in PASSED and example.expected is None:
                continue  # the same training on another page already ran (the pages repeat the first run)
        result = CliRunner().invoke(app, args)
        output = " ".join((result.output or "").split())
        if example.expected is not None and last:
            assert result.exit_code != 0, f"{example.name}: `{' '.join(words)}` was meant to fail"
            assert example.expected in output, f"{example.name}: printed {output[-1500:]!r}"
        else:
            assert result.exit_code == 0, f"{example.name}: `{' '.join(words)}` failed: {output[-3000:]}"
            if args[0] == "train":
                PASSED.add(_without_output_dir(args))


def _without_output_dir(args: list[str]) -> tuple[str, ...]:
    i = args.index("--output_dir") if "--output_dir" in args else len(args)
    return tuple(args[:i] + args[i + 2:])


def _page_file_absolute(word: str) -> str:
    """``my_rewards.py:brevity`` -> ``/the/example/folder/my_rewards.py:brevity`` (inside lists too)."""
    return re.sub(r"(?<![\w/.])([\w-]+\.py):", lambda m: f"{Path(m.group(1)).resolve()}:"
                  if Path(m.group(1)).is_file() else m.group(0), word)
