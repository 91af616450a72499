"""RooflineView in the built site, in Chromium with no kernel: the sliders, the menu and the buttons change the
numbers shown (to what attnlib computes for the new choice), and the figure stays inside the content column at
1280 and 800 pixels wide. Uses the fixtures of test_site_browser.py (which skip without the built site or Chromium).
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

from attnlib import roofline, traffic

pytestmark = pytest.mark.browser

PAGES = pages_showing("roofline_view.RooflineView", ["chapters/11_flash_attention_gpu.html", GALLERY])
NO_PROBLEMS = {"off-host requests": [], "failed requests": [], "console errors": []}


def standard_intensity(n: int, d: int) -> str:
    """The standard attention intensity the page should show for the forward pass, as attnlib computes it."""
    shape = {"batch": 16384 // n, "heads": 2048 // d, "n": n, "d": d}
    flops = roofline.standard_attention_flops(**shape, backward=False)
    return f"{flops / traffic.standard_attention_traffic(**shape, backward=False).total:.1f}"


def cell(figure, name: str) -> str:
    return figure.locator(f".attnlib-rl-{name}").inner_text()


@pytest.mark.parametrize("path", PAGES)
def test_moving_a_slider_changes_the_numbers_to_attnlibs(open_page, path):  # noqa: F811 -- the fixture
    visit = open_page(path)
    figure = visit.page.locator(".attnlib-roofline-view").first
    n = int(figure.locator("[data-role=n-slider-value]").inner_text())
    d = int(figure.locator("button[data-role=d][aria-pressed=true]").inner_text())
    assert cell(figure, "intensity-standard") == standard_intensity(n, d)
    numbers = figure.locator("[data-role=numbers]").inner_text()
    flash_at = figure.locator("[data-role=model-flash]").get_attribute("x")
    screenshot(figure, "roofline_first")

    slider = figure.locator("input[data-role=n-slider]")
    slider.focus()
    slider.press("ArrowRight")  # the next length offered
    assert int(figure.locator("[data-role=n-slider-value]").inner_text()) == 2 * n
    assert cell(figure, "intensity-standard") == standard_intensity(2 * n, d)
    assert figure.locator("[data-role=numbers]").inner_text() != numbers
    assert figure.locator("[data-role=model-flash]").get_attribute("x") != flash_at, "the flash point moved"
    slider.press("ArrowRight")  # the slider keeps the focus across the redraw
    assert int(figure.locator("[data-role=n-slider-value]").inner_text()) == 4 * n

    # A smaller SRAM with the paper's blocks: smaller blocks, more bytes for FlashAttention, none more for standard.
    standard_bytes, flash_bytes = cell(figure, "bytes-standard"), cell(figure, "bytes-flash")
    figure.locator("input[data-role=sram-slider]").press("Home")
    assert figure.locator("[data-role=sram-slider-value]").inner_text() == "64 KiB"
    assert cell(figure, "bytes-standard") == standard_bytes and cell(figure, "bytes-flash") != flash_bytes

    # Chosen blocks that do not fit: no flash point, and the reason is shown.
    figure.locator("button[data-role=d][data-value='128']").click()
    figure.locator("select[data-role=blocks]").select_option("128x128")
    assert figure.locator("[data-role=model-flash]").count() == 0
    assert "need 81920 elements on chip" in figure.locator("[data-role=misfit]").inner_text()

    # Another GPU: another ridge point.
    figure.locator("button[data-role=gpu][data-value='H200 SXM']").click()
    ridge = roofline.ridge_point("H200 SXM")
    assert figure.locator("[data-role=ridge]").text_content() == f"ridge {ridge:.0f} FLOP/byte"
    assert "has not been timed on a GPU" in figure.locator("[data-role=measured-note]").inner_text()
    screenshot(figure, "roofline_changed")
    assert visit.problems() == NO_PROBLEMS


@pytest.mark.parametrize("width", [1280, 800])
@pytest.mark.parametrize("path", PAGES)
def test_the_figure_stays_inside_the_content_column(open_page, path, width):  # noqa: F811 -- the fixture
    visit = open_page(path)
    figure = figure_in_column(visit, ".attnlib-roofline-view", width)
    name = path.split("/")[-1].removesuffix(".html")
    screenshot(figure, f"roofline_{name}_{width}px")
    visit.page.screenshot(path=f"test-artifacts/roofline_{name}_{width}px_page.png", full_page=False)
    assert visit.problems() == NO_PROBLEMS
