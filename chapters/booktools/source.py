"""Library source code as the chapters print it: reformatted to the width of the book's content column.

``attnlib`` is written with lines of up to 120 characters, which a printed listing would have to scroll sideways
on a laptop's window. ``listing`` returns the same code laid out again by ``ruff format`` at ``width`` characters
(only the layout changes: ``ruff format`` keeps the syntax tree), with any comment still too long wrapped onto lines
of its own and long docstring lines broken at spaces.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import textwrap

WIDTH = 76  # characters of code that fit the content column at a 1280 px window


def _ruff() -> str:
    try:
        from ruff.__main__ import find_ruff_bin
    except ImportError:
        raise RuntimeError("booktools.source needs the ruff package (pip install ruff), which formats the listings "
                           "to the page's width") from None
    return find_ruff_bin()


def _wrap_comments(code: str, width: int) -> str:
    """Put every comment that makes its line longer than ``width`` on lines of its own, above its code."""
    lines = []
    for line in code.split("\n"):
        if len(line) <= width or "#" not in line:
            lines.append(line)
            continue
        indent = line[: len(line) - len(line.lstrip())]
        code_part, _, comment = line.partition("  # ")
        if not comment and line.lstrip().startswith("#"):
            code_part, comment = "", line.lstrip().lstrip("#").strip()
        if not comment or code_part.count('"') % 2 or code_part.count("'") % 2:  # a "#" inside a string
            lines.append(line)
            continue
        lines += textwrap.wrap(comment, width - len(indent) - 2, initial_indent=indent + "# ",
                               subsequent_indent=indent + "# ", break_on_hyphens=False)
        if code_part.strip():
            lines.append(code_part.rstrip())
    return "\n".join(lines)


def _wrap_docstrings(code: str, width: int) -> str:
    """Break the lines of docstrings that are longer than ``width`` at spaces (a docstring is text: the code's
    behaviour does not change, only its ``__doc__``'s line breaks)."""
    lines = code.split("\n")
    inside = set()
    for node in ast.walk(ast.parse(code)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            inside.update(range(body[0].lineno - 1, body[0].end_lineno))
    wrapped = []
    for number, line in enumerate(lines):
        if number in inside and len(line) > width:
            indent = line[: len(line) - len(line.lstrip())]
            wrapped += textwrap.wrap(line.strip(), width - len(indent), initial_indent=indent,
                                     subsequent_indent=indent, break_on_hyphens=False)
        else:
            wrapped.append(line)
    return "\n".join(wrapped)


def listing(obj, width: int = WIDTH) -> str:
    """The source of ``obj`` (a function, class or module; a Triton kernel's ``.fn``), at most ``width`` characters
    a line wherever a line can be broken."""
    if not isinstance(width, int) or width < 40:
        raise ValueError(f"width must be an integer of at least 40 characters, got {width!r}")
    source = textwrap.dedent(inspect.getsource(getattr(obj, "fn", obj)))
    source = _wrap_comments(source, width)
    result = subprocess.run([_ruff(), "format", f"--line-length={width}", "--stdin-filename", "listing.py", "-"],
                            input=source, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ruff format could not lay out the source of {obj!r}: {result.stderr.strip()}")
    return _wrap_docstrings(_wrap_comments(result.stdout, width), width).rstrip("\n")
