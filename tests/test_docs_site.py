"""The docs site: the generated reference pages are current, and the strict build passes (a broken
link, a page missing from the navigation, a public name without a docstring or a stale generated
page fails it)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def generator():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", ["config.md", "reference/cli.md", "reference/api.md"])
def test_a_generated_page_is_current(page):
    gen = generator()
    path = ROOT / "docs" / page
    assert path.read_text() == gen.PAGES[path](), "stale: run python scripts/gen_docs.py"


def test_the_generated_pages_cover_every_key_command_and_public_name():
    from rlkit.config import describe_fields

    gen = generator()
    config = (ROOT / "docs" / "config.md").read_text()
    assert all(f"| `{key}` |" in config for key, *_ in describe_fields())
    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    for command in ("train", "submit", "status", "logs", "stop", "eval", "list", "plot"):
        assert f"## `rlkit {command}`" in cli
    api = (ROOT / "docs" / "reference" / "api.md").read_text()
    assert all(f"::: {path}" in api for path in gen.public_names().values())


def build(tmp_path: Path, docs_dir: Path | None = None) -> subprocess.CompletedProcess:
    config = ROOT / "mkdocs.yml"
    if docs_dir is not None:  # the same site from another folder of pages
        config = tmp_path / "mkdocs.yml"
        config.write_text((ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs_dir}")
                          .replace("scripts/docs_hooks.py", str(ROOT / "scripts" / "docs_hooks.py")))
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d",
                           str(tmp_path / "site")], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=600)


def test_the_site_builds_in_strict_mode_with_formulas_and_every_page(tmp_path):
    result = build(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    site = tmp_path / "site"
    for page in ("index.html", "quickstart/index.html", "objectives/gbpo/index.html", "reference/api/index.html",
                 "reference/cli/index.html", "config/index.html", "troubleshooting/index.html"):
        assert (site / page).is_file(), page
    assert (site / "assets" / "katex" / "katex.min.js").is_file()  # formulas render offline
    assert '<div class="arithmatex">' in (site / "objectives" / "periodic-async" / "index.html").read_text()
    api = (site / "reference" / "api" / "index.html").read_text()
    assert "Train a causal LM with verifiable rewards" in api  # RLTrainer's docstring, rendered


def test_a_broken_link_fails_the_strict_build(tmp_path):
    import shutil

    pages = tmp_path / "pages"
    shutil.copytree(ROOT / "docs", pages)
    (pages / "quickstart.md").write_text((pages / "quickstart.md").read_text() + "\n[gone](no-such-page.md)\n")
    result = build(tmp_path, pages)
    assert result.returncode != 0 and "no-such-page.md" in result.stderr
