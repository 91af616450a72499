"""RingView: its state, its refusals, and its data equal to the ring's one-process simulation.

Drawing and stepping are tested in a real browser by test_ring_widget_browser.py (on the gallery page).
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from attnlib.torch import distributed
from attnlib.widgets import RingView
from attnlib.widgets._base import STATIC, esm


def qkv(n=16, d=4, seed=0):
    generator = np.random.default_rng(seed)
    return [generator.standard_normal((n, d)) for _ in range(3)]


@pytest.mark.parametrize("world_size,causal,layout", [(4, True, "zigzag"), (2, False, "contiguous"),
                                                      (4, True, "contiguous"), (1, True, "zigzag")])
def test_data_equals_the_simulation(world_size, causal, layout):
    q, k, v = qkv()
    view = RingView(q, k, v, world_size=world_size, causal=causal, layout=layout)
    output, steps = distributed.simulate_ring(*(torch.from_numpy(x) for x in (q, k, v)), world_size, causal=causal,
                                              layout=layout)
    assert len(view.steps) == world_size and all(len(ranks) == world_size for ranks in view.steps)
    final = {s.rank: s.output for s in steps if s.step == world_size - 1}
    for s in steps:
        shown = view.steps[s.step][s.rank]
        assert shown["source"] == s.source and shown["key_chunks"] == list(s.key_chunks)
        assert [tuple(pair) for pair in shown["pairs"]] == list(s.pairs)
        for name in ("m", "l", "running_m", "running_l"):
            expected = getattr(s, name).numpy()
            got = np.array([-np.inf if x is None else x for x in shown[name]])
            np.testing.assert_allclose(got, expected, atol=5e-7, err_msg=name)
        assert shown["output_gap"] == pytest.approx(float((s.output - final[s.rank]).abs().max()))
    assert [shown["output_gap"] for shown in view.steps[-1]] == [0.0] * world_size
    assert view.holds == [list(distributed.rank_chunks(r, world_size, layout)) for r in range(world_size)]
    direct = torch.softmax(torch.from_numpy(q @ k.T / 2.0).masked_fill(
        causal & ~torch.ones(16, 16, dtype=torch.bool).tril(), float("-inf")), dim=-1) @ torch.from_numpy(v)
    assert float((output - direct).abs().max()) < 1e-12 and view.max_abs_error < 1e-12


def test_work_adds_up_to_the_causal_triangle_and_zigzag_balances_it():
    view = RingView(*qkv(32), world_size=4, causal=True, layout="zigzag")
    per_rank = [sum(view.steps[s][r]["work"] for s in range(4)) for r in range(4)]
    assert sum(per_rank) == 32 * 33 // 2 and max(per_rank) == min(per_rank)
    assert per_rank == distributed.work_per_rank(4, "zigzag", chunk=4)
    contiguous = RingView(*qkv(32), world_size=4, causal=True, layout="contiguous")
    per_rank = [sum(contiguous.steps[s][r]["work"] for s in range(4)) for r in range(4)]
    assert per_rank == [36, 100, 164, 228]  # 8·9/2 on the diagonal, plus 64 per earlier chunk


def test_changing_an_input_recomputes_and_a_bad_one_shows_an_error():
    view = RingView.from_seed(16, 4, world_size=4, seed=1)
    view.step = 3
    view.world_size = 2
    assert view.step == 0 and len(view.steps) == 2 and view.holds == [[0, 3], [1, 2]] and view.error == ""
    view.shard_layout = "contiguous"
    assert view.holds == [[0], [1]]
    view.world_size = 3  # 16 positions do not cut into 3 chunks: the figure keeps its data and says why
    assert "do not cut into 3 equal chunks" in view.error and len(view.steps) == 2
    view.world_size = 4
    assert view.error == "" and len(view.steps) == 4


def test_no_trait_shadows_an_ipywidgets_one():
    """DOMWidget.layout is a reference to a layout model: a figure trait of that name breaks the page's widgets."""
    import ipywidgets

    base = set(ipywidgets.DOMWidget.class_trait_names())
    assert RingView(*qkv(), layout="contiguous").layout.__class__ is ipywidgets.Layout
    assert {"world_size", "causal", "shard_layout", "steps", "step"}.isdisjoint(base)


def test_from_seed_is_reproducible():
    assert RingView.from_seed(8, 2, seed=5).steps == RingView.from_seed(8, 2, seed=5).steps
    assert RingView.from_seed(8, 2, seed=5).steps != RingView.from_seed(8, 2, seed=6).steps


@pytest.mark.parametrize("make,error,words", [
    (lambda: RingView(*qkv(), world_size=9), ValueError, r"world_size = 9 is too large: at most 8"),
    (lambda: RingView(*qkv(), world_size=0), ValueError, "positive integer"),
    (lambda: RingView(*qkv(), layout="striped"), ValueError, r"layout must be one of \('contiguous', 'zigzag'\)"),
    (lambda: RingView(*qkv(), causal="yes"), TypeError, "causal must be True or False"),
    (lambda: RingView(*qkv(12), world_size=4, layout="zigzag"), ValueError, "n = 12 positions do not cut into 8"),
    (lambda: RingView(*qkv(128)), ValueError, r"at most 64 positions"),
    (lambda: RingView(np.zeros((2, 8, 4)), np.zeros((2, 8, 4)), np.zeros((2, 8, 4))), ValueError,
     r"shape \(n, d\)"),
    (lambda: RingView(np.zeros((8, 4)), np.zeros((8, 3)), np.zeros((8, 4))), ValueError, "one sequence"),
    (lambda: RingView(np.full((8, 4), np.nan), np.zeros((8, 4)), np.zeros((8, 4))), ValueError, "q contains NaN"),
    (lambda: RingView(np.zeros((8, 4)), "keys", np.zeros((8, 4))), TypeError, "k must be an array"),
    (lambda: RingView.from_seed(8, 2, seed=-1), ValueError, "seed must be a non-negative integer"),
    (lambda: RingView.from_seed(8, 2, ranks=3), TypeError, r"unexpected keyword argument\(s\) \['ranks'\]"),
])
def test_bad_input_is_refused_by_name(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_step_must_be_a_ring_step():
    view = RingView(*qkv(), world_size=2)
    with pytest.raises(ValueError, match=r"step must be in \[0, 2\) for 2 ring steps, got 2"):
        view.step = 2


def test_module_is_its_own_file_with_the_shared_helpers_inlined():
    assert RingView._esm == esm("ring_view.js")
    source = (STATIC / "ring_view.js").read_text()
    assert not re.search(r"^(function|const) (svg|html|stepper|mount|table|formatNumber)\b", source, re.M)
    assert not re.search(r"^import ", esm("ring_view.js"), re.M)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (the browser tests still run it)")
def test_assembled_module_is_valid_javascript(tmp_path):
    path = tmp_path / "module.mjs"
    path.write_text(esm("ring_view.js"))
    result = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
