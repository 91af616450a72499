"""RingView in the built site, in Chromium with no kernel: stepping moves the key/value shards one rank along the
ring, fills the grid of chunk pairs and changes each rank's m and l to what attnlib recorded; the last step shows
every output final. The figure stays inside the content column at 1280 and 800 pixels wide. Uses the fixtures of
test_site_browser.py (which skip without the built site or Chromium).
"""

from __future__ import annotations

import pytest
from test_site_browser import (  # noqa: F401 -- browser, site_url and open_page are fixtures used below
    GALLERY,
    browser,
    figure_in_column,
    open_page,
    pages_showing,
    screenshot,
    site_url,
)

from attnlib.widgets import RingView

pytestmark = pytest.mark.browser

PAGES = pages_showing("ring_view.RingView", ["chapters/16_longer_than_one_device.html", GALLERY])
NO_PROBLEMS = {"off-host requests": [], "failed requests": [], "console errors": []}


def shown(figure) -> dict:
    """What the figure shows now: the counter, what each rank holds, the pairs computed, each rank's state table."""
    return {
        "counter": figure.locator("[data-role=counter]").inner_text(),
        "holds": figure.locator("[data-role=holds]").all_text_contents(),  # SVG text has no innerText
        "computed": int(figure.locator("svg[data-role=pairs]").get_attribute("data-computed")),
        "current": figure.locator("svg[data-role=pairs] [data-current=true]").count(),
        "states": figure.locator("[data-role=state]").all_inner_texts(),
        "gaps": figure.locator("[data-role=gap]").all_inner_texts(),
    }


def merged_m(figure, rank: int) -> list[str]:
    """The "m merged" column of a rank's table."""
    rows = figure.locator(f"[data-role=rank][data-rank='{rank}'] [data-role=state] tbody tr")
    return [rows.nth(i).locator("td").nth(3).inner_text() for i in range(rows.count())]


def expected_m(value) -> str:
    """formatNumber of _shared.js, for the numbers these tables hold."""
    if value is None:
        return "−∞"
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:  # JavaScript's toExponential(2): 1.23e-4, 1.23e+4
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa}e{exponent[0]}{int(exponent[1:])}"
    return f"{value:.4f}"


@pytest.mark.parametrize("path", PAGES)
def test_stepping_moves_the_shards_and_changes_m_and_l(open_page, path):  # noqa: F811 -- the fixture
    recorded = RingView.from_seed(16, 4, world_size=4, causal=True, layout="zigzag", seed=0)  # as on the pages
    visit = open_page(path)
    figure = visit.page.locator(".attnlib-ring").first
    start = shown(figure)
    assert start["counter"].startswith("step 0 of 3")
    assert start["holds"] == [f"K/V: {a}, {b} (rank {r})" for r, (a, b) in enumerate(recorded.holds)]
    assert merged_m(figure, 0) == [expected_m(x) for x in recorded.steps[0][0]["running_m"]]
    screenshot(figure, "ring_step_0")

    figure.locator("button[data-role=next]").click()
    after = shown(figure)
    assert after["counter"].startswith("step 1 of 3")
    assert after["holds"][0] == "K/V: 3, 4 (rank 3)", "rank 0 now holds what rank 3 held"
    assert after["computed"] > start["computed"] and after["current"] == 8, "two full pairs per rank"
    assert after["states"] != start["states"]
    assert merged_m(figure, 0) == [expected_m(x) for x in recorded.steps[1][0]["running_m"]]
    screenshot(figure, "ring_step_1")

    figure.locator("button[data-role=end]").click()
    end = shown(figure)
    assert end["counter"].startswith("step 3 of 3")
    assert end["gaps"] == ["max |output − final| = 0"] * 4
    assert end["computed"] == 8 * 9 // 2  # every pair of the causal triangle of 8 chunks, once
    assert "✓" in figure.locator("[data-role=note]").inner_text()
    figure.locator("button[data-role=back]").click()
    assert shown(figure)["counter"].startswith("step 2 of 3")
    screenshot(figure, "ring_last_step")
    assert visit.problems() == NO_PROBLEMS


@pytest.mark.parametrize("width", [1280, 800])
@pytest.mark.parametrize("path", PAGES)
def test_the_figure_stays_inside_the_content_column(open_page, path, width):  # noqa: F811 -- the fixture
    visit = open_page(path)
    figure = figure_in_column(visit, ".attnlib-ring", width)
    name = path.split("/")[-1].removesuffix(".html")
    screenshot(figure, f"ring_{name}_{width}px")
    assert visit.problems() == NO_PROBLEMS
