"""README.md stays a page a newcomer reads, and every page it leads to is reachable.

- README.md is at most 15 KiB; the rest lives in docs/ (the order tests/test_readme.py reads the
  pages in is its DOC_PAGES).
- every relative link in README.md and docs/*.md names a file in the repository, and every
  `#anchor` a heading of its target, slugged as GitHub slugs headings;
- README.md links every docs page;
- the test line README.md (and docs/testing.md) shows is the one `.ci/run` runs.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_LIMIT = 15 * 1024  # bytes
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~)")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks and HTML comments, inline code removed."""
    lines, fenced = [], False
    for number, line in enumerate(re.sub(r"<!--.*?-->", "", text, flags=re.S).splitlines(), 1):
        if FENCE.match(line.lstrip()):
            fenced = not fenced
        elif not fenced:
            lines.append((number, re.sub(r"`[^`\n]*`", "", line)))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (letters, digits, `_`,
    hyphens and spaces stay), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose(page.read_text()):
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[tuple[int, str]]:
    return [(number, target) for number, line in _prose(page.read_text())
            for target in LINK.findall(line)]


def _where(page: Path, number: int) -> str:
    return f"{page.relative_to(REPO)}:{number}"


def test_slug_follows_github():
    assert slug("Accuracy: mvdeploy eval and the trained fixture") == \
        "accuracy-mvdeploy-eval-and-the-trained-fixture"
    assert slug("Core ML on Linux: a reference executor") == "core-ml-on-linux-a-reference-executor"
    assert slug("The patch-size study") == "the-patch-size-study"
    assert slug("`export.layout` and 2\u00d7 speed_up") == "exportlayout-and-2-speed_up"


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, (
        f"README.md is {size:,} bytes, over {README_LIMIT:,}: move detail into a docs/ page")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    problems = []
    for number, target in links(page):
        if target.startswith(EXTERNAL):
            continue
        path, _, anchor = unquote(target).partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = _where(page, number)
        try:
            inside = PurePosixPath(resolved.relative_to(REPO).as_posix())
        except ValueError:
            problems.append(f"{where}: {target} leaves the repository")
            continue
        if inside.parts[:1] == ("shared",):
            problems.append(f"{where}: {target} points into shared/, which a clone lacks")
        elif not resolved.exists():
            problems.append(f"{where}: {target}: no such file")
        elif anchor and resolved.suffix != ".md":
            problems.append(f"{where}: {target}: an anchor into a file that is not Markdown")
        elif anchor and anchor not in anchors(resolved):
            problems.append(f"{where}: {target}: no heading #{anchor} in {inside}")
    assert not problems, "\n".join(problems)


def test_readme_links_every_docs_page():
    linked = {(REPO / unquote(target).partition("#")[0]).resolve()
              for _, target in links(README) if not target.startswith(EXTERNAL)}
    missing = [p.relative_to(REPO).as_posix() for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"README.md does not link {', '.join(missing)}"


def test_every_docs_page_has_a_title_and_an_intro():
    for page in PAGES[1:]:
        title, blank, intro, *_ = page.read_text().splitlines()
        assert title.startswith("# ") and not blank and intro.strip() and intro[0] != "#", (
            f"{page.relative_to(REPO)}: starts with a '# Title', a blank line and a one-line intro")


def test_the_test_line_is_the_one_ci_runs():
    (ci_line,) = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
                  if "python -m pytest" in line]
    for page in (README, REPO / "docs" / "testing.md"):
        shown = [line for line in page.read_text().splitlines()
                 if "python -m pytest" in line and line.startswith("python3 -m venv")]
        assert shown == [ci_line], f"{page.relative_to(REPO)} shows another test line than .ci/run"
