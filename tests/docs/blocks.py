"""The runnable code blocks of the documentation, as marked in the Markdown.

A fenced block directly preceded by a marker comment runs in CI (tests/docs/test_tutorials.py):

    <!-- docs-test: run -->                               run it as written
    <!-- docs-test: run; "--steps 1000" => "--steps 30" -->   run it with these replacements
    <!-- docs-test: skip (why) -->                        do not run this block
    <!-- docs-test: page-skip (why) -->                   (anywhere) run nothing on this page

Replacements give CI a small size without changing what the reader sees; each must match the
block (a stale one is an error). ``{port}`` in a replacement is filled with a free port.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"
LANGUAGES = ("bash", "python")

_MARKER = re.compile(r"^\s*<!-- docs-test: (run|skip|page-skip)(.*?)-->\s*$")
_REPLACEMENT = re.compile(r'"((?:[^"\\]|\\.)*)"\s*=>\s*"((?:[^"\\]|\\.)*)"')
_FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


@dataclass
class Block:
    """One fenced code block and what its marker says about it."""

    page: Path
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    action: str | None = None  # "run", "skip" or None (unmarked)
    replacements: list[tuple[str, str]] = field(default_factory=list)

    def where(self) -> str:
        """``docs/page.md:LINE`` (the full path for pages outside docs/)."""
        page = self.page.relative_to(DOCS.parent) if self.page.is_relative_to(DOCS) else self.page
        return f"{page}:{self.line}"

    def runnable_code(self, port: int) -> str:
        """The code with its replacements applied; raises if one no longer matches."""
        code = self.code
        for old, new in self.replacements:
            if old not in code:
                raise ValueError(
                    f"{self.where()}: replacement {old!r} matches nothing in the block"
                )
            code = code.replace(old, new.replace("{port}", str(port)))
        return code


@dataclass
class Page:
    """A documentation page's code blocks, and whether the whole page is marked not run."""

    path: Path
    blocks: list[Block]
    skip_reason: str | None = None


def _parse_marker(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    match = _MARKER.match(text)
    if match is None:
        return "", "", []
    action, rest = match.group(1), match.group(2)
    pairs = [
        (old.replace('\\"', '"'), new.replace('\\"', '"'))
        for old, new in _REPLACEMENT.findall(rest)
    ]
    return action, rest.strip(" ;"), pairs


def read_page(path: Path) -> Page:
    """Every fenced block of ``path`` with its marker (markers inside fences do not count)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    page = Page(path, [])
    pending: tuple[str, list[tuple[str, str]]] | None = None
    i = 0
    while i < len(lines):
        text = lines[i]
        fence = _FENCE.match(text)
        if fence is None:
            action, rest, pairs = _parse_marker(text)
            if action == "page-skip":
                page.skip_reason = rest.strip("() ") or "no reason given"
            elif action:
                pending = (action, pairs)
            elif text.strip():
                pending = None  # a marker belongs to the block right after it
            i += 1
            continue
        indent, ticks, language = fence.groups()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(ticks):
            body.append(lines[j][len(indent) :] if lines[j].startswith(indent) else lines[j])
            j += 1
        block = Block(path, i + 1, language, "\n".join(body) + "\n")
        if pending is not None:
            block.action, block.replacements = pending
        page.blocks.append(block)
        pending = None
        i = j + 1
    return page


def tutorial_pages() -> list[Page]:
    """The tutorial pages (their index aside), sorted by name."""
    return [read_page(p) for p in sorted((DOCS / "tutorials").glob("*.md")) if p.name != "index.md"]


def marked_pages() -> list[Page]:
    """Every documentation page with at least one block marked to run."""
    pages = [read_page(p) for p in sorted(DOCS.rglob("*.md"))]
    return [p for p in pages if p.skip_reason is None and any(b.action == "run" for b in p.blocks)]
