"""The documents' cross-references resolve: links between the Markdown files, and the sections the code cites.

The docs cite each other by relative link (``[..](performance.md#what-is-measured)``) and the
code cites them by file and section title (``docs/performance_log.md, "The hashes compiled"``).
Both go stale when a section is renamed or moved to another file; these tests find every such
reference and check that its file exists and has a heading of that anchor, or one that begins
with that title.
"""

from __future__ import annotations

import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# a document, then (after a comma or an opening parenthesis, across comment line breaks) a quoted title
CITATION = re.compile(
    r"((?:docs/)?[a-z_]+\.md)(?:\]\([^)]*\))?"  # the file, perhaps as a link
    r"(?:,|;| \()\s*(?:#\s*)?(?:section\s+)?\"([^\"]{3,160})\""  # then the title
)


def headings(path: Path) -> list[str]:
    """The heading lines' texts of a Markdown file, outside fenced code."""
    found, fenced = [], False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            found.append(line.lstrip("#").strip())
    return found


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Every anchor of a file, repeated headings numbered as GitHub numbers them (-1, -2, ...)."""
    seen: dict[str, int] = {}
    result = set()
    for title in headings(path):
        base = anchor(title)
        seen[base] = seen.get(base, -1) + 1
        result.add(base if seen[base] == 0 else f"{base}-{seen[base]}")
    return frozenset(result)


def tracked(*patterns: str) -> list[Path]:
    listed = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [ROOT / name for name in listed.stdout.split()]


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        name, _, fragment = target.partition("#")
        linked = (path.parent / name).resolve() if name else path
        if not linked.exists():
            broken.append(f"{target}: no file {name}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    return broken


def broken_citations(path: Path) -> list[str]:
    """The ``docs/FILE.md, "Title"`` citations of ``path`` whose file has no heading beginning with that title."""
    text = re.sub(r"\s*\n\s*(?:#\s*|\*\s*)?", " ", path.read_text())  # titles broken across comment lines
    broken = []
    for name, title in CITATION.findall(text):
        if name.startswith("docs/"):
            document = ROOT / name
        else:  # beside the citing file (a document citing another), else among the docs
            document = path.parent / name if (path.parent / name).exists() else ROOT / "docs" / name
        if not document.exists():
            broken.append(f'{name}, "{title}": no file')
            continue
        plain = title.replace("`", "")
        if not any(heading.replace("`", "").startswith(plain) for heading in headings(document)):
            broken.append(f'{name}, "{title}": no such section')
    return broken


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: path.name)
def test_every_relative_link_of_the_documents_reaches_a_file_and_heading(path):
    assert broken_links(path) == []


def test_every_section_the_code_and_documents_cite_exists_in_that_document():
    cited = tracked("econspin", "tests", "experiments", "scenarios", "Makefile", "README.md", "docs")
    broken = {
        str(path.relative_to(ROOT)): found
        for path in cited
        if path.suffix in {".py", ".md", ".yaml", ""} and path.is_file() and path != Path(__file__).resolve()
        and (found := broken_citations(path))  # (this file's own examples cite a document that is not there)
    }
    assert broken == {}


def test_a_stale_link_and_a_stale_citation_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    document = tmp_path / "docs" / "a.md"
    document.write_text("# A\n\n## The first part\n\n[ok](#the-first-part) [stale](#the-second-part) [gone](b.md)\n")
    assert broken_links(document) == ["#the-second-part: no heading #the-second-part in a.md", "b.md: no file b.md"]
    assert anchor("The round compiled: `run.compile` (torch.compile)") == "the-round-compiled-runcompile-torchcompile"
    cites = tmp_path / "docs" / "c.md"
    cites.write_text('see a.md, "The first part" and a.md, "The second part"\n')
    assert broken_citations(cites) == ['a.md, "The second part": no such section']
