"""Sphinx extension: write each inline <script> once per page.

Sphinx 7.4 lists a script that an extension registers with ``app.add_js_file(None, body=...)`` after the
builder started twice on every page: once as registered (file name ``None``) and once more when the builder
re-reads its registry before writing (file name ``""``), and the two do not compare equal. sphinx-thebe
registers ``const THEBE_JS_URL = ...`` that way, so every page raised "Identifier 'THEBE_JS_URL' has already
been declared" in the browser. This drops the second copy of any inline script with the same body and
attributes, leaving the order of everything else unchanged.
"""

from __future__ import annotations


def _unique(script_files: list) -> list:
    seen, kept = set(), []
    for script in script_files:
        if not getattr(script, "filename", None):  # inline: identify it by its attributes (body included)
            key = tuple(sorted(getattr(script, "attributes", {}).items()))
            if key in seen:
                continue
            seen.add(key)
        kept.append(script)
    return kept


def _drop_repeated_inline_scripts(app, pagename, templatename, context, doctree) -> None:
    if "script_files" in context:
        context["script_files"][:] = _unique(context["script_files"])


def setup(app):
    # Late priority: after every extension that adds page scripts in html-page-context.
    app.connect("html-page-context", _drop_repeated_inline_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
