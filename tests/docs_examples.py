"""The code examples of the docs pages, as ``tests/test_docs_examples.py`` runs them.

An example is a fenced block of ``python``, ``bash`` or ``yaml`` in a page under ``docs/`` (the
generated reference pages aside). A block is not run only when the line before its fence says
why: ``<!-- not run: downloads a 7B model -->``; the test counts and prints those. A ``bash``
block followed by a ``text`` block is an error example: the text is what the last command prints.
A ``python`` block whose first line is a file name (``# my_rewards.py``) is also that file, written
beside the page's ``bash`` examples, which name it.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = {"config.md", "reference/cli.md", "reference/api.md"}
LANGUAGES = ("python", "bash", "yaml")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(.+?)\s*-->$")
FENCE = re.compile(r"^(\s*)```(\w*)")
FILE_NAME = re.compile(r"^#\s*([\w./-]+\.py)\s*$")


@dataclass
class Example:
    page: str  # relative to docs/
    line: int  # of the opening fence, 1-based
    language: str
    code: str
    not_run: str | None = None  # the reason, when the page says it is not run
    expected: str | None = None  # bash: what its last command prints (the text block after it)
    commands: list[list[str]] = field(default_factory=list)  # bash: the commands, split

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file_name(self) -> str | None:
        """The file this python block is, when its first line names one (``# my_rewards.py``)."""
        match = FILE_NAME.match(self.code.splitlines()[0]) if self.language == "python" and self.code else None
        return match.group(1) if match else None


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.relative_to(DOCS).as_posix() not in GENERATED)


def examples(page: Path) -> list[Example]:
    lines = page.read_text().splitlines()
    found: list[Example] = []
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, language = match.groups()
        end = i + 1
        while end < len(lines) and not lines[end].strip().startswith("```"):
            end += 1
        body = "\n".join(line[len(indent):] for line in lines[i + 1:end])
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if language in LANGUAGES:
            reason = NOT_RUN.match(previous)
            example = Example(page.relative_to(DOCS).as_posix(), i + 1, language, body,
                              reason.group(1) if reason else None)
            if language == "bash":
                example.commands = split_commands(body)
            found.append(example)
        elif language == "text" and found and found[-1].language == "bash" and found[-1].line < i and \
                _only_blank_between(lines, found[-1], i):
            found[-1].expected = " ".join(body.split())
        i = end + 1
    return found


def _only_blank_between(lines: list[str], example: Example, fence: int) -> bool:
    closing = example.line + example.code.count("\n") + 1  # 0-based index of its closing fence
    return all(not line.strip() for line in lines[closing + 1:fence])


def split_commands(script: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    commands, pending = [], ""
    for line in script.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            commands.append(words)
    return commands
