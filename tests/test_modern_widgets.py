"""RopeView and KVHeadsView in a live kernel: their state holds exactly what attnlib computes (apply_rope,
attnlib.sizes), a Python-side change is validated or recomputed, and bad input is refused naming the argument.

Drawing is tested in a real browser by test_modern_widgets_browser.py; here only the Python half runs.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import traitlets

from attnlib import sizes
from attnlib.numpy.positions import apply_rope
from attnlib.widgets import KVHeadsView, RopeView
from attnlib.widgets.kv_heads_view import SCHEMES, layout_rows
from attnlib.widgets.rope_view import plane_indices

ROUNDING = 5e-7  # figures store numbers rounded to 6 decimals


def state(figure) -> dict:
    """The synced traits as the page receives them (JSON)."""
    return json.loads(json.dumps({name: getattr(figure, name) for name in figure.class_trait_names(sync=True)
                                  if not name.startswith("_") and name not in ("layout", "comm", "tooltip")},
                                 default=str))


# --- RopeView ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_view_planes_and_scores_are_apply_rope(interleaved):
    rng = np.random.default_rng(1)
    q, k = rng.standard_normal((2, 12))  # (2, d)
    view = RopeView(q, k, n_positions=10, base=100.0, pairs=[0, 3, 5], interleaved=interleaved)
    positions = np.arange(10)
    rotated_q = apply_rope(np.tile(q, (10, 1)), positions, base=100.0, interleaved=interleaved)  # (N, d)
    rotated_k = apply_rope(np.tile(k, (10, 1)), positions, base=100.0, interleaved=interleaved)
    assert np.abs(np.array(view.scores) - rotated_q @ rotated_k.T).max() < ROUNDING
    for index, pair in enumerate([0, 3, 5]):
        first, second = plane_indices(12, pair, interleaved=interleaved)
        assert np.abs(np.array(view.q_planes[index]) - rotated_q[:, [first, second]]).max() < ROUNDING
        assert np.abs(np.array(view.k_planes[index]) - rotated_k[:, [first, second]]).max() < ROUNDING
        assert view.frequencies[index] == pytest.approx(100.0 ** (-2 * pair / 12))
    # The planes really are the pairs apply_rope turns together: position p turns pair i by p * theta_i.
    angle_q = np.unwrap(np.arctan2(*np.array(view.q_planes[1])[:, ::-1].T))  # (N,)
    assert np.allclose(np.diff(angle_q), view.frequencies[1], atol=1e-5)
    assert view.d == 12 and view.pairs == [0, 3, 5] and view.interleaved is interleaved
    assert view.error == "" and view.base == 100.0  # a base given at construction is not a failed live edit


def test_rope_view_score_depends_on_the_offset_only():
    view = RopeView.random(d=16, seed=2, n_positions=20)
    scores = np.array(view.scores)  # (N, N)
    for offset in range(-19, 20):
        diagonal = np.diagonal(scores, offset)
        assert np.ptp(diagonal) < 2 * ROUNDING, offset
    # ... and in each plane too: what the page computes from the saved planes.
    q_planes, k_planes = np.array(view.q_planes), np.array(view.k_planes)  # (P, N, 2)
    plane_scores = np.einsum("pmc,pnc->pmn", q_planes, k_planes)  # (P, N, N)
    assert np.abs(plane_scores[:, 7, 3] - plane_scores[:, 15, 11]).max() < 1e-5  # products of rounded numbers
    # The planes' scores add up to the head's when every plane is on offer.
    full = RopeView.random(d=4, seed=2, n_positions=6, pairs=[0, 1])
    summed = np.einsum("pmc,pnc->mn", np.array(full.q_planes), np.array(full.k_planes))
    assert np.abs(summed - np.array(full.scores)).max() < 1e-5


def test_rope_view_default_pairs_positions_and_json_state():
    view = RopeView.random(d=8, seed=0, query_position=6, key_position=2, title="t")
    assert view.pairs == [0, 2, 3]  # fastest, middle, slowest
    assert (view.query_position, view.key_position, view.pair, view.title) == (6, 2, 0, "t")
    saved = state(view)
    assert saved["scores"] == view.scores and len(saved["q_planes"]) == 3
    view.query_position, view.key_position, view.pair = 15, 0, 2
    assert (view.query_position, view.key_position, view.pair) == (15, 0, 2)
    assert RopeView.random(d=2, seed=0).pairs == [0]


def test_rope_view_base_recomputes_and_bad_live_input_is_shown():
    view = RopeView.random(d=8, seed=0)
    before = view.scores
    view.base = 10.0
    assert view.scores != before and view.error == ""
    positions = np.arange(view.n_positions)
    rotated = apply_rope(np.tile(view._q, (view.n_positions, 1)), positions, base=10.0)  # (N, d)
    rotated_k = apply_rope(np.tile(view._k, (view.n_positions, 1)), positions, base=10.0)
    assert np.abs(np.array(view.scores) - rotated @ rotated_k.T).max() < ROUNDING
    view.base = 0.5
    assert "base" in view.error and view.scores == RopeView.random(d=8, seed=0, base=10.0).scores


def test_rope_view_takes_torch_tensors():
    q, k = torch.randn(2, 6, dtype=torch.float64)
    view = RopeView(q, k, n_positions=5)
    assert view.d == 6 and np.array(view.scores).shape == (5, 5)


@pytest.mark.parametrize("make, error, match", [
    (lambda: RopeView(np.ones(5), np.ones(5)), ValueError, r"q must have an even length d >= 2.*d = 5"),
    (lambda: RopeView(np.ones((2, 4)), np.ones(4)), ValueError, r"q must be 1-D.*\(2, 4\)"),
    (lambda: RopeView(np.ones(4), np.ones(6)), ValueError, r"q and k must have the same length d, got 4 and 6"),
    (lambda: RopeView(np.ones(4), [1, 2, np.nan, 4]), ValueError, r"k"),
    (lambda: RopeView(np.ones(4), np.ones(4, dtype=bool)), TypeError, r"k must hold real numbers"),
    (lambda: RopeView(np.ones(512), np.ones(512)), ValueError, r"q has d = 512; this figure takes at most"),
    (lambda: RopeView(np.ones(4), np.ones(4), n_positions=65), ValueError, r"n_positions = 65 is too large"),
    (lambda: RopeView(np.ones(4), np.ones(4), n_positions=0), ValueError, r"n_positions"),
    (lambda: RopeView(np.ones(4), np.ones(4), base=1.0), ValueError, r"base must be a finite number greater than 1"),
    (lambda: RopeView(np.ones(4), np.ones(4), base="big"), TypeError, r"base must be a number"),
    (lambda: RopeView(np.ones(4), np.ones(4), base=float("inf")), ValueError, r"base"),
    (lambda: RopeView(np.ones(4), np.ones(4), pairs=[0, 2]), ValueError, r"pairs\[1\] must be in \[0, 2\)"),
    (lambda: RopeView(np.ones(4), np.ones(4), pairs=[1, 1]), ValueError, r"pairs must not repeat"),
    (lambda: RopeView(np.ones(4), np.ones(4), pairs=[]), ValueError, r"pairs must hold 1 to"),
    (lambda: RopeView(np.ones(4), np.ones(4), pairs="0"), TypeError, r"pairs must be a list"),
    (lambda: RopeView(np.ones(4), np.ones(4), pair=3), ValueError, r"pair must be in \[0, 2\)"),
    (lambda: RopeView(np.ones(4), np.ones(4), query_position=16), ValueError,
     r"query_position must be in \[0, 16\)"),
    (lambda: RopeView(np.ones(4), np.ones(4), key_position=-1), ValueError, r"key_position must be in"),
    (lambda: RopeView(np.ones(4), np.ones(4), key_position=1.5), traitlets.TraitError, r"'key_position' trait"),
    (lambda: RopeView(np.ones(4), np.ones(4), interleaved="yes"), TypeError, r"interleaved must be True or False"),
    (lambda: RopeView(np.ones(4), np.ones(4), heads=2), TypeError, r"unexpected keyword argument\(s\) \['heads'\]"),
    (lambda: RopeView.random(d=3), ValueError, r"even length"),
])
def test_rope_view_bad_input_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_rope_view_python_side_position_edits_are_validated():
    view = RopeView.random(d=4, seed=0, n_positions=8)
    with pytest.raises(ValueError, match=r"query_position must be in \[0, 8\)"):
        view.query_position = 8
    with pytest.raises(ValueError, match=r"pair must be in"):
        view.pair = 5


# --- KVHeadsView ------------------------------------------------------------------------------------------------


CONTEXTS = (4096, 32_768, 131_072)


def test_kv_heads_view_numbers_are_attnlib_sizes():
    view = KVHeadsView.from_sizes(context_lengths=CONTEXTS)
    assert [config["name"] for config in view.configs] == list(sizes.CACHE_LAYOUTS)
    for config in view.configs:
        layout = sizes.CACHE_LAYOUTS[config["name"]]
        own = [row for row in config["rows"] if row["own"]]
        assert len(own) == 1 and own[0]["scheme"] == layout.kind
        assert own[0]["bytes_per_token"] == sizes.kv_cache_bytes_per_token(layout)
        assert own[0]["bytes_at_context"] == [sizes.layout_kv_cache_bytes(layout, n) for n in CONTEXTS]
        assert {row["scheme"] for row in config["rows"]} >= {"MHA", "MQA", layout.kind}
        for row in config["rows"]:  # every alternative is the same layers, heads and head size
            if row["scheme"] in ("MHA", "GQA", "MQA") and "window" not in row["label"]:
                n_kv = int(row["label"].split(": ")[1].split(" ")[0])
                assert row["bytes_per_token"] == sizes.kv_cache_bytes(
                    n_layers=layout.n_layers, n_kv_heads=n_kv, d_head=layout.d_head, n_tokens=1, bytes_per_number=2)
    by_name = {config["name"]: config for config in view.configs}
    llama = by_name["Llama-3-70B"]["rows"]
    assert llama[0]["label"] == "GQA: 8 kv heads" and llama[0]["bytes_per_token"] == 320 * 2**10
    mha = next(row for row in llama if row["scheme"] == "MHA")
    assert mha["bytes_per_token"] == 8 * llama[0]["bytes_per_token"]
    mistral = by_name["Mistral-7B-v0.1"]["rows"]
    assert mistral[0]["bytes_at_context"] == [4096 * mistral[0]["bytes_per_token"]] * 3  # the window caps it
    no_window = next(row for row in mistral if row["label"] == "GQA: 8 kv heads")
    assert no_window["bytes_at_context"][2] == 32 * mistral[0]["bytes_at_context"][2]
    deepseek = by_name["DeepSeek-V3"]["rows"][0]
    assert deepseek["scheme"] == "MLA" and deepseek["bytes_per_token"] == 61 * (512 + 64) * 2


def test_kv_heads_view_rows_for_one_layout_and_float32():
    layout = sizes.CACHE_LAYOUTS["Llama-2-7B"]  # MHA: its MHA alternative is itself, shown once
    rows = layout_rows(layout, [100], bytes_per_number=4)
    assert [row["label"] for row in rows] == ["MHA: 32 kv heads", "GQA: 8 kv heads", "MQA: 1 kv head"]
    assert rows[0]["bytes_at_context"] == [100 * sizes.kv_cache_bytes_per_token(layout, bytes_per_number=4)]
    rows = layout_rows(dataclasses.replace(layout, n_heads=7), [1])  # 7 heads: no group count in between
    assert [row["scheme"] for row in rows] == ["MHA", "MQA"]


def test_kv_heads_view_drawing_options_and_state():
    view = KVHeadsView.from_sizes(["Llama-3-70B", "DeepSeek-V3"], context_lengths=[1024], n_heads=12,
                                  scheme="MLA", n_kv_heads=3, config=1, title="t")
    assert view.kv_options == [6, 4, 3, 2]
    assert (view.scheme, view.n_kv_heads, view.config, view.context, view.title) == ("MLA", 3, 1, 0, "t")
    saved = state(view)
    assert saved["configs"] == view.configs and saved["context_lengths"] == [1024]
    for scheme in SCHEMES:
        view.scheme = scheme
    view.n_kv_heads = 6
    view.config = 0


@pytest.mark.parametrize("change, match", [
    (("scheme", "GQA-2"), r"scheme must be one of \('MHA', 'GQA', 'MQA', 'MLA'\)"),
    (("n_kv_heads", 5), r"n_kv_heads must be one of \[4, 2\]"),
    (("n_kv_heads", True), r"n_kv_heads must be one of"),
    (("config", 2), r"config must be in \[0, 2\)"),
    (("context", 3), r"context must be in \[0, 3\)"),
])
def test_kv_heads_view_python_side_edits_are_validated(change, match):
    view = KVHeadsView.from_sizes(["Llama-3-70B", "Falcon-7B"])
    with pytest.raises(ValueError, match=match):
        setattr(view, *change)


def plain_row(**changes):
    row = {"label": "GQA: 2", "scheme": "GQA", "bytes_per_token": 10, "bytes_at_context": [100], "own": True}
    return {**row, **changes}


@pytest.mark.parametrize("make, error, match", [
    (lambda: KVHeadsView.from_sizes(["Llama-4"]), ValueError, r"names \['Llama-4'\] are not in attnlib.sizes"),
    (lambda: KVHeadsView.from_sizes("Llama-3-70B"), TypeError, r"names must be a list"),
    (lambda: KVHeadsView.from_sizes(context_lengths=[0]), ValueError, r"context_lengths\[0\]"),
    (lambda: KVHeadsView.from_sizes(context_lengths=[]), ValueError, r"context_lengths must hold 1 to"),
    (lambda: KVHeadsView.from_sizes(bytes_per_number=0), ValueError, r"bytes_per_number"),
    (lambda: KVHeadsView.from_sizes(n_heads=7), ValueError, r"n_heads = 7 has no divisor"),
    (lambda: KVHeadsView.from_sizes(n_heads=32), ValueError, r"n_heads = 32 is too large: at most 16"),
    (lambda: KVHeadsView.from_sizes(scheme="GQA", n_kv_heads=8), ValueError, r"n_kv_heads must be one of \[4, 2\]"),
    (lambda: KVHeadsView([{"name": "m", "rows": [plain_row()]}], context_lengths=[1, 2]), ValueError,
     r"configs\[0\]\['rows'\]\[0\]\['bytes_at_context'\] must hold 2 numbers"),
    (lambda: KVHeadsView([{"name": "m", "rows": [plain_row(scheme="XYZ")]}], context_lengths=[1]), ValueError,
     r"configs\[0\]\['rows'\]\[0\]\['scheme'\] must be one of"),
    (lambda: KVHeadsView([{"name": "m", "rows": [plain_row(bytes_per_token=float("nan"))]}], context_lengths=[1]),
     ValueError, r"bytes_per_token'\] must be a finite number of bytes"),
    (lambda: KVHeadsView([{"name": "m", "rows": [plain_row(), plain_row()]}], context_lengths=[1]), ValueError,
     r"marks 2 rows as the model's own"),
    (lambda: KVHeadsView([{"name": "m", "rows": [plain_row(extra=1)]}], context_lengths=[1]), ValueError,
     r"unknown \['extra'\]"),
    (lambda: KVHeadsView([{"name": "m"}], context_lengths=[1]), ValueError, r"configs\[0\] must be a dict with"),
    (lambda: KVHeadsView([], context_lengths=[1]), ValueError, r"configs must hold 1 to"),
    (lambda: KVHeadsView({"name": "m"}, context_lengths=[1]), TypeError, r"configs must be a list of dicts"),
])
def test_kv_heads_view_bad_input_names_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()
