"""The book's structure: every chapter listed in _toc.yml exists, uses attnlib, checks claims and has exercises;
and in the built site every internal link resolves."""

import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "_build" / "html"


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        for chapter in part["chapters"]:
            files.append(chapter["file"])
            files.extend(section["file"] for section in chapter.get("sections", []))
    return files


def source(name):
    for suffix in ("", ".md", ".ipynb"):
        path = ROOT / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


TEACHING_CHAPTERS = [name for name in toc_files() if re.match(r"chapters/\d\d_", name)]


def test_the_toc_lists_the_teaching_chapters_in_order_without_gaps():
    numbers = [name.split("/")[1][:2] for name in TEACHING_CHAPTERS]
    assert len(numbers) >= 14 and numbers == [f"{i:02d}" for i in range(1, len(numbers) + 1)]


def test_every_toc_entry_exists():
    missing = [name for name in toc_files() if source(name) is None]
    assert missing == []


@pytest.mark.parametrize("name", TEACHING_CHAPTERS)
def test_teaching_chapter_is_a_notebook_that_uses_attnlib_and_checks_itself(name):
    text = source(name).read_text()
    assert text.startswith("---\njupytext:"), "chapters are MyST notebooks with a jupytext header"
    assert re.search(r"^(import attnlib|from attnlib)", text, re.M), "chapters import attnlib"
    assert "## Claim checks" in text and re.search(r"^\s*assert ", text, re.M)
    assert "## Summary" in text
    assert "## Exercises" in text and ":::{exercise}" in text and ":::{solution}" in text


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.links.append(attrs[key])


def _parse(path, cache={}):  # noqa: B006 - a per-run cache of parsed pages
    if path not in cache:
        parser = _Links()
        parser.feed(path.read_text(errors="replace"))
        cache[path] = parser
    return cache[path]


def _built_site():
    if not (SITE / "index.html").is_file():
        if os.environ.get("ATTNLIB_REQUIRE_BROWSER"):
            pytest.fail("the built site _build/html is missing; build the book first")
        pytest.skip("the built site _build/html is missing (run scripts/build-book.sh)")
    return SITE


def test_internal_links_in_the_built_site_resolve():
    _built_site()
    broken = []
    pages = [p for p in SITE.rglob("*.html") if p.relative_to(SITE).parts[0] not in ("_static", "_sources")]
    assert len(pages) >= len(toc_files())
    for page in pages:
        for link in _parse(page).links:
            parsed = urlparse(link)
            if parsed.scheme or link.startswith(("//", "mailto:", "data:", "javascript:")):
                continue
            target, fragment = urldefrag(unquote(parsed.path) + ("#" + parsed.fragment if parsed.fragment else ""))
            path = (page.parent / target).resolve() if target else page
            if path.is_dir():
                path = path / "index.html"
            if not path.exists():
                broken.append(f"{page.relative_to(SITE)} -> {link}")
            elif fragment and path.suffix == ".html" and fragment not in _parse(path).ids:
                broken.append(f"{page.relative_to(SITE)} -> {link} (no such anchor)")
    assert broken == []


@pytest.mark.parametrize("name", TEACHING_CHAPTERS)
def test_the_site_offers_each_chapter_as_an_executed_notebook(name):
    site = _built_site()
    notebook_path = site / "_sources" / f"{name}.ipynb"
    assert notebook_path.is_file(), f"{notebook_path.relative_to(site)} is missing"
    notebook = json.loads(notebook_path.read_text())
    assert notebook["nbformat"] == 4
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells and any("attnlib" in "".join(cell["source"]) for cell in code_cells)
    assert sum(bool(cell.get("outputs")) for cell in code_cells) >= len(code_cells) // 2, "the notebook is executed"
    page_links = _parse(site / f"{name}.html").links
    assert any(link.endswith(f"_sources/{name}.ipynb") for link in page_links), "the page links its notebook"


# A code line the reader sees must fit the content column of a 1280 px window: 684 px of <pre> less 32 px of
# padding at 8.43 px per character of the theme's 14 px monospace font is 77 characters (tests/test_layout_browser.py
# measures the built pages; this finds the same lines in the source, before a build).
MAX_CODE_LINE = 77


@pytest.mark.parametrize("name", TEACHING_CHAPTERS)
def test_every_shown_code_line_fits_the_column(name):
    import jupytext

    notebook = jupytext.read(source(name))
    long_lines = []
    for cell in notebook.cells:
        tags = set(cell.metadata.get("tags", []))
        if cell.cell_type != "code" or tags & {"remove-input", "remove-cell"}:
            continue
        long_lines += [line for line in cell.source.splitlines() if len(line) > MAX_CODE_LINE]
    assert not long_lines, (f"{name}: {len(long_lines)} code line(s) longer than {MAX_CODE_LINE} characters, "
                            "which would scroll sideways at 1280 px:\n" + "\n".join(long_lines))


@pytest.mark.parametrize("name", [name for name in toc_files() if source(name) and source(name).suffix == ".md"])
def test_every_colon_fence_closes_on_a_line_of_its_own(name):
    """A ``:::`` at the end of a line of text does not close a directive: the box swallows what follows it (in
    JupyterLab the reader sees the colons)."""
    text = source(name).read_text()
    stray = [line for line in text.splitlines() if re.search(r"\S\s+:{3,}\s*$", line)]
    assert not stray, f"{name}: a closing ':::' shares its line with text:\n" + "\n".join(stray)
