"""attnlib.tiling: the tile plan shared by the NumPy loop, the torch loop and chapter 11, checked against the mask."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import attnlib.numpy as anp
from attnlib import tiling


def plan_from_the_mask(n_q, n_k, block_q, block_k, causal):
    """What every tile must be, read off the whole (n_q, n_k) mask with no index arithmetic."""
    visible = anp.causal_mask(n_q, n_k) if causal else np.ones((n_q, n_k), dtype=bool)
    plan = np.empty((-(-n_q // block_q), -(-n_k // block_k)), dtype=int)
    for i, j in np.ndindex(plan.shape):
        tile = visible[i * block_q:(i + 1) * block_q, j * block_k:(j + 1) * block_k]
        whole = (j + 1) * block_k <= n_k
        plan[i, j] = tiling.SKIPPED if not tile.any() else tiling.FULL if tile.all() and whole else tiling.MASKED
    return plan


@st.composite
def tilings(draw):
    causal = draw(st.booleans())
    n_q = draw(st.integers(1, 40))
    n_k = draw(st.integers(n_q if causal else 1, 60))
    return n_q, n_k, draw(st.integers(1, 17)), draw(st.integers(1, 17)), causal


@given(tilings())
def test_the_plan_is_what_the_mask_says(problem):
    n_q, n_k, block_q, block_k, causal = problem
    np.testing.assert_array_equal(tiling.tile_plan(n_q, n_k, block_q, block_k, causal=causal),
                                  plan_from_the_mask(*problem))


@given(tilings())
def test_the_visited_tiles_cover_every_visible_key_once(problem):
    n_q, n_k, block_q, block_k, causal = problem
    visible = anp.causal_mask(n_q, n_k) if causal else np.ones((n_q, n_k), dtype=bool)
    covered = np.zeros((n_q, n_k), dtype=int)
    for q_start, q_end in tiling.query_blocks(n_q, block_q):
        tiles = tiling.key_tiles(q_start, q_end, n_q, n_k, block_k, causal)
        assert [tile.j for tile in tiles] == list(range(len(tiles)))  # in order, from key block 0, no gaps
        for tile in tiles:
            assert 0 <= tile.k_start < tile.k_end <= n_k
            covered[q_start:q_end, tile.k_start:tile.k_end] += 1
            if tile.kind == tiling.MASKED and causal:
                expected = visible[q_start:q_end, tile.k_start:tile.k_end]
                np.testing.assert_array_equal(
                    tiling.causal_visible(q_start, q_end, tile.k_start, tile.k_end, n_k - n_q), expected)
    assert (covered[visible] == 1).all()  # every key a query may see is in exactly one visited tile


def test_the_numpy_loop_visits_exactly_the_planned_tiles():
    q, k = np.ones((40, 8)), np.ones((70, 8))
    trace = anp.FlashTrace.record(q, k, k, causal=True, block_q=16, block_k=16)
    plan = tiling.tile_plan(40, 70, 16, 16, causal=True)
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
