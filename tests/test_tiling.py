"""attnlib.tiling: the tile plan shared by the NumPy loop, the torch loop and chapter 11, checked against the mask."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import attnlib.numpy as anp
from attnlib import tiling


def dense_mask(n_q, n_k, causal, window=None):
    """The whole (n_q, n_k) visibility mask, written out from the definition: query i sits at p = i + n_k - n_q and
    sees key j when j <= p (causal) and p - window < j (sliding window)."""
    positions = np.arange(n_q)[:, None] + n_k - n_q
    keys = np.arange(n_k)[None, :]
    visible = keys <= positions if causal else np.ones((n_q, n_k), dtype=bool)
    if window is not None:
        visible = visible & (keys > positions - window)
    return visible


def plan_from_the_mask(n_q, n_k, block_q, block_k, causal, window=None):
    """What every tile must be, read off the whole (n_q, n_k) mask with no index arithmetic."""
    visible = dense_mask(n_q, n_k, causal, window)
    plan = np.empty((-(-n_q // block_q), -(-n_k // block_k)), dtype=int)
    for i, j in np.ndindex(plan.shape):
        tile = visible[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]
        whole = (j + 1) * block_k <= n_k
        plan[i, j] = tiling.SKIPPED if not tile.any() else tiling.FULL if tile.all() and whole else tiling.MASKED
    return plan


@st.composite
def tilings(draw, windows=True):
    causal = draw(st.booleans())
    n_q = draw(st.integers(1, 40))
    n_k = draw(st.integers(n_q if causal else 1, 60))
    window = draw(st.one_of(st.none(), st.integers(1, 70))) if causal and windows else None
    return n_q, n_k, draw(st.integers(1, 17)), draw(st.integers(1, 17)), causal, window


@given(tilings())
def test_the_plan_is_what_the_mask_says(problem):
    n_q, n_k, block_q, block_k, causal, window = problem
    np.testing.assert_array_equal(tiling.tile_plan(n_q, n_k, block_q, block_k, causal=causal, window=window),
                                  plan_from_the_mask(*problem))


def test_the_dense_mask_of_the_tests_is_the_library_causal_mask():
    np.testing.assert_array_equal(dense_mask(5, 9, True), anp.causal_mask(5, 9))


@given(tilings())
def test_the_visited_tiles_cover_every_visible_key_once(problem):
    n_q, n_k, block_q, block_k, causal, window = problem
    visible = dense_mask(n_q, n_k, causal, window)
    covered = np.zeros((n_q, n_k), dtype=int)
    for q_start, q_end in tiling.query_blocks(n_q, block_q):
        tiles = tiling.key_tiles(q_start, q_end, n_q, n_k, block_k, causal, window)
        assert tiles, "every query sees at least itself, so every query block visits a tile"
        # In order and without gaps, from the block holding the first key the window lets in.
        assert [tile.j for tile in tiles] == list(range(tiles[0].j, tiles[0].j + len(tiles)))
        for tile in tiles:
            assert 0 <= tile.k_start < tile.k_end <= n_k
            assert visible[q_start:q_end, tile.k_start:tile.k_end].any(), "a visited tile must hold a visible key"
            covered[q_start:q_end, tile.k_start:tile.k_end] += 1
            if tile.kind == tiling.MASKED and causal:
                expected = visible[q_start:q_end, tile.k_start:tile.k_end]
                np.testing.assert_array_equal(
                    tiling.causal_visible(q_start, q_end, tile.k_start, tile.k_end, n_k - n_q, window), expected)
    assert (covered[visible] == 1).all()  # every key a query may see is in exactly one visited tile


@pytest.mark.parametrize("n, window, block", [(4096, 256, 64), (4096, 1024, 128), (1000, 100, 32)])
def test_a_window_visits_a_band_of_tiles_whatever_the_length(n, window, block):
    # Each query block needs the keys of its own rows' windows: at most (block + window - 1) keys, so at most
    # ceil((block + window - 1) / block) + 1 key blocks, however long the sequence.
    plan = tiling.tile_plan(n, n, block, block, causal=True, window=window)
    per_row = (plan != tiling.SKIPPED).sum(axis=1)
    assert per_row.max() <= -(-(block + window - 1) // block) + 1
    # Masked tiles only on the two edges of the band: each edge spans block keys, so it touches at most two key
    # blocks, and exactly one when the window and the length are multiples of the block.
    aligned = window % block == 0 and n % block == 0
    assert ((plan == tiling.MASKED).sum(axis=1) <= (2 if aligned else 4)).all()
    causal_plan = tiling.tile_plan(n, n, block, block, causal=True)
    assert (plan != tiling.SKIPPED).sum() < (causal_plan != tiling.SKIPPED).sum()
    # A window at least as long as the keys changes nothing.
    np.testing.assert_array_equal(tiling.tile_plan(n, n, block, block, causal=True, window=n), causal_plan)


def test_a_window_of_one_visits_only_the_diagonal():
    plan = tiling.tile_plan(64, 64, 16, 16, causal=True, window=1)
    np.testing.assert_array_equal(plan, np.where(np.eye(4, dtype=bool), tiling.MASKED, tiling.SKIPPED))


@pytest.mark.parametrize("window", [None, 9, 30])
def test_the_numpy_loop_visits_exactly_the_planned_tiles(window):
    q, k = np.ones((40, 8)), np.ones((70, 8))
    trace = anp.FlashTrace.record(q, k, k, causal=True, window=window, block_q=16, block_k=16)
    plan = tiling.tile_plan(40, 70, 16, 16, causal=True, window=window)
    assert {(step.i, step.j) for step in trace.steps} == {tuple(t) for t in np.argwhere(plan != tiling.SKIPPED)}
    assert {(step.i, step.j) for step in trace.steps if step.kind == tiling.MASKED} == {
        tuple(t) for t in np.argwhere(plan == tiling.MASKED)}


@pytest.mark.parametrize("arguments,error,words", [
    ((0, 4, 2, 2), ValueError, "n_q must be a positive integer"),
    ((4, 4, 2.0, 2), TypeError, "block_q must be a positive integer"),
    ((5, 4, 2, 2), ValueError, "causal attention needs n_k >= n_q"),
])
def test_bad_arguments_are_refused_by_name(arguments, error, words):
    with pytest.raises(error, match=words):
        tiling.tile_plan(*arguments, causal=True)


@pytest.mark.parametrize("causal, window, error, words", [
    (False, 4, ValueError, "window=4 needs causal=True"),
    (True, 0, ValueError, "window must be a positive integer, got 0"),
    (True, 2.5, TypeError, "window must be a positive integer"),
])
def test_bad_windows_are_refused_by_name(causal, window, error, words):
    with pytest.raises(error, match=words):
        tiling.tile_plan(8, 8, 4, 4, causal=causal, window=window)
