"""booktools.source.listing: library code laid out to the book's column width, the same program underneath."""

import ast
import importlib
import inspect
import textwrap

import pytest

import attnlib.numpy as an
from attnlib import depth, tiling
from booktools.source import WIDTH, listing

# the module, not the function of the same name that attnlib.numpy exports
flash_module = importlib.import_module("attnlib.numpy.flash_attention")


def normalised_tree(source: str) -> str:
    """The syntax tree with every string's whitespace collapsed (docstrings are re-broken, not changed)."""
    tree = ast.parse(textwrap.dedent(source))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = " ".join(node.value.split())
    return ast.dump(tree)


@pytest.mark.parametrize("obj", [an.flash_step, flash_module._steps, depth.apply_block, tiling.key_tiles])
def test_listing_fits_the_column_and_is_the_same_code(obj):
    original = inspect.getsource(obj)
    assert max(map(len, original.split("\n"))) > WIDTH, "a listing that already fits tests nothing"
    shown = listing(obj)
    too_long = [line for line in shown.split("\n") if len(line) > WIDTH]
    assert too_long == []
    assert normalised_tree(shown) == normalised_tree(original)


def test_listing_refuses_a_silly_width():
    with pytest.raises(ValueError, match="width must be an integer of at least 40"):
        listing(an.flash_step, width=10)
