"""RopeView and KVHeadsView in the built website, in a real browser (the set-up of test_site_browser.py: Debian's
Chromium, the site served from 127.0.0.1, every off-host request blocked). The figures must react to the reader with
no kernel: RoPE's sliders turn the arrows and the score stays put when both positions shift; the heads drawing
follows the chosen layout and the cache table the chosen model and context. Screenshots go to test-artifacts/ at
1280 and 800 pixels wide, and at 1280 nothing may be wider than the content column.
"""

from __future__ import annotations

import math

import pytest
from test_site_browser import browser, open_page, page_for, screenshot, site_url  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser
CLEAN = {"off-host requests": [], "failed requests": [], "console errors": []}


def fits_the_column(figure) -> None:
    """The figure is no wider than the column it sits in (nothing scrolls sideways, nothing sticks out)."""
    widths = figure.evaluate("f => [f.scrollWidth, f.clientWidth, f.parentElement.clientWidth]")
    assert widths[0] <= widths[1] <= widths[2] + 1, widths


def rope_readout(figure) -> dict:
    read = {role: figure.locator(f"[data-role={role}]").inner_text()
            for role in ("plane-score", "head-score", "offset-angle", "query-angle", "key-angle")}
    for role in ("query-arrow", "key-arrow"):
        arrow = figure.locator(f"[data-role={role}]")
        read[role] = (float(arrow.get_attribute("data-x")), float(arrow.get_attribute("data-y")))
    cell = figure.locator("[data-role=current-cell]")
    read["cell"] = (cell.get_attribute("x"), cell.get_attribute("y"))
    return read


def test_rope_view_sliders_turn_the_arrows_and_shifting_both_keeps_the_score(open_page):  # noqa: F811
    visit = open_page(page_for("rope_view.RopeView"))
    figure = visit.page.locator(".attnlib-rope").first
    figure.scroll_into_view_if_needed()
    fits_the_column(figure)
    first = rope_readout(figure)
    screenshot(figure, "rope_view_start")

    query = figure.locator("input[data-role=query-position]")
    start = int(query.input_value())
    query.fill(str(start + 3))  # the reader drags the query position 3 along
    moved = rope_readout(figure)
    assert figure.locator("[data-role=query-position-value]").inner_text().strip() == str(start + 3)
    assert moved["query-arrow"] != first["query-arrow"] and moved["key-arrow"] == first["key-arrow"]
    assert moved["offset-angle"] != first["offset-angle"] and moved["cell"] != first["cell"]
    assert moved["head-score"] != first["head-score"], "a new offset gives a new score"

    for _ in range(3):  # shift both positions three steps to the right, then one back
        figure.locator("button[data-role=shift-right]").click()
    figure.locator("button[data-role=shift-left]").click()
    shifted = rope_readout(figure)
    assert shifted["query-arrow"] != moved["query-arrow"] and shifted["key-arrow"] != moved["key-arrow"]
    assert shifted["query-angle"] != moved["query-angle"] and shifted["cell"] != moved["cell"]
    for role in ("plane-score", "head-score", "offset-angle"):
        assert shifted[role] == moved[role], f"{role} changed when both positions shifted"
    # The arrows both turned by the same angle, so the angle between them is kept.
    def angle(point):
        return math.atan2(point[1], point[0])

    turn_q = (angle(shifted["query-arrow"]) - angle(moved["query-arrow"])) % (2 * math.pi)
    turn_k = (angle(shifted["key-arrow"]) - angle(moved["key-arrow"])) % (2 * math.pi)
    assert abs(turn_q - turn_k) < 1e-3 or abs(abs(turn_q - turn_k) - 2 * math.pi) < 1e-3
    screenshot(figure, "rope_view_shifted")

    pairs = figure.locator("button[data-role=pair]")
    if pairs.count() > 1:  # another plane: other arrows, the same head's score
        pairs.last.click()
        other = rope_readout(figure)
        assert other["query-arrow"] != shifted["query-arrow"] and other["head-score"] == shifted["head-score"]
    visit.page.set_viewport_size({"width": 800, "height": 900})
    screenshot(figure, "rope_view_800")
    assert visit.problems() == CLEAN


def heads_drawing(figure) -> dict:
    drawing = figure.locator("svg[data-role=heads]")
    links = drawing.locator("[data-role=link]").evaluate_all("ls => ls.map(l => [+l.dataset.query, +l.dataset.kv])")
    count = {role: drawing.locator(f"[data-role={role}]").count() for role in ("query-head", "kv-head", "latent")}
    return {"scheme": drawing.get_attribute("data-scheme"), "queries": count["query-head"], "kv": count["kv-head"],
            "latent": count["latent"], "links": links}


def test_kv_heads_view_layouts_models_and_contexts_redraw(open_page):  # noqa: F811
    visit = open_page(page_for("kv_heads_view.KVHeadsView"))
    figure = visit.page.locator(".attnlib-kvheads").first
    figure.scroll_into_view_if_needed()
    fits_the_column(figure)
    screenshot(figure, "kv_heads_view_start")

    figure.locator("button[data-role=scheme][data-value=MHA]").click()
    mha = heads_drawing(figure)
    assert mha["kv"] == mha["queries"] and all(query == kv for query, kv in mha["links"])
    figure.locator("button[data-role=scheme][data-value=GQA]").click()
    options = figure.locator("button[data-role=kv-heads]")
    for index in range(options.count()):
        options.nth(index).click()
        groups = int(figure.locator("button[data-role=kv-heads]").nth(index).get_attribute("data-value"))
        gqa = heads_drawing(figure)
        size = gqa["queries"] // groups
        assert gqa["kv"] == groups and all(kv == query // size for query, kv in gqa["links"])
    screenshot(figure, "kv_heads_view_gqa")
    figure.locator("button[data-role=scheme][data-value=MQA]").click()
    mqa = heads_drawing(figure)
    assert mqa["kv"] == 1 and {kv for _, kv in mqa["links"]} == {0}
    figure.locator("button[data-role=scheme][data-value=MLA]").click()
    mla = heads_drawing(figure)
    assert mla["kv"] == 0 and mla["latent"] == 1

    table = figure.locator("[data-role=bytes]")
    select = figure.locator("select[data-role=config]")
    names = select.locator("option").all_inner_texts()
    before = table.inner_text()
    deepseek = next(index for index, name in enumerate(names) if "DeepSeek" in name)
    select.select_option(str(deepseek))
    assert table.inner_text() != before
    own = figure.locator("[data-role=bytes] tbody tr").first.inner_text()
    assert "MLA" in own and "its own" in own
    highlighted = figure.locator("[data-role=bytes] tbody tr td.attnlib-changed").first.inner_text()
    assert highlighted.startswith("MLA"), "the row of the layout on the left is highlighted"
    at_context = figure.locator(".attnlib-bytes-at-context").first.inner_text()
    figure.locator("button[data-role=context]").last.click()
    assert figure.locator(".attnlib-bytes-at-context").first.inner_text() != at_context
    screenshot(figure, "kv_heads_view_mla")
    visit.page.set_viewport_size({"width": 800, "height": 900})
    screenshot(figure, "kv_heads_view_800")
    assert visit.problems() == CLEAN
