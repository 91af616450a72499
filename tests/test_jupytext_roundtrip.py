"""The chapters are written exactly as jupytext writes them, so reading one as a notebook changes nothing.

Two ways a reader rewrites a chapter without meaning to: ``jupytext --to myst`` (the command line) and JupyterLab,
which saves an opened chapter through jupytext's contents manager, after setting the notebook's kernelspec to
the running kernel's and, with jupyterlab-myst, storing each markdown cell's ``{eval}`` values in its metadata.
Both must leave every chapter byte-identical; ``jupytext.toml`` at the repository root holds the settings that
make it so. A chapter that fails here is fixed by letting jupytext write it (see ``FIX``).
"""

from __future__ import annotations

import asyncio
import difflib
import re
import shutil
from pathlib import Path

import jupytext
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupytext import AsyncTextFileContentsManager
from jupytext.config import find_jupytext_configuration_file, load_jupytext_configuration_file

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.md"))
# Pages with a jupytext header are notebooks (code cells the build runs); the others (api, references, glossary)
# are plain Markdown pages, which jupytext would turn into notebooks by adding a header.
NOTEBOOKS = [path for path in CHAPTERS if path.read_text(encoding="utf-8").startswith("---\njupytext:")]
# Writes the chapter as jupytext does, with the kernelspec ipykernel reports (what JupyterLab writes on saving).
FIX = ".venv/bin/jupytext --set-kernel python3 --to myst {path}"


def first_difference(expected: str, actual: str) -> str:
    diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(), "in git", "as written", lineterm="", n=1)
    return "\n".join(list(diff)[:30])


def test_the_notebook_chapters_are_found():
    # Guards the selection above: every numbered chapter is a notebook, and the reference pages are not.
    numbered = [path for path in CHAPTERS if path.name[:2].isdigit()]
    assert len(numbered) >= 14 and set(numbered) <= set(NOTEBOOKS)
    assert ROOT / "chapters" / "api.md" not in NOTEBOOKS


def test_the_configuration_is_found_from_the_chapters():
    found = find_jupytext_configuration_file(str(ROOT / "chapters"))
    assert found is not None and Path(found) == ROOT / "jupytext.toml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_a_jupytext_round_trip_leaves_the_chapter_unchanged(path: Path):
    """Read as a notebook and written back as MyST, with the repository's jupytext settings."""
    config = load_jupytext_configuration_file(str(ROOT / "jupytext.toml"))
    text = path.read_text(encoding="utf-8")
    written = jupytext.writes(jupytext.reads(text, fmt="md:myst"), fmt="md:myst", config=config)
    assert written == text, (f"{path.name} is not written as jupytext writes it; fix: {FIX.format(path=path)}\n"
                             + first_difference(text, written))


def ipykernel_kernelspec() -> dict:
    """The kernelspec JupyterLab writes into a notebook it saves: the one ipykernel installs as "python3"."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    return {"display_name": spec.display_name, "language": spec.language, "name": "python3"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_saving_through_jupyterlab_contents_manager_leaves_the_chapter_unchanged(path: Path, tmp_path: Path):
    """Open, "run" and save the chapter the way JupyterLab does, through jupytext's contents manager."""
    shutil.copyfile(ROOT / "jupytext.toml", tmp_path / "jupytext.toml")
    (tmp_path / "chapters").mkdir()
    copy = tmp_path / "chapters" / path.name
    shutil.copyfile(path, copy)
    # The asynchronous manager is the one jupyter-server (and so JupyterLab) uses.
    manager = AsyncTextFileContentsManager(root_dir=str(tmp_path))

    model = asyncio.run(manager.get(f"chapters/{path.name}", content=True, type="notebook"))
    notebook = model["content"]
    assert notebook["cells"], f"{path.name} opened as an empty notebook"
    # What a kernel session and a run of every cell add to the notebook in JupyterLab.
    notebook["metadata"]["kernelspec"] = ipykernel_kernelspec()
    notebook["metadata"]["language_info"] = {"name": "python", "version": "3", "mimetype": "text/x-python"}
    for number, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            cell["execution_count"] = number + 1
            cell["metadata"]["execution"] = {"iopub.status.busy": "2026-01-01T00:00:00Z"}
        elif cell["cell_type"] == "markdown":
            cell["metadata"]["user_expressions"] = [
                {"expression": "1 + 1", "result": {"status": "ok", "data": {"text/plain": "2"}, "metadata": {}}}]
    asyncio.run(manager.save({"type": "notebook", "format": "json", "content": notebook}, f"chapters/{path.name}"))

    saved = copy.read_text(encoding="utf-8")
    original = path.read_text(encoding="utf-8")
    assert saved == original, (f"saving {path.name} in JupyterLab would change it; fix: {FIX.format(path=path)}\n"
                               + first_difference(original, saved))


def test_the_contents_manager_check_would_see_a_change(tmp_path: Path):
    """The save above really writes the file: without the repository's settings the header changes."""
    path = NOTEBOOKS[0]
    (tmp_path / "chapters").mkdir()  # no jupytext.toml here
    shutil.copyfile(path, tmp_path / "chapters" / path.name)
    manager = AsyncTextFileContentsManager(root_dir=str(tmp_path))
    model = asyncio.run(manager.get(f"chapters/{path.name}", content=True, type="notebook"))
    asyncio.run(manager.save({"type": "notebook", "format": "json", "content": model["content"]},
                             f"chapters/{path.name}"))
    assert "jupytext_version" in (tmp_path / "chapters" / path.name).read_text(encoding="utf-8")


def sphinx_configuration() -> dict:
    """The Sphinx configuration Jupyter Book derives from _config.yml, as the book build uses it."""
    from jupyter_book.config import get_final_config

    config, _ = get_final_config(user_yaml=ROOT / "_config.yml", cli_config={"latex_individualpages": False},
                                 sourcedir=ROOT, raise_on_invalid=True)
    return config


def test_a_converted_chapter_is_not_a_second_source_of_the_page():
    """`jupytext --to ipynb chapters/01_qkv.md` leaves chapters/01_qkv.ipynb; Sphinx must not read it."""
    from sphinx.util.matching import Matcher

    excluded = Matcher(sphinx_configuration()["exclude_patterns"])
    assert excluded("chapters/01_qkv.ipynb") and excluded("chapters/booktools/scratch.ipynb")
    assert excluded("chapters/.ipynb_checkpoints/01_qkv-checkpoint.ipynb")
    assert not excluded("chapters/01_qkv.md") and not excluded("intro.md")


def test_the_book_runs_chapters_inline_so_eval_roles_work():
    config = sphinx_configuration()
    assert config["nb_execution_mode"] == "inline"
    # Every {eval} in the chapters is a name or an f-string, which is what the build accepts.
    accepted = re.compile(config["nb_eval_name_regex"])
    for path in NOTEBOOKS:
        for expression in re.findall(r"\{eval\}`([^`]+)`", path.read_text(encoding="utf-8")):
            assert accepted.match(expression), f"{path.name}: the build would refuse {{eval}}`{expression}`"
    assert not accepted.match("__import__('os').remove('x')")
