"""MkDocs hooks of the docs site (``mkdocs.yml``: ``hooks``): the strict build also fails when a
public name has no docstring, or when a generated reference page is stale.

Public means: every name of ``rlkit.__all__``, every extension point the API page lists, and their
public methods and properties (a name without a leading underscore, defined by that class).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        return importlib.import_module("gen_docs")
    finally:
        sys.path.pop(0)


def _resolve(path: str):
    """The object at ``path`` in this checkout (``envs`` is installed as ``rlkit.envs``; here it is
    read where mkdocstrings reads it, from the checkout's own folder)."""
    module, _, attr = path.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def undocumented() -> list[str]:
    gen = _generator()
    paths = list(gen.public_names().values()) + [p for group in gen.EXTENSION_POINTS.values() for p in group]
    missing = []
    for path in paths:
        obj = _resolve(path)
        doc = inspect.getdoc(obj) or ""
        if not doc or (dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}(")):
            missing.append(path)  # a dataclass's generated signature is no documentation
        if inspect.isclass(obj):
            for name, member in vars(obj).items():
                if name.startswith("_") or not (inspect.isfunction(member) or isinstance(member, property)):
                    continue
                if not (member.__doc__ or "").strip():
                    missing.append(f"{path}.{name}")
    return missing


def on_files(files, config, **kwargs):
    """The benchmark plots, served as ``bench-results/NAME.png`` (they are written to bench/results)."""
    from mkdocs.structure.files import File

    for png in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(File.generated(config, f"bench-results/{png.name}", abs_src_path=str(png)))
    return files


def on_config(config, **kwargs):
    # the checkout being documented, whatever rlkit is installed (mkdocs restores sys.path after
    # importing this file, so it is set here)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    missing = undocumented()
    if missing:
        raise PluginError("public names without a docstring: " + ", ".join(missing))
    stale = _generator().stale_pages()
    if stale:
        raise PluginError("stale generated pages (run python scripts/gen_docs.py): "
                          + ", ".join(str(p.relative_to(ROOT)) for p in stale))
    return config
