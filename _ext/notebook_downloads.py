"""Sphinx extension: offer each executed chapter as a downloadable ``.ipynb``.

The chapters are MyST Markdown notebooks. MyST-NB executes them and writes the executed notebook (outputs and
widget state included) to ``_build/jupyter_execute/<page>.ipynb``, but, unlike Jupyter Book 0.x, it no longer tells
the theme about that file, so the page's download menu only offered the ``.md`` source. This copies the executed
notebook next to the other page sources (``_sources/<page>.ipynb``) and sets ``ipynb_source``, the context key
sphinx-book-theme reads to add its ".ipynb" download button.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def _offer_notebook(app, pagename, templatename, context, doctree) -> None:
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.is_file():  # not a notebook page (or not executed): nothing to offer
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def setup(app):
    # Early priority: the theme builds its header buttons from the context in its own handler (priority 500).
    app.connect("html-page-context", _offer_notebook, priority=400)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
