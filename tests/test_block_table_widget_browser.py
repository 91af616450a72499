"""BlockTableView in the built site, in Chromium with no kernel: stepping changes the block tables, the pool and the
utilisation shown, and the figure stays inside the content column at 1280 and 800 pixels wide. Uses the fixtures
of test_site_browser.py (which skip without the built site or Chromium).
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

pytestmark = pytest.mark.browser

PAGES = pages_showing("block_table_view.BlockTableView", ["chapters/15_serving_many_readers.html", GALLERY])
NO_PROBLEMS = {"off-host requests": [], "failed requests": [], "console errors": []}


def pool_owners(figure) -> list[str]:
    return figure.locator("[data-role=pool] rect[data-block]").evaluate_all(
        "cells => cells.map((cell) => cell.dataset.owner)")


@pytest.mark.parametrize("path", PAGES)
def test_stepping_changes_the_tables_the_pool_and_the_utilisation(open_page, path):  # noqa: F811 -- the fixture
    visit = open_page(path)
    figure = visit.page.locator(".attnlib-block-table").first
    counter = figure.locator("[data-role=counter]")
    assert counter.inner_text().startswith("step 0 of ")
    first = (pool_owners(figure), figure.locator("[data-role=utilisation-text]").inner_text())
    assert any(owner != "-1" for owner in first[0]), "the first step takes blocks"
    tables = figure.locator("[data-role=tables] g[data-physical]")
    assert tables.count() > 0
    screenshot(figure, "block_table_first")

    figure.locator("button[data-role=next]").click()
    assert counter.inner_text().startswith("step 1 of ")
    figure.locator("button[data-role=end]").click()
    last = int(counter.inner_text().split(" of ")[1].split(":")[0])
    assert counter.inner_text().startswith(f"step {last} of {last}")
    assert all(owner == "-1" for owner in pool_owners(figure)), "every block is free after the last step"
    # Somewhere in the run a freed block is taken again (↺), and the figure differs from the first step.
    seen_reuse = False
    figure.locator("button[data-role=start]").click()
    for _ in range(last):
        seen_reuse |= "↺" in (figure.locator("[data-role=pool]").text_content() or "")
        figure.locator("button[data-role=next]").click()
    assert seen_reuse
    figure.locator("button[data-role=start]").click()
    figure.locator("button[data-role=next]").click()
    figure.locator("button[data-role=next]").click()
    changed = (pool_owners(figure), figure.locator("[data-role=utilisation-text]").inner_text())
    assert changed != first
    screenshot(figure, "block_table_step_2")
    assert visit.problems() == NO_PROBLEMS


@pytest.mark.parametrize("width", [1280, 800])
@pytest.mark.parametrize("path", PAGES)
def test_the_figure_stays_inside_the_content_column(open_page, path, width):  # noqa: F811 -- the fixture
    visit = open_page(path)
    figure = figure_in_column(visit, ".attnlib-block-table", width)
    name = path.split("/")[-1].removesuffix(".html")
    screenshot(figure, f"block_table_{name}_{width}px")
    assert visit.problems() == NO_PROBLEMS
