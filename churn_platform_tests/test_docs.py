"""The README stays a front door, and every link between it and docs/ lands somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[1]
DOCUMENTS = [PROJECT / "README.md", *sorted((PROJECT / "docs").glob("*.md"))]
README_MAX_BYTES = 15_000


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings (code blocks left out)."""
    anchors, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            title = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            anchors.add(title.replace(" ", "-"))
    return anchors


def local_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [
        target
        for target in re.findall(r"\]\(([^)\s]+)\)", text)
        if not target.startswith(("http://", "https://", "mailto:"))
    ]


def test_the_readme_reads_in_five_minutes():
    assert (PROJECT / "README.md").stat().st_size <= README_MAX_BYTES


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_local_link_resolves(document):
    broken = []
    for target in local_links(document):
        path, _, anchor = target.partition("#")
        destination = (document.parent / path).resolve() if path else document
        missing_anchor = (
            destination.exists()
            and anchor
            and destination.suffix == ".md"
            and anchor not in heading_anchors(destination)
        )
        if not destination.exists() or missing_anchor:
            broken.append(target)
    assert broken == []


def test_the_readme_links_every_document():
    links = {target.partition("#")[0] for target in local_links(PROJECT / "README.md")}
    assert {f"docs/{p.name}" for p in DOCUMENTS[1:]} <= links
