"""The README is one screen with links that work in a clone: under 120 lines, and every
relative link or image points at a file inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

from docs_support import ROOT, prose

README = ROOT / "README.md"
MAX_LINES = 120
LINK = re.compile(r"!?\[(?:[^\]]|\n)*?\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def relative_link_errors(page: Path, text: str) -> list[str]:
    errors = []
    for target in LINK.findall(prose(text)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto: and anchors on the same page
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.is_relative_to(ROOT):
            errors.append(f"{target}: outside the repository")
        elif not path.exists():
            errors.append(f"{target}: no such file")
    return errors


def test_readme_is_one_screen() -> None:
    assert len(README.read_text().splitlines()) < MAX_LINES


def test_every_relative_link_in_the_readme_resolves_in_a_clone() -> None:
    text = README.read_text()
    assert LINK.search(text), "the README links into the docs"
    assert relative_link_errors(README, text) == []


def test_a_dead_or_escaping_link_is_reported() -> None:
    text = (
        "See [design](../shared/DESIGN.md), [gone](docs/nope.md), [ok](docs/index.md#x),\n"
        "![picture](docs/dashboard-cluster.png) and [the web](https://example.org).\n"
    )
    assert relative_link_errors(README, text) == [
        "../shared/DESIGN.md: outside the repository",
        "docs/nope.md: no such file",
    ]
