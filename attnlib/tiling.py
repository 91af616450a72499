"""Which tiles of the score matrix a FlashAttention pass visits, masks or skips.

The scores q kᵀ are cut into tiles of ``block_q`` query rows by ``block_k`` key columns. For one block of queries
a key block is

* ``FULL``    -- every query of the block sees every key of it: no mask is needed;
* ``MASKED``  -- it crosses the causal diagonal, or the lower edge of a sliding window, or it is the ragged last
  block that runs past ``n_k``: part of it is visible, and a compiled kernel must mask it (the NumPy and torch loops
  slice exactly, so for them only the causal and window parts matter);
* ``SKIPPED`` -- causal attention (or the window) hides all of it from every query of the block: it is never loaded.

Causal attention is aligned bottom-right, as everywhere in attnlib: query row r sits at absolute position
p = r + (n_k - n_q) and sees keys 0 .. p. With a sliding ``window`` w it sees only the w most recent of them,
keys p - w + 1 .. p. So a block of queries needs one contiguous run of key blocks: from the block holding the
first key its first query sees (``start_k``) to the block holding the last key its last query sees (``end_k``).
Inside that run, the keys that *every* query of the block sees lie between ``start_full`` (the first key of the
last query's window) and ``end_full`` (the last key the first query sees): whole blocks there are FULL, the others
MASKED. The NumPy loop (``attnlib.numpy.flash_attention``) walks the tiles this module lists, and the Triton
kernel's index arithmetic (the same four names) computes the same split on the GPU, which the tests check tile by
tile.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _checks

FULL, MASKED, SKIPPED = 0, 1, 2
KIND_NAMES = {FULL: "full", MASKED: "masked", SKIPPED: "skipped"}


class KeyTile(NamedTuple):
    j: int  # index of the key block
    k_start: int
    k_end: int  # one past the last key of the tile (never beyond n_k)
    kind: int  # FULL or MASKED


def key_tiles(q_start: int, q_end: int, n_q: int, n_k: int, block_k: int,
              causal: bool, window: int | None = None) -> list[KeyTile]:
    """The key blocks that queries q_start .. q_end - 1 visit, in order (skipped ones left out).

    ``window`` (only with ``causal``): each query sees its ``window`` most recent keys, itself included.
    """
    offset = n_k - n_q  # query row r sits at absolute position r + offset
    if causal:
        end_full = min(q_start + offset + 1, n_k)  # keys that the block's first query sees
        end_k = min(q_end + offset, n_k)  # keys that its last query sees
    else:
        end_full = end_k = n_k
    if window is not None:
        start_k = max(q_start + offset - window + 1, 0)  # the first key of the first query's window
        start_full = max(q_end - 1 + offset - window + 1, 0)  # the first key of the last query's window
    else:
        start_k = start_full = 0
    start_k = start_k // block_k * block_k  # the block that holds it
    start_full = -(-start_full // block_k) * block_k  # whole blocks only: one that starts earlier needs a mask
    end_full = end_full // block_k * block_k  # whole blocks only: a ragged end needs a mask
    tiles = []
    for k_start in range(start_k, end_k, block_k):
        kind = FULL if start_full <= k_start and k_start + block_k <= end_full else MASKED
        tiles.append(KeyTile(k_start // block_k, k_start, min(k_start + block_k, n_k), kind))
    return tiles


def query_blocks(n_q: int, block_q: int) -> list[tuple[int, int]]:
    """(q_start, q_end) of each block of queries; the last one may be shorter."""
    return [(q_start, min(q_start + block_q, n_q)) for q_start in range(0, n_q, block_q)]


def tile_plan(n_q: int, n_k: int, block_q: int, block_k: int, *, causal: bool,
              window: int | None = None) -> np.ndarray:
    """(query blocks, key blocks) integer array of FULL, MASKED or SKIPPED, for plotting or counting."""
    n_q, n_k = _checks.positive_int("n_q", n_q), _checks.positive_int("n_k", n_k)
    block_q, block_k = _checks.positive_int("block_q", block_q), _checks.positive_int("block_k", block_k)
    causal = _checks.causal_fits(causal, n_q, n_k, f"n_q={n_q}, n_k={n_k}")
    window = _checks.window(window, causal)
    return _plan(n_q, n_k, block_q, block_k, causal, window)


def _plan(n_q: int, n_k: int, block_q: int, block_k: int, causal: bool, window: int | None) -> np.ndarray:
    """``tile_plan`` on checked arguments (the backward loops read it key block by key block)."""
    plan = np.full((-(-n_q // block_q), -(-n_k // block_k)), SKIPPED)
    for i, (q_start, q_end) in enumerate(query_blocks(n_q, block_q)):
        for tile in key_tiles(q_start, q_end, n_q, n_k, block_k, causal, window):
            plan[i, tile.j] = tile.kind
    return plan


def causal_visible(q_start: int, q_end: int, k_start: int, k_end: int, offset: int,
                   window: int | None = None) -> np.ndarray:
    """(rows, cols) boolean, True where query q_start + r may attend key k_start + c (bottom-right aligned).

    With ``window``, only the ``window`` most recent keys of each query (itself included) are visible.
    """
    query_positions = np.arange(q_start, q_end)[:, None] + offset  # absolute position of each query row
    keys = np.arange(k_start, k_end)[None, :]
    visible = keys <= query_positions
    if window is not None:
        visible &= keys > query_positions - window
    return visible
