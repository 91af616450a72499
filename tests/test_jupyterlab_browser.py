"""The chapters opened and run in JupyterLab read like the website: no raw MyST, numbers filled in, figures drawn.

JupyterLab starts from .venv on 127.0.0.1 with a token, its settings, workspaces and runtime files in a temporary
folder (the reader's own JupyterLab configuration is neither read nor changed), chapters opening as notebooks
through jupytext (the setting the README's ``jupytext-config set-default-viewer`` writes) and autosave off. Each
chapter below is opened in Chromium (driven by Playwright), all its cells are run, and then the rendered markdown
must hold no raw ``{glue``, ``{eval}``, ``{note}``, ``{doc}`` or ``:::`` text, every ``{eval}`` expression must show
its value instead of its source, and each interactive figure's root must be drawn.

Which chapters: every numbered chapter (chapters/NN_*.md), so a chapter added later is held to the same rules; each
takes about as long here as in the book build, plus its own JupyterLab server's start. ATTNLIB_JUPYTERLAB_CHAPTERS
(comma-separated stems, e.g. "01_qkv,13_positions") runs only those, for a quicker look.

Without Chromium or JupyterLab the test skips, saying why, unless ATTNLIB_REQUIRE_BROWSER=1, which turns the skip
into a failure. Screenshots go to test-artifacts/jupyterlab/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
JUPYTER = Path(sys.executable).with_name("jupyter")
ARTIFACTS = ROOT / "test-artifacts" / "jupyterlab"
REQUIRED = os.environ.get("ATTNLIB_REQUIRE_BROWSER") == "1"
LAUNCH_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--no-first-run", "--disable-gpu"]
DEFAULT_CHAPTERS = sorted(path.stem for path in (ROOT / "chapters").glob("[0-9][0-9]_*.md"))
CHAPTERS = [name.strip() for name in os.environ.get("ATTNLIB_JUPYTERLAB_CHAPTERS", "").split(",") if name.strip()] \
    or DEFAULT_CHAPTERS
RAW_MYST = ["{glue", "{eval}", "{note}", "{doc}", ":::"]
START_SECONDS = 120  # JupyterLab's server on a busy 2-core machine
RUN_SECONDS = 300  # one chapter's cells; the book gives each chapter well under 60 s on a quiet laptop CPU
EVAL_ROLE = re.compile(r"\{eval\}`([^`]+)`")
GLUE_ROLE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")  # the name of a glued value (JupyterLab cannot show it)

pytestmark = pytest.mark.browser


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"{reason} (ATTNLIB_REQUIRE_BROWSER=1 makes this a failure)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_settings(settings: Path) -> None:
    """The user settings JupyterLab reads from JUPYTERLAB_SETTINGS_DIR (a temporary folder here)."""
    chosen = {
        # Chapters open as notebooks, as after `jupytext-config set-default-viewer`.
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {
            "defaultViewers": {"markdown": "Jupytext Notebook", "myst": "Jupytext Notebook"},
            "autosave": False,  # the test must never write a chapter
        },
        # Every cell stays in the page, so the whole chapter can be read after running it.
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        # No pop-ups over the page: news, update checks, the kernel-choice dialog.
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
            "fetchNews": "false", "checkForUpdates": False},
    }
    for relative, values in chosen.items():
        path = settings / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values), encoding="utf-8")


@pytest.fixture
def jupyterlab(tmp_path_factory):
    # One server per chapter, with its own workspace and kernels: a server reused for the next chapter restored the
    # previous chapter's tab, and "run all cells" could reach the wrong notebook.
    if not CHROMIUM.is_file():
        unavailable(f"Chromium is missing ({CHROMIUM})")
    if not JUPYTER.is_file():
        unavailable(f"jupyter is missing from the environment ({JUPYTER}); run scripts/setup.sh")
    pytest.importorskip("playwright.sync_api")
    home = tmp_path_factory.mktemp("jupyterlab")
    write_settings(home / "settings")
    token = secrets.token_hex(16)
    port = free_port()
    env = dict(os.environ, JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_CONFIG_DIR=str(home / "config"), PYTHONPATH="")
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [str(JUPYTER), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={ROOT}", "--LabApp.expose_app_in_browser=True", "--ServerApp.open_browser=False",
         "--LabApp.extension_manager=readonly"]  # nothing fetched from PyPI
        + (["--allow-root"] if os.geteuid() == 0 else []),  # containers and CI often run as root
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (home / "server.log").read_text()[-3000:])
                time.sleep(1)
        yield base, token, home
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


def run_all_cells(page) -> None:
    """Run every cell through JupyterLab's own command, then wait until the kernel has finished them all."""
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                           " && window.jupyterapp.shell.currentWidget.sessionContext"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                           " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel",
                           timeout=START_SECONDS * 1000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status"
                           " === 'idle'", timeout=START_SECONDS * 1000)
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # A cell waiting or running shows "[*]"; the kernel is idle again when the last one is done.
    page.wait_for_function(
        """() => {
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
            const kernel = window.jupyterapp.shell.currentWidget.sessionContext.session.kernel;
            return prompts.length > 0 && prompts.every(p => !p.includes('*') && /\\d/.test(p))
                && kernel.status === 'idle';
        }""", timeout=RUN_SECONDS * 1000, polling=1000)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_a_chapter_reads_in_jupyterlab_as_on_the_website(jupyterlab, browser, chapter):
    base, token, home = jupyterlab
    source_path = ROOT / "chapters" / f"{chapter}.md"
    source = source_path.read_bytes()
    expressions = sorted(set(EVAL_ROLE.findall(source.decode("utf-8"))))
    glued = sorted(set(GLUE_ROLE.findall(source.decode("utf-8"))))
    widgets_expected = "Widget(" in source.decode("utf-8") or "View(" in source.decode("utf-8")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{base}/lab/tree/chapters/{chapter}.md?token={token}", wait_until="domcontentloaded")
        page.wait_for_selector(".jp-Notebook .jp-Cell", state="attached", timeout=START_SECONDS * 1000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            run_all_cells(page)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / f"{chapter}-stuck.png"))  # where the run stopped
            raise
        # Markdown cells re-render once their {eval} values arrive from the kernel.
        page.wait_for_timeout(2000)
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{chapter}.png"))

        markdown = page.eval_on_selector_all(
            ".jp-MarkdownCell .jp-MarkdownOutput, .jp-MarkdownCell .myst",
            "nodes => nodes.map(node => node.innerText)")
        unrendered = page.eval_on_selector_all(
            ".jp-MarkdownCell:not(.jp-mod-rendered)", "nodes => nodes.length")
        error_values = page.eval_on_selector_all(
            ".jp-MarkdownCell [data-mime-type='application/vnd.jupyter.stderr']",
            "nodes => nodes.map(node => node.innerText)")
        figures = page.eval_on_selector_all(
            ".jp-OutputArea-output .attnlib-figure",
            "nodes => nodes.map(node => { const box = node.getBoundingClientRect(); return [box.width, box.height]; })")
        errors_in_outputs = page.eval_on_selector_all(
            ".jp-OutputArea-output", "nodes => nodes.filter(n => /Traceback|Error:/.test(n.innerText)).length")
    finally:
        page.close()

    assert markdown, f"{chapter}: no rendered markdown found"
    text = "\n".join(markdown)
    (ARTIFACTS / f"{chapter}.txt").write_text(text, encoding="utf-8")  # what the reader sees, to look at
    assert unrendered == 0, f"{chapter}: {unrendered} markdown cells left unrendered"
    for raw in RAW_MYST:
        where = text.find(raw)
        assert where < 0, f"{chapter}: raw {raw!r} in the rendered markdown: ...{text[max(where - 80, 0):][:200]}"
    for name in glued:  # jupyterlab-myst shows an unknown role's text: the value's name, not the value
        assert name not in text, f"{chapter}: the glued value {name} is shown by its name"
    for expression in expressions:
        assert expression not in text, f"{chapter}: the expression {expression} is shown, not its value"
    assert not error_values, f"{chapter}: an {{eval}} failed: {error_values[:3]}"
    assert errors_in_outputs == 0, f"{chapter}: a cell printed an error"
    if widgets_expected:
        assert figures, f"{chapter}: no interactive figure was drawn"
        assert all(width > 50 and height > 20 for width, height in figures), f"{chapter}: an empty figure {figures}"
    assert not errors, f"{chapter}: errors in the page: {errors[:3]}"
    assert source_path.read_bytes() == source, f"{chapter}: opening and running it in JupyterLab changed the file"
