"""The built website in a real browser (Debian's Chromium driven by Playwright), served from 127.0.0.1.

Every request to another host is blocked and counted. Every page must load with no off-host request, no failed
request and no console error, and every interactive figure must draw and react to the reader with no kernel.
Screenshots go to test-artifacts/. ATTNLIB_SITE=<folder> tests another built copy of the site. Without the
built site or Chromium these tests skip, saying why, unless ATTNLIB_REQUIRE_BROWSER=1 (set by CI), which turns
the skip into a failure.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("ATTNLIB_SITE", ROOT / "_build" / "html"))  # another built copy, if set
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
REQUIRED = os.environ.get("ATTNLIB_REQUIRE_BROWSER") == "1"
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-gpu"]
WIDGET_VIEW = 'script[type="application/vnd.jupyter.widget-view+json"]'
VIRIDIS_ZERO = "rgb(68,1,84)"  # the colour of a weight of exactly 0

pytestmark = pytest.mark.browser


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (ATTNLIB_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(reason)


def site_pages() -> list[str]:
    """Every HTML page of the site, as paths relative to its root (assets, sources and hidden folders excluded)."""
    skip = {"_static", "_sources", "vendor", "_images"}
    return sorted(p.relative_to(SITE).as_posix() for p in SITE.rglob("*.html")
                  if p.relative_to(SITE).parts[0] not in skip and not p.relative_to(SITE).parts[0].startswith("."))


def pages_with(widget_class: str) -> list[str]:
    """Pages whose saved widget state holds a figure of this class (anywidget records the class path)."""
    marker = f'"_anywidget_id": "attnlib.widgets.{widget_class}"'
    return [page for page in site_pages() if marker in (SITE / page).read_text(errors="replace")]


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
def browser():
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not installed at {CHROMIUM} (on Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Visit:
    """A page loaded in a fresh browser context, with everything that went wrong while loading it."""

    page: object
    off_host: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def problems(self) -> dict[str, list[str]]:
        return {"off-host requests": self.off_host, "failed requests": self.failed,
                "console errors": self.console_errors}


@pytest.fixture
def open_page(browser, site_url):
    contexts = []

    def open_(path: str) -> Visit:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        contexts.append(context)
        page = context.new_page()
        visit = Visit(page)
        local_host = urlparse(site_url).hostname

        def route(route):
            url = route.request.url
            if urlparse(url).scheme in ("http", "https") and urlparse(url).hostname != local_host:
                visit.off_host.append(url)
                route.abort()
            else:
                route.continue_()

        context.route("**/*", route)
        page.on("console", lambda message: message.type == "error" and visit.console_errors.append(message.text))
        page.on("pageerror", lambda error: visit.console_errors.append(f"uncaught: {error}"))
        page.on("requestfailed", lambda request: request.url not in visit.off_host
                and visit.failed.append(f"{request.url} ({request.failure})"))
        page.on("response", lambda response: response.status >= 400
                and visit.failed.append(f"{response.url} (HTTP {response.status})"))
        page.goto(site_url + path, wait_until="load")
        page.wait_for_load_state("networkidle")
        views = page.locator(WIDGET_VIEW).count()
        if views:  # html-manager draws the saved widgets after the page has loaded
            page.wait_for_function(
                f"document.querySelectorAll('.attnlib-figure').length >= {views}", timeout=30_000
            )
            page.wait_for_load_state("networkidle")
        return visit

    yield open_
    for context in contexts:
        context.close()


def screenshot(locator, name: str) -> bytes:
    ARTIFACTS.mkdir(exist_ok=True)
    return locator.screenshot(path=str(ARTIFACTS / f"{name}.png"))


# Where a figure's drawn parts lie against the page's content column, and whether it scrolls sideways. Only drawn
# things count: an SVG marker's definition, an <option> or a <title> has no box.
COLUMN_BOX = """figure => {
    const column = figure.closest("article") || figure.closest("main");
    const inside = [...figure.querySelectorAll("*")].map((node) => node.getBoundingClientRect())
        .filter((r) => r.width > 0 || r.height > 0);
    return { columnLeft: column.getBoundingClientRect().left, columnRight: column.getBoundingClientRect().right,
             left: Math.min(...inside.map((r) => r.left)), right: Math.max(...inside.map((r) => r.right)),
             scrollWidth: figure.scrollWidth, clientWidth: figure.clientWidth };
}"""


def figure_in_column(visit, selector: str, width: int):
    """Resize the page to ``width`` px, wait for the first ``selector`` figure to settle, and assert that it stays
    inside the content column without scrolling sideways. Returns the figure's locator."""
    visit.page.set_viewport_size({"width": width, "height": 900})
    figure = visit.page.locator(selector).first
    figure.scroll_into_view_if_needed()
    for _ in range(20):  # the page may still be settling after the resize (fonts, equations typeset above it)
        box = figure.evaluate(COLUMN_BOX)
        inside = box["columnLeft"] - 1 <= box["left"] and box["right"] <= box["columnRight"] + 1
        if inside and box["scrollWidth"] <= box["clientWidth"] + 1:
            break
        visit.page.wait_for_timeout(250)
    assert box["scrollWidth"] <= box["clientWidth"] + 1, f"the figure scrolls sideways at {width} px: {box}"
    assert inside, f"the figure sticks out of the content column at {width} px: {box}"
    return figure


GALLERY = "chapters/widgets_gallery.html"


def page_for(widget_class: str) -> str:
    """The gallery, which shows every kind of figure with all its controls; else the first page with one."""
    pages = pages_with(widget_class)
    if not pages:
        unavailable(f"no page of the built site shows a {widget_class} (is chapters/widgets_gallery in _toc.yml?)")
    return GALLERY if GALLERY in pages else pages[0]


def pages_showing(widget_class: str, wanted: list[str]) -> list[str]:
    """Those of the ``wanted`` pages that show a figure of this class (all of them, once the site is built)."""
    if not SITE.is_dir():
        return wanted  # the tests then skip (or fail under ATTNLIB_REQUIRE_BROWSER=1) in the site_url fixture
    return [page for page in wanted if page in pages_with(widget_class)] or wanted


# --- every page -----------------------------------------------------------------------------------------------


def test_site_has_pages(site_url):
    assert len(site_pages()) >= 2


@pytest.mark.parametrize("path", site_pages() if SITE.is_dir() else ["index.html"])
def test_page_loads_offline_without_errors(open_page, path):
    visit = open_page(path)
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}
    views = visit.page.locator(WIDGET_VIEW).count()
    figures = visit.page.locator(".attnlib-figure")
    assert figures.count() >= views, "every saved widget view is drawn"
    for index in range(figures.count()):  # a figure that failed would show an empty box or an error message
        figure = figures.nth(index)
        assert figure.locator(".attnlib-error").count() == 0, figure.inner_text()
        assert figure.locator("svg *, canvas").count() > 0, f"figure {index} on {path} drew nothing"


# --- the attention explorer -----------------------------------------------------------------------------------


def explorer_cells(figure):
    """(i, j, fill) of every heatmap cell in the first heatmap of the figure."""
    return figure.locator("svg[data-role=heatmap]").first.evaluate(
        "svg => [...svg.querySelectorAll('rect[data-i]')]"
        ".map(r => [+r.dataset.i, +r.dataset.j, r.getAttribute('fill')])"
    )


def test_attention_explorer_causal_toggle_zeroes_the_upper_triangle(open_page):
    path = page_for("attention_explorer.AttentionExplorer")
    visit = open_page(path)
    figure = visit.page.locator(".attnlib-explorer").first
    toggle = figure.locator("button[data-role=causal]")
    if toggle.count() == 0:
        pytest.skip("the first explorer on the site has only one kind of map")
    figure.locator("button[data-role=bidirectional]").click()
    before_cells = explorer_cells(figure)
    before = screenshot(figure, "attention_explorer_bidirectional")
    toggle.click()
    after_cells = explorer_cells(figure)
    after = screenshot(figure, "attention_explorer_causal")
    assert after_cells != before_cells and after != before, "the causal toggle changed the heatmap"
    upper = [fill for i, j, fill in after_cells if j > i]
    assert upper and all(fill == VIRIDIS_ZERO for fill in upper), "above the diagonal every weight is 0"
    assert any(fill != VIRIDIS_ZERO for i, j, fill in before_cells if j > i)
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


def test_attention_explorer_hover_shows_weight_and_row(open_page):
    visit = open_page(page_for("attention_explorer.AttentionExplorer"))
    figure = visit.page.locator(".attnlib-explorer").first
    cell = figure.locator("svg[data-role=heatmap] rect[data-i='1'][data-j='0']").first
    cell.hover()
    tooltip = figure.locator(".attnlib-tooltip")
    assert tooltip.is_visible()
    assert "→" in tooltip.inner_text() and any(ch.isdigit() for ch in tooltip.inner_text())
    assert figure.locator(".attnlib-readout .attnlib-chip").count() > 0, "the hovered row is spelled out"
    screenshot(figure, "attention_explorer_hover")


def test_attention_explorer_all_heads_as_small_multiples(open_page):
    visit = open_page(page_for("attention_explorer.AttentionExplorer"))
    figure = visit.page.locator(".attnlib-explorer").first
    select = figure.locator("select[data-role=head]")
    if select.count() == 0:
        pytest.skip("the first explorer on the site has a single head")
    n_heads = select.locator("option").count() - 1  # the last option is "all heads"
    select.select_option("-1")
    assert figure.locator("svg[data-role=heatmap]").count() == n_heads
    screenshot(figure, "attention_explorer_all_heads")
    assert visit.console_errors == []


# --- the steppers ---------------------------------------------------------------------------------------------


def texts(figure, selector: str) -> list[str]:
    return figure.locator(selector).all_inner_texts()


def go_to_end(figure):
    """Click "end" unless the figure is already at its last step (the button is then disabled)."""
    end = figure.locator("button[data-role=end]")
    if end.is_enabled():
        end.click()
    assert end.is_disabled() and figure.locator("button[data-role=next]").is_disabled()


def test_tile_stepper_next_back_play_and_final_check(open_page):
    from playwright.sync_api import expect

    visit = open_page(page_for("tile_stepper.TileStepper"))
    figure = visit.page.locator(".attnlib-tiles").first
    counter = figure.locator("[data-role=counter]")
    first = (texts(figure, ".attnlib-m"), texts(figure, ".attnlib-l"), counter.inner_text())
    screenshot(figure, "tile_stepper_step_1")
    figure.locator("button[data-role=next]").click()
    second = (texts(figure, ".attnlib-m"), texts(figure, ".attnlib-l"), counter.inner_text())
    screenshot(figure, "tile_stepper_step_2")
    assert second[0] != first[0] or second[1] != first[1], "next changed the displayed m or l"
    assert second[2] != first[2]
    figure.locator("button[data-role=back]").click()
    assert (texts(figure, ".attnlib-m"), texts(figure, ".attnlib-l"), counter.inner_text()) == first
    figure.locator("button[data-role=play]").click()
    expect(counter).not_to_have_text(re.compile(r"^step 1 "), timeout=5_000)  # playing moves on by itself
    figure.locator("button[data-role=play]").click()  # pause
    go_to_end(figure)
    check = figure.locator("[data-role=final-check]")
    assert "✓" in check.inner_text() and check.locator(".attnlib-ok").count() == 1
    assert figure.locator("[data-role=score-grid] .attnlib-tile-highlight").count() == 1
    screenshot(figure, "tile_stepper_last_step")
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


def test_exam_grader_corrects_the_total_when_a_new_best_arrives(open_page):
    visit = open_page(page_for("exam_grader.ExamGrader"))
    figure = visit.page.locator(".attnlib-exams").first
    first = (texts(figure, ".attnlib-m"), texts(figure, ".attnlib-l"))
    figure.locator("button[data-role=next]").click()
    second = (texts(figure, ".attnlib-m"), texts(figure, ".attnlib-l"))
    assert second != first, "next changed the displayed m and l"
    screenshot(figure, "exam_grader_batch_2")
    go_to_end(figure)
    assert "✓" in figure.locator("[data-role=final-check]").inner_text()
    screenshot(figure, "exam_grader_last_batch")
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


def test_kv_cache_grows_one_row_per_step_and_counts_work(open_page):
    visit = open_page(page_for("kv_cache_view.KVCacheView"))
    figure = visit.page.locator(".attnlib-kv").first
    cache = figure.locator("svg[data-role=K-cache]")
    rows_before = int(cache.get_attribute("data-rows"))
    work_before = figure.locator("[data-role=work]").inner_text()
    screenshot(figure, "kv_cache_step_0")
    figure.locator("button[data-role=next]").click()
    assert int(cache.get_attribute("data-rows")) == rows_before + 1, "one new row per step"
    assert figure.locator("svg[data-role=K-cache] [data-role=new-rows]").get_attribute("height") == \
        figure.locator("svg[data-role=K-cache] rect[y]").nth(0).get_attribute("height"), "only one row is new"
    assert figure.locator("[data-role=work]").inner_text() != work_before
    screenshot(figure, "kv_cache_step_1")
    go_to_end(figure)
    with_cache = int(figure.locator(".attnlib-work-rows-with_cache").inner_text())
    without_cache = int(figure.locator(".attnlib-work-rows-without_cache").inner_text())
    assert without_cache > with_cache
    assert "✓" in figure.locator(".attnlib-note").inner_text()
    screenshot(figure, "kv_cache_last_step")
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


def test_add_norm_view_toggles_redraw_the_profiles(open_page):
    visit = open_page(page_for("add_norm_view.AddNormView"))
    figure = visit.page.locator(".attnlib-addnorm").first

    def curves():
        return [figure.locator(f"svg[data-role=chart-{key}] path[data-role=shown]").get_attribute("d")
                for key in ("activation_scale", "gradient_norm")]

    seen = {tuple(curves())}
    screenshot(figure, "add_norm_residual_post_ln")
    for role in ("residual-off", "pre-ln", "residual-on"):
        figure.locator(f"button[data-role={role}]").click()
        assert figure.locator(f"button[data-role={role}]").get_attribute("aria-pressed") == "true"
        seen.add(tuple(curves()))
        screenshot(figure, f"add_norm_{role}")
    assert len(seen) == 4, "each of the four wirings draws its own curves"
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


# --- queries and keys apart: the library explorer ---------------------------------------------------------------


def heatmap_and_output(figure) -> tuple[list, list[str], str]:
    """The heatmap's cell colours, the output bars' numbers and the readout's first line."""
    return (explorer_cells(figure), figure.locator("svg[data-role=output] .attnlib-output-value").evaluate_all(
        "texts => texts.map(t => t.textContent)"), figure.locator(".attnlib-readout-lead").inner_text())


@pytest.mark.parametrize("path", pages_showing("attention_explorer.AttentionExplorer",
                                               ["chapters/01_qkv.html", GALLERY]))
def test_library_explorer_temperature_and_query_redraw_weights_and_output(open_page, path):
    visit = open_page(path)
    figure = visit.page.locator(".attnlib-explorer", has=visit.page.locator("button[data-role=temperature]")).first
    assert figure.count() == 1, f"no explorer with temperatures on {path}"
    heatmap = figure.locator("svg[data-role=heatmap]")
    n_queries = heatmap.locator("[data-row]").count()
    n_keys = heatmap.locator("[data-column]").count()
    assert n_queries != n_keys, "queries and keys are different things here, with their own labels"
    assert figure.locator("svg[data-role=output] rect[data-column]").count() > 0, "the kept query's output is drawn"
    start = heatmap_and_output(figure)
    screenshot(figure, f"library_explorer_{Path(path).stem}_start")

    buttons = figure.locator("button[data-role=temperature]")
    buttons.last.click()  # the highest temperature: flatter weights, an answer closer to the average book
    assert buttons.last.get_attribute("aria-pressed") == "true"
    hot = heatmap_and_output(figure)
    assert hot[0] != start[0], "the temperature changed the heatmap"
    assert hot[1] != start[1], "the temperature changed the weighted sum"
    assert hot[2] == start[2], "the same query is kept"
    screenshot(figure, f"library_explorer_{Path(path).stem}_hot")

    select = figure.locator("select[data-role=query]")
    other = "1" if select.input_value() != "1" else "2"
    select.select_option(other)
    picked = heatmap_and_output(figure)
    assert picked[2] != hot[2] and picked[1] != hot[1], "another query: its own weights and output"
    assert figure.locator(".attnlib-row-highlight").first.get_attribute("visibility") == "visible"

    heatmap.locator("rect[data-i='0'][data-j='0']").click()  # clicking a row keeps that query
    assert figure.locator("select[data-role=query]").input_value() == "0"
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


# --- the feed-forward memory ------------------------------------------------------------------------------------


def memory_state(figure) -> dict:
    slots = figure.locator("svg[data-role=slots]")
    return {"summary": figure.locator("[data-role=summary]").inner_text(),
            "fires": slots.locator("[data-role=slot-fires]").count(),
            "matches": [float(v) for v in slots.locator("rect[data-role=match]").evaluate_all(
                "rects => rects.map(r => r.dataset.value)")],
            "gates": [float(v) for v in slots.locator("rect[data-role=gate]").evaluate_all(
                "rects => rects.map(r => r.dataset.value)")],
            "output": slots.locator("[data-role=output] rect").evaluate_all(
                "rects => rects.map(r => r.getAttribute('fill'))"),
            "readout": figure.locator("svg[data-role=readout] rect[data-word]").evaluate_all(
                "rects => rects.map(r => r.getAttribute('width'))")}


@pytest.mark.parametrize("path", pages_showing("feed_forward_memory_view.FeedForwardMemoryView",
                                               ["chapters/05_feed_forward.html", GALLERY]))
def test_feed_forward_memory_input_and_activation_redraw(open_page, path):
    visit = open_page(path)
    figure = visit.page.locator(".attnlib-ffn").first
    first = memory_state(figure)
    n_slots = len(first["matches"])
    assert n_slots > 1 and first["output"] and first["readout"], "slots, output strip and readout are drawn"
    assert first["gates"] == [max(m, 0.0) for m in first["matches"]], "ReLU: the gate is the match, or 0"
    assert first["fires"] == sum(g > 0 for g in first["gates"]) >= 1
    screenshot(figure, f"ffn_memory_{Path(path).stem}_first")

    inputs = figure.locator("button[data-role=input]")
    inputs.nth(1).click()
    assert inputs.nth(1).get_attribute("aria-pressed") == "true"
    second = memory_state(figure)
    assert second["matches"] != first["matches"] and second["summary"] != first["summary"]
    assert second["output"] != first["output"], "another input, another output"

    figure.locator("button[data-role=activation-off]").click()
    linear = memory_state(figure)
    assert linear["gates"] == linear["matches"], "without the activation the match passes through unchanged"
    assert linear["fires"] == n_slots, "every slot passes its match on, negative ones too"
    assert linear["output"] != second["output"] and linear["readout"] != second["readout"]
    assert "Without the activation" in linear["summary"]
    screenshot(figure, f"ffn_memory_{Path(path).stem}_linear")
    figure.locator("button[data-role=activation-on]").click()
    assert memory_state(figure) == second
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}


# --- the model view ---------------------------------------------------------------------------------------------


def model_view_drawing(figure) -> tuple[list, list[str]]:
    """The opened head's cell colours, and every grid thumbnail's pixels (as data URLs)."""
    fills = figure.locator("svg[data-role=head-map]").evaluate(
        "svg => [...svg.querySelectorAll('rect[data-i]')]"
        ".map(r => [+r.dataset.i, +r.dataset.j, r.getAttribute('fill')])"
    )
    thumbnails = figure.locator("[data-role=head-cell] canvas").evaluate_all("cs => cs.map(c => c.toDataURL())")
    return fills, thumbnails


def test_model_view_grid_opens_a_head_with_its_tokens_and_toggles_to_weight_times_value(open_page):
    visit = open_page(page_for("model_view.ModelView"))
    figure = visit.page.locator(".attnlib-modelview").first
    cells = figure.locator("[data-role=head-cell]")
    assert cells.count() == 72, "6 layers x 12 heads of all-MiniLM-L6-v2, one small map each"
    assert figure.locator("[data-role=head-cell] canvas").count() == 72
    assert figure.locator("svg[data-role=head-map]").count() == 0, "no head is open until one is clicked"
    screenshot(figure, "model_view_grid")

    figure.locator("[data-role=head-cell][data-layer='2'][data-head='5']").click()
    heatmap = figure.locator("svg[data-role=head-map]")
    assert heatmap.count() == 1 and "layer 2, head 5" in figure.locator("[data-role=opened-title]").inner_text()
    assert figure.locator("[data-role=head-cell][aria-pressed=true]").count() == 1
    rows = heatmap.locator("[data-row]").evaluate_all("texts => texts.map(t => t.textContent)")
    columns = heatmap.locator("[data-column]").evaluate_all("texts => texts.map(t => t.textContent)")
    assert rows == columns and len(rows) > 4, "the sentence's tokens label both axes"
    assert rows[0] == "[CLS]" and rows[-1] == "[SEP]"
    assert heatmap.locator("rect[data-i]").count() == len(rows) ** 2
    heatmap.locator("rect[data-i='1'][data-j='0']").hover()
    tooltip = figure.locator(".attnlib-tooltip")
    assert tooltip.is_visible() and "→" in tooltip.inner_text() and any(ch.isdigit() for ch in tooltip.inner_text())
    screenshot(figure, "model_view_opened_weights")

    weights = model_view_drawing(figure)
    figure.locator("button[data-role=mode-norm]").click()
    assert figure.locator("button[data-role=mode-norm]").get_attribute("aria-pressed") == "true"
    norm = model_view_drawing(figure)
    assert norm[0] != weights[0], "the toggle redrew the opened head with weight x ||value||"
    assert sum(a != b for a, b in zip(norm[1], weights[1], strict=True)) > 36, "and most of the small maps"
    assert "layer 2, head 5" in figure.locator("[data-role=opened-title]").inner_text(), "the same head stays open"
    screenshot(figure, "model_view_opened_norm")

    figure.locator("[data-role=head-cell][data-layer='2'][data-head='5']").focus()
    visit.page.keyboard.press("ArrowRight")  # the keyboard moves the opened head along the grid
    assert "layer 2, head 6" in figure.locator("[data-role=opened-title]").inner_text()
    figure.locator("button[data-role=mode-weights]").click()
    assert model_view_drawing(figure)[1] == weights[1], "back to the weights: the same small maps as before"
    assert visit.problems() == {"off-host requests": [], "failed requests": [], "console errors": []}
