"""The layout of every chapter page in a real browser (Debian's Chromium driven by Playwright), served from 127.0.0.1.

A reader on a laptop (a 1280 px window) should never have to scroll a code block, an output or an equation sideways,
and a reader on a narrow window (800 px) may have to scroll one but must never find part of it cut off. Every
interactive figure stays inside the content column, every heatmap names its rows and columns, every image says what
it shows, and no output shows a Python object's address. The pages are the chapters found in the built site
(``chapters/NN_*.html``), so a chapter added later is held to the same rules. Failure messages name the page, the
element and the widths measured. Screenshots of failing pages go to test-artifacts/.

ATTNLIB_SITE=<folder> tests another built copy of the site. Without the built site or Chromium these tests skip,
saying why, unless ATTNLIB_REQUIRE_BROWSER=1, which turns the skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ATTNLIB_SITE", ROOT / "_build" / "html"))
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
REQUIRED = os.environ.get("ATTNLIB_REQUIRE_BROWSER") == "1"
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-gpu"]
WIDGET_VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]'
WIDTHS = (1280, 800)  # a laptop window, and a narrow one where the side bars have folded away

pytestmark = pytest.mark.browser


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (ATTNLIB_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(reason)


def chapter_pages() -> list[str]:
    """Every numbered chapter of the built site, as paths relative to its root."""
    return sorted(p.relative_to(SITE).as_posix() for p in (SITE / "chapters").glob("[0-9][0-9]_*.html"))


PAGES = chapter_pages() if (SITE / "chapters").is_dir() else ["chapters/01_qkv.html"]

# One pass over a loaded page, in the browser: everything the tests below check, as plain data. Elements are named
# by a short CSS-like path with the first characters of their text, so a failure can be found on the page.
MEASURE = r"""
() => {
  const column = document.querySelector("article.bd-article") || document.querySelector("main") || document.body;
  const columnBox = column.getBoundingClientRect();
  const name = (node) => {
    const parts = [];
    for (let n = node; n && n !== column && parts.length < 4; n = n.parentElement) {
      let part = n.tagName.toLowerCase();
      if (n.id) part += "#" + n.id;
      else if (typeof n.className === "string" && n.className.trim())
        part += "." + n.className.trim().split(/\s+/).slice(0, 2).join(".");
      parts.unshift(part);
    }
    const section = node.closest("section[id]");
    const text = (node.textContent || "").replace(/\s+/g, " ").trim().slice(0, 60);
    return `${parts.join(" > ")}${section ? " in #" + section.id : ""} ("${text}")`;
  };
  // The nearest box that clips or scrolls sideways: the element itself or an ancestor inside the column.
  const clipper = (node) => {
    for (let n = node; n && n !== column.parentElement; n = n.parentElement) {
      const overflow = getComputedStyle(n).overflowX;
      if (overflow !== "visible") return { node: n, overflow };
    }
    return null;
  };
  const candidates = [...column.querySelectorAll(
    "pre, div.cell_output .output, div.math, mjx-container[display='true'], .MathJax_Display, table")];
  const wide = [];
  const clipped = [];
  const outside = [];
  for (const node of candidates) {
    if (!node.offsetParent && getComputedStyle(node).position !== "fixed") continue; // not shown (a closed toggle)
    const box = node.getBoundingClientRect();
    if (box.width === 0) continue;
    const own = { scroll: node.scrollWidth, client: node.clientWidth };
    const holder = clipper(node);
    const outer = holder ? { scroll: holder.node.scrollWidth, client: holder.node.clientWidth } : null;
    if (own.scroll > own.client + 1 || (outer && outer.scroll > outer.client + 1)) {
      wide.push(`${name(node)}: content ${own.scroll} px in ${own.client} px` +
        (outer ? `; its ${holder.overflow} box ${name(holder.node)}: ${outer.scroll} px in ${outer.client} px` : ""));
    }
    for (let n = node; n && n !== column.parentElement; n = n.parentElement) {
      const overflow = getComputedStyle(n).overflowX;
      if ((overflow === "hidden" || overflow === "clip") && n.scrollWidth > n.clientWidth + 1) {
        clipped.push(`${name(node)}: cut by overflow-x ${overflow} on ${name(n)}: ${n.scrollWidth} px of ` +
          `content shown in ${n.clientWidth} px`);
        break;
      }
    }
    if (box.right > columnBox.right + 1 && (!holder || holder.node.contains(column))) {
      outside.push(`${name(node)}: right edge ${Math.round(box.right)} px, column ends at ` +
        `${Math.round(columnBox.right)} px`);
    }
  }
  const widgets = [...column.querySelectorAll(".attnlib-figure")].map((node) => {
    const box = node.getBoundingClientRect();
    return { name: name(node), left: box.left, right: box.right, scroll: node.scrollWidth, client: node.clientWidth };
  });
  const heatmaps = [...column.querySelectorAll("svg[data-role=heatmap]")].map((node) => ({
    name: name(node.closest(".attnlib-figure") || node),
    rows: new Set([...node.querySelectorAll("rect[data-i]")].map((r) => r.dataset.i)).size,
    columns: new Set([...node.querySelectorAll("rect[data-j]")].map((r) => r.dataset.j)).size,
    rowLabels: [...node.querySelectorAll("text[data-row]")].filter((t) => t.textContent.trim()).length,
    columnLabels: [...node.querySelectorAll("text[data-column]")].filter((t) => t.textContent.trim()).length,
  }));
  const images = [...document.querySelectorAll("img")].map((node) => ({
    src: node.getAttribute("src") || "", alt: node.getAttribute("alt"),
  }));
  const outputs = [...column.querySelectorAll("div.cell_output")].map((node) => ({
    name: name(node), text: node.innerText,
  }));
  // The KV-cache figure: the attention bars must sit beside the cache rows (same top) and name every row.
  const caches = [...column.querySelectorAll(".attnlib-kv")].map((node) => {
    const keys = node.querySelector("svg[data-role=K-cache]");
    const bars = node.querySelector("svg[data-role=attention]");
    return { name: name(node), keysTop: keys && keys.getBoundingClientRect().top,
             barsTop: bars && bars.getBoundingClientRect().top, rows: keys ? Number(keys.dataset.rows) : 0,
             barLabels: bars ? [...bars.querySelectorAll("text[data-row]")].filter((t) => t.textContent.trim()).length
                             : 0 };
  });
  // The box every chapter opens with: the first thing after the title.
  const title = column.querySelector("h1");
  let next = title ? title.nextElementSibling : null;
  const box = next && next.classList.contains("admonition")
    ? (next.querySelector(".admonition-title") || {}).textContent || "" : null;
  const icon = document.querySelector('link[rel~="icon"]');
  return { column: { left: columnBox.left, right: columnBox.right, width: columnBox.width },
           wide, clipped, outside, widgets, heatmaps, images, outputs, caches, box,
           favicon: icon ? icon.getAttribute("href") : null };
}
"""


@pytest.fixture(scope="module")
def site_url():
    if not (SITE / "index.html").is_file():
        unavailable(f"the built site is missing ({SITE}); run scripts/build-book.sh first")

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=SITE))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def measured(site_url):
    """measured(page, width): the page's measurements at that window width, each page and width loaded once."""
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not installed at {CHROMIUM} (on Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        results: dict[tuple[str, int], dict] = {}

        def measure(path: str, width: int) -> dict:
            if (path, width) not in results:
                # Load the page once, at the first width, and measure it at every width by resizing the window.
                context = chromium.new_context(viewport={"width": WIDTHS[0], "height": 900})
                try:
                    page = context.new_page()
                    page.goto(site_url + path, wait_until="load")
                    page.wait_for_load_state("networkidle")
                    views = page.locator(WIDGET_VIEW).count()
                    if views:  # html-manager draws the saved widgets after the page has loaded
                        page.wait_for_function(
                            f"document.querySelectorAll('.attnlib-figure').length >= {views}", timeout=30_000)
                    # MathJax typesets after load; measure the typeset equations, not their TeX source.
                    page.evaluate("async () => { if (window.MathJax && MathJax.startup)"
                                  " await MathJax.startup.promise; }")
                    for each_width in WIDTHS:
                        page.set_viewport_size({"width": each_width, "height": 900})
                        page.wait_for_timeout(300)  # the theme and the figures lay out again
                        results[path, each_width] = page.evaluate(MEASURE)
                        if any(results[path, each_width][key] for key in ("wide", "clipped", "outside")):
                            ARTIFACTS.mkdir(exist_ok=True)
                            page.screenshot(path=str(ARTIFACTS / f"layout-{Path(path).stem}-{each_width}.png"),
                                            full_page=True)
                finally:
                    context.close()
            return results[path, width]

        yield measure
        chromium.close()


def listing(problems: list[str]) -> str:
    return "\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", PAGES)
def test_nothing_scrolls_sideways_at_1280(measured, path):
    found = measured(path, 1280)
    problems = found["wide"] + found["outside"]
    assert not problems, (f"{path} at a 1280 px window (column {found['column']['width']:.0f} px wide): "
                          f"{len(problems)} code, output or equation boxes need sideways scrolling or stick out of "
                          f"the column:{listing(problems)}")


@pytest.mark.parametrize("path", PAGES)
def test_nothing_is_cut_off_at_800(measured, path):
    found = measured(path, 800)
    assert not found["clipped"], (f"{path} at an 800 px window (column {found['column']['width']:.0f} px wide): "
                                  f"content hidden by overflow-x hidden/clip:{listing(found['clipped'])}")


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("path", PAGES)
def test_figures_stay_inside_the_column(measured, path, width):
    found = measured(path, width)
    left, right = found["column"]["left"], found["column"]["right"]
    problems = [f"{w['name']}: {w['left']:.0f}–{w['right']:.0f} px, column {left:.0f}–{right:.0f} px"
                for w in found["widgets"] if w["left"] < left - 1 or w["right"] > right + 1]
    if width == 1280:  # on a laptop window a figure's own content fits too (no scroll bar inside it)
        problems += [f"{w['name']}: content {w['scroll']} px in {w['client']} px"
                     for w in found["widgets"] if w["scroll"] > w["client"] + 1]
    assert not problems, f"{path} at a {width} px window: figures outside the column:{listing(problems)}"


@pytest.mark.parametrize("path", PAGES)
def test_every_heatmap_labels_its_tokens(measured, path):
    found = measured(path, 1280)
    problems = [f"{h['name']}: {h['rows']} rows with {h['rowLabels']} labels, {h['columns']} columns with "
                f"{h['columnLabels']} labels" for h in found["heatmaps"]
                if h["rowLabels"] != h["rows"] or h["columnLabels"] != h["columns"]]
    assert not problems, f"{path}: heatmaps without token labels:{listing(problems)}"


@pytest.mark.parametrize("path", PAGES)
def test_kv_cache_bars_sit_beside_the_cache_with_token_labels(measured, path):
    found = measured(path, 1280)
    problems = [f"{c['name']}: bars start at {c['barsTop']} px, the K cache at {c['keysTop']} px; "
                f"{c['barLabels']} bar labels for {c['rows']} cached rows" for c in found["caches"]
                if c["barsTop"] is not None and (abs(c["barsTop"] - c["keysTop"]) > 1 or c["barLabels"] != c["rows"])]
    assert not problems, f"{path} at a 1280 px window: the attention bars wrapped or lost their labels:" \
                         f"{listing(problems)}"


@pytest.mark.parametrize("path", PAGES)
def test_every_chapter_opens_with_its_box(measured, path):
    found = measured(path, 1280)
    assert found["box"] == "In this chapter", (f"{path}: the first thing after the title must be the admonition "
                                               f"titled 'In this chapter', found {found['box']!r}")


@pytest.mark.parametrize("path", PAGES)
def test_pages_have_a_favicon(measured, path):
    found = measured(path, 1280)
    assert found["favicon"], f"{path}: no <link rel=icon>"
    target = (SITE / path).parent / found["favicon"]
    assert target.resolve().is_file(), f"{path}: the favicon {found['favicon']} is not in the site"


def meaningless_alt(alt: str | None, src: str) -> bool:
    """An alt text that does not describe the picture: none, a file name, a hash, or a word or two."""
    if alt is None:
        return True
    text = alt.strip()
    stem = Path(src).stem
    return (len(text.split()) < 3 or re.search(r"\.(png|jpe?g|svg|gif|webp)\b", text, re.IGNORECASE) is not None
            or re.search(r"[0-9a-f]{16,}", text) is not None or (stem and stem in text))


def test_object_repr_rule():
    assert OBJECT_REPR.search("<torch._C.Generator at 0x7f3a2c1b5d30>")
    assert OBJECT_REPR.search("<matplotlib.image.AxesImage at 0x7f3a2c1b5d30>")
    assert not OBJECT_REPR.search("tensor([1, 2]) and <mask> at position 3")


def test_alt_text_rule():
    assert meaningless_alt("d81b6e4c0f3a9e2b7c1d5e8f90a1b2c3.png", "_images/d81b6e4c0f3a9e2b7c1d5e8f90a1b2c3.png")
    assert meaningless_alt("figure", "_images/a.png")
    assert meaningless_alt(None, "_images/a.png")
    assert not meaningless_alt("Attention weights at three temperatures", "_images/0af31.png")


@pytest.mark.parametrize("path", PAGES)
def test_every_image_has_a_meaningful_alt_text(measured, path):
    found = measured(path, 1280)
    problems = [f"<img src={image['src']!r} alt={image['alt']!r}>" for image in found["images"]
                if meaningless_alt(image["alt"], image["src"])]
    assert not problems, f"{path}: images whose alt text does not say what they show:{listing(problems)}"


# <torch._C.Generator at 0x7f...>, <matplotlib.image.AxesImage at 0x...>, <Foo object at 0x...>: a value that
# a cell's last line returned by accident.
OBJECT_REPR = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-fA-F]+>|<torch\._C")


@pytest.mark.parametrize("path", PAGES)
def test_no_output_shows_an_object_repr(measured, path):
    found = measured(path, 1280)
    problems = [f"{output['name']}: {OBJECT_REPR.search(output['text']).group(0)}" for output in found["outputs"]
                if OBJECT_REPR.search(output["text"])]
    assert not problems, f"{path}: outputs that print a Python object's address:{listing(problems)}"
