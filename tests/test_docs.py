"""The README stays short and every link in it leads somewhere; the docs site itself is built with
`mkdocs build --strict` in CI, which checks the links between its pages."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_the_readme_stays_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_every_relative_link_in_the_readme_exists() -> None:
    targets = [m.group(1) for m in LINK.finditer((ROOT / "README.md").read_text())]
    local = [t for t in targets if "://" not in t]
    assert local, "the README links to its docs pages"
    missing = [t for t in local if not (ROOT / t).exists()]
    assert missing == []


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert [p for p in pages if f": {p}" not in nav] == []
