"""The docs stay true: every link resolves, every `make` target they name exists, every
page is linked from the README, and the README stays the newcomer's page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness.helpers import ROOT

PAGES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "infra" / "README.md",
    ROOT / "deploy" / "k8s" / "README.md",
]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"\bmake ([a-z][a-z0-9-]*)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    in_code = False
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            found.add(slug(line.lstrip("#")))
    return found


def targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))


def test_slugs_follow_github() -> None:
    assert slug("Live streams: `GET /stream`, `GET /streams/{sid}/events`") == (
        "live-streams-get-stream-get-streamssidevents"
    )
    assert slug("States and the watchdog") == "states-and-the-watchdog"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_link_resolves(page: Path) -> None:
    broken = []
    for link in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://", link) or link.startswith("mailto:"):
            continue  # the web is not reachable from here; internal links are what drift
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists() or (anchor and target.suffix == ".md" and anchor not in anchors(target)):
            broken.append(link)
    assert not broken, f"{page.name}: broken links {broken}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_make_target_named_exists(page: Path) -> None:
    named = set(MAKE.findall(page.read_text()))
    missing = sorted(named - targets())
    assert not missing, f"{page.name} names make targets the Makefile lacks: {missing}"


def test_every_doc_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    unlinked = [p.name for p in PAGES[1:] if p.parent.name == "docs" and f"(docs/{p.name})" not in readme]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_the_readme_stays_a_newcomers_page() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "depth goes into docs/, by topic"
    for must in ("make run", "make test", "curl -F image=@", "curl -N", "## Layout", "## Documentation"):
        assert must in readme, must
