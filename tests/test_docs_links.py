"""Every relative link in the README and docs/ resolves to a file or folder of the repository.

A link may not leave the repository (a `../` above its root, an absolute path); a link with an
anchor (`page.md#section`, `#section`) must name a heading of that page (GitHub's anchor rules).
Links inside code (fenced blocks, `inline code`) are not links and are skipped; so are URLs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"(`+)(?!`).+?(?<!`)\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def pages(root: Path = REPO) -> list[Path]:
    """README.md, docs/**/*.md and the README of each top-level folder (hidden folders skipped)."""
    found = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    found += sorted(p for p in root.glob("*/README.md") if not p.parent.name.startswith("."))
    return [p for p in found if p.is_file()]


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    return [t.strip("<>") for t in LINK.findall(body) + REFERENCE.findall(body)]


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-', repeats get -1, -2..."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", text)):
        heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
        slug = re.sub(r"[^\w\- ]", "", heading.lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def problems(page: Path, root: Path = REPO) -> list[str]:
    """What is wrong with the links of one page, one line each (empty: all good)."""
    text = page.read_text(encoding="utf-8")
    found = []
    for target in links(text):
        if not target or SCHEME.match(target):
            continue  # URLs (http:, https:, mailto:) are not checked here
        path, _, anchor = target.partition("#")
        if path.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", path):
            found.append(f"{target}: absolute path")
            continue
        resolved = (page.parent / path).resolve() if path else page.resolve()
        if not resolved.is_relative_to(root.resolve()):
            found.append(f"{target}: leaves the repository")
        elif not resolved.exists():
            found.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved.read_text(encoding="utf-8")):
            found.append(f"{target}: no heading #{anchor} in {resolved.relative_to(root.resolve())}")
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(REPO)))
def test_links_resolve_inside_the_repository(page):
    assert not problems(page), "\n".join(problems(page))


def test_the_readme_and_docs_are_found():
    names = {p.relative_to(REPO).as_posix() for p in pages()}
    assert {"README.md", "docs/configuration.md", "docs/methods/logit_kd.md"} <= names


def test_bad_links_are_reported(tmp_path):
    """The check fails on a missing file, a missing heading, an escape from the root, an absolute path."""
    root = tmp_path / "repo"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "a.md").write_text("# A page\n\n## Some `code`: here\n")
    (root / "README.md").write_text(
        "[ok](docs/a.md) [ok anchor](docs/a.md#some-code-here) [own](#top) [url](https://example.com/x.md)\n"
        "`[in code](missing.md)`\n```\n[in a block](missing.md)\n```\n"
        "[missing](docs/b.md) [bad anchor](docs/a.md#nowhere) [out](../outside.md) [abs](/etc/passwd)\n"
        "# Top\n")
    (tmp_path / "outside.md").write_text("outside\n")
    assert problems(root / "README.md", root) == [
        "docs/b.md: no such file",
        "docs/a.md#nowhere: no heading #nowhere in docs/a.md",
        "../outside.md: leaves the repository",
        "/etc/passwd: absolute path",
    ]
