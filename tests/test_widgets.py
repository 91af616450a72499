"""The figures in a live kernel: their state holds exactly what attnlib computes, a Python-side input change
recomputes it, and bad input is refused with a message that names the argument (or shown in the figure).

Drawing is tested in a real browser by test_site_browser.py; here only the Python half runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import attnlib.numpy as an
import attnlib.torch as at
from attnlib.numpy.flash_attention import FlashTrace, flash_attention
from attnlib.widgets import (
    ALL_HEADS,
    AddNormView,
    AttentionExplorer,
    BlockTableView,
    ExamGrader,
    FeedForwardMemoryView,
    KVCacheView,
    KVHeadsView,
    ModelView,
    RingView,
    RooflineView,
    RopeView,
    TileStepper,
    _base,
)
from attnlib.widgets._base import STATIC, esm
from attnlib.widgets.add_norm_view import WIRINGS
from attnlib.widgets.kv_cache_view import expected_work

ROUNDING = 5e-7  # figures store weights rounded to 6 decimals
FIGURES = [AttentionExplorer, TileStepper, ExamGrader, KVCacheView, AddNormView, FeedForwardMemoryView, ModelView,
           RooflineView, RopeView, KVHeadsView, RingView, BlockTableView]


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_do_not_shadow_ipywidgets_traits(figure):
    """A trait named like one of ipywidgets' own (e.g. "keys", the list of synced traits) breaks the widget."""
    import anywidget

    ours = set(figure.class_trait_names()) - set(anywidget.AnyWidget.class_trait_names())
    assert ours, figure
    assert {"_model_module", "_view_name"} <= set(figure.class_trait_names(sync=True))
    for name in ours:
        assert not hasattr(anywidget.AnyWidget, name), f"{figure.__name__}.{name} shadows an ipywidgets attribute"


WIDGET_SOURCES = sorted(path.name for path in STATIC.glob("*.js") if not path.name.startswith("_"))


def test_every_figure_uses_its_own_module_with_the_shared_helpers_inlined():
    """Each figure's _esm is its static/<name>.js with the import of _shared.js replaced by the shared source."""
    assert {figure._esm for figure in FIGURES} == {esm(name) for name in WIDGET_SOURCES}
    shared_names = set(re.findall(r"^export (?:function|const) (\w+)", (STATIC / "_shared.js").read_text(), re.M))
    for name in WIDGET_SOURCES:
        source = (STATIC / name).read_text()
        (imported,) = re.findall(r'^import \{([^}]*)\} from "\./_shared\.js";$', source, re.M)
        imported = {word.strip() for word in imported.split(",")}
        assert imported <= shared_names, name
        module = esm(name)
        assert not re.search(r"^import ", module, re.M), f"{name}: every import is resolved in Python"
        assert module.count("function svg(") == 1 and re.search(r"^function render\(", module, re.M), name
        # Helpers are written once, in _shared.js, not again in a widget's own file.
        assert not re.search(r"^(function|const) (svg|html|share|viridis|button|toggle|table|stepper|mount)\b",
                             source, re.M), name


def test_esm_refuses_an_import_the_shared_file_does_not_export(tmp_path, monkeypatch):
    (tmp_path / "_shared.js").write_text("export function html() {}\n")
    (tmp_path / "figure.js").write_text('import { html, nothing } from "./_shared.js";\nexport default {};\n')
    monkeypatch.setattr(_base, "STATIC", tmp_path)
    monkeypatch.setattr(_base, "SHARED", tmp_path / "_shared.js")
    with pytest.raises(ImportError, match=r"static/figure.js imports \['nothing'\] from _shared.js"):
        esm("figure.js")
    (tmp_path / "figure.js").write_text('import { html } from "./_shared.js";\nconst svg = 1;\nexport default {};\n')
    module = esm("figure.js")
    assert module.startswith("const { html } = (() => {") and "return { html };" in module
    assert "const svg = 1;" in module  # the widget's own names live beside the shared ones, not among them


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (the browser tests still run them)")
@pytest.mark.parametrize("name", WIDGET_SOURCES)
def test_each_assembled_module_is_valid_javascript(name, tmp_path):
    path = tmp_path / "module.mjs"  # .mjs: checked as an ES module
    path.write_text(esm(name))
    result = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def small_lm(causal=True, seed=0):
    return an.TransformerLM(vocab_size=20, d_model=16, n_heads=4, d_ff=32, n_layers=2, max_len=16, seed=seed,
                            causal=causal)


# --- AttentionExplorer ----------------------------------------------------------------------------------------


def test_explorer_from_model_holds_every_layer_and_head_of_attnlib():
    model = small_lm()
    tokens, ids = ["a", "b", "c", "d", "e"], np.array([1, 5, 7, 2, 9])
    explorer = AttentionExplorer.from_model(model, tokens, ids)
    assert explorer.shape == (2, 4, 5, 5)
    assert explorer.causal is True  # the model's own mode is shown first
    assert model.causal is True  # from_model flips the flag to get both maps, then restores it
    model(ids[None])  # causal, as the model is
    expected = np.stack([block.attention.last_weights[0] for block in model.blocks])  # (L, H, n, n)
    assert explorer.temperatures == [1.0]  # one temperature axis entry: the maps as the model computed them
    np.testing.assert_allclose(explorer.causal_weights[0], expected, atol=ROUNDING)
    model.causal = False
    model(ids[None])
    expected = np.stack([block.attention.last_weights[0] for block in model.blocks])
    np.testing.assert_allclose(explorer.weights[0], expected, atol=ROUNDING)
    causal = np.asarray(explorer.causal_weights)
    upper = np.triu(np.ones((5, 5), dtype=bool), k=1)
    assert (causal[..., upper] == 0).all(), "above the diagonal, causal weights are exactly 0"
    assert (np.asarray(explorer.weights)[..., upper] > 0).all()
    np.testing.assert_allclose(causal.sum(-1), 1, atol=1e-5)


def test_explorer_from_torch_model_equals_its_numpy_twin():
    torch.manual_seed(0)
    model = at.TransformerLM(vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=16)
    twin = an.TransformerLM.from_twin(model)
    tokens, ids = list("wxyz"), np.array([3, 4, 5, 6])
    from_torch = AttentionExplorer.from_model(model, tokens, torch.tensor(ids))
    from_numpy = AttentionExplorer.from_model(twin, tokens, ids)
    np.testing.assert_allclose(from_torch.weights, from_numpy.weights, atol=2e-6)
    np.testing.assert_allclose(from_torch.causal_weights, from_numpy.causal_weights, atol=2e-6)
    assert model.causal is True


def test_explorer_plain_data_any_rank():
    q = np.random.default_rng(0).standard_normal((3, 6, 8))  # (heads, n, d_k)
    _, weights = an.attention(q, q, q)
    _, causal_weights = an.attention(q, q, q, causal=True)
    explorer = AttentionExplorer(list("abcdef"), weights, causal_weights=causal_weights, head=ALL_HEADS)
    assert explorer.shape == (1, 3, 6, 6)
    np.testing.assert_allclose(explorer.shown_weights(), weights, atol=ROUNDING)
    explorer.causal, explorer.head = True, 2
    np.testing.assert_allclose(explorer.shown_weights(), causal_weights[2], atol=ROUNDING)
    only_causal = AttentionExplorer(list("abcdef"), causal_weights=causal_weights[0])
    assert only_causal.shape == (1, 1, 6, 6) and only_causal.causal and only_causal.weights == []


def test_explorer_state_is_plain_json():
    import json

    explorer = AttentionExplorer.from_sentence("one two three", seed=1)
    state = explorer.get_state()
    json.dumps(state)  # the notebook stores it, the static page draws from it
    assert state["_esm"] == esm("attention_explorer.js")
    assert state["query_labels"] == state["key_labels"] == ["one", "two", "three"]


def test_explorer_sentence_and_seed_recompute():
    explorer = AttentionExplorer.from_sentence("the cat sat", seed=0)
    first = np.asarray(explorer.weights)
    explorer.sentence = "the cat sat on the mat"
    assert explorer.tokens == ["the", "cat", "sat", "on", "the", "mat"]
    fresh = AttentionExplorer.from_sentence("the cat sat on the mat", seed=0)
    assert explorer.weights == fresh.weights and explorer.causal_weights == fresh.causal_weights
    explorer.seed = 3
    assert explorer.weights != fresh.weights
    assert explorer.weights == AttentionExplorer.from_sentence("the cat sat on the mat", seed=3).weights
    assert first.shape == (1, 2, 4, 3, 3) and explorer.error == ""


def test_explorer_with_a_model_and_tokenizer():
    class Words:  # the tokenizer interface from_sentence uses: tokenize and encode
        vocab = ["<pad>", "the", "cat", "sat"]

        def tokenize(self, text):
            return text.split()

        def encode(self, text):
            return [self.vocab.index(word) for word in text.split()]

    model = an.TransformerLM(vocab_size=4, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=8, seed=0)
    explorer = AttentionExplorer.from_sentence("the cat sat", model=model, tokenizer=Words())
    reference = AttentionExplorer.from_model(model, ["the", "cat", "sat"], [1, 2, 3])
    assert explorer.weights == reference.weights and explorer.shape == (1, 2, 3, 3)
    explorer.sentence = "cat sat"
    assert explorer.tokens == ["cat", "sat"]


def test_explorer_python_side_edits_are_validated():
    explorer = AttentionExplorer.from_sentence("a b c", seed=0)
    with pytest.raises(ValueError, match="head"):
        explorer.head = 4
    with pytest.raises(ValueError, match="layer"):
        explorer.layer = 2
    explorer.head = ALL_HEADS
    assert explorer.shown_weights().shape == (4, 3, 3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AttentionExplorer.from_sentence(""), "sentence"),
        (lambda: AttentionExplorer.from_sentence("   "), "sentence"),
        (lambda: AttentionExplorer.from_sentence("a b", head=4), "head"),
        (lambda: AttentionExplorer.from_sentence("a b", head=-2), "head"),
        (lambda: AttentionExplorer.from_sentence("a b", layer=5), "layer"),
        (lambda: AttentionExplorer.from_sentence(" ".join(["w"] * 65)), "sentence has 65 tokens"),
        (lambda: AttentionExplorer([], np.ones((0, 0))), "tokens must not be empty"),
        (lambda: AttentionExplorer(["a"] * 70, np.full((70, 70), 1 / 70)), "at most 64"),
        (lambda: AttentionExplorer(["a", "b"], np.ones((3, 3)) / 3), "weights must have shape"),
        (lambda: AttentionExplorer(["a", "b"], np.ones((2, 2))), "weights must be attention weights"),
        (lambda: AttentionExplorer(["a", "b"]), "give weights"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), causal=True), "causal_weights"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), causal_weights=np.ones((2, 2, 2)) / 2),
         "same shape"),
        (lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [1, 2, 3]), "ids"),
        (lambda: AttentionExplorer.from_model(object(), ["a"], [1]), "model must be an attnlib TransformerLM"),
        (lambda: AttentionExplorer.from_sentence("a", model=small_lm()), "tokenizer"),
    ],
)
def test_explorer_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_explorer_bad_live_input_is_shown_in_the_figure():
    explorer = AttentionExplorer.from_sentence("a b c", seed=0)
    before = explorer.weights
    explorer.sentence = ""
    assert "sentence" in explorer.error and "at least one word" in explorer.error
    assert explorer.weights == before  # the previous figure stays, under the message
    explorer.sentence = " ".join(["w"] * 80)
    assert "80 tokens" in explorer.error
    explorer.sentence = "x y"
    assert explorer.error == "" and explorer.tokens == ["x", "y"]


SIX = list("uvwxyz")


def library(seed=0):
    """Four notes (queries) looking up six books (keys) whose contents (values) have three kinds of material."""
    rng = np.random.default_rng(seed)
    q, k, v = rng.standard_normal((4, 5)), rng.standard_normal((6, 5)), rng.random((6, 3))
    return q, k, v, list("ABCD"), ["b0", "b1", "b2", "b3", "b4", "b5"], ["x", "y", "z"]


def test_explorer_from_qkv_holds_attnlib_weights_and_outputs_at_every_temperature():
    q, k, v, notes, books, material = library()
    temperatures = [0.25, 1.0, 4.0]
    explorer = AttentionExplorer.from_qkv(q, k, v, query_labels=notes, key_labels=books, value_labels=material,
                                          temperatures=temperatures, query=2)
    assert explorer.shape == (1, 1, 4, 6) and explorer.temperature == 1.0 and explorer.query == 2
    assert explorer.query_labels == notes and explorer.key_labels == books and explorer.value_labels == material
    assert explorer.causal_weights == [] and explorer.causal_outputs == []
    for index, temperature in enumerate(temperatures):
        output, weights = an.attention(q, k, v, scale=1 / (np.sqrt(5) * temperature))
        np.testing.assert_allclose(np.asarray(explorer.weights)[index, 0, 0], weights, atol=ROUNDING)
        np.testing.assert_allclose(np.asarray(explorer.outputs)[index, 0, 0], output, atol=ROUNDING)
        explorer.temperature = temperature
        np.testing.assert_allclose(explorer.shown_weights(), weights, atol=ROUNDING)
        np.testing.assert_allclose(explorer.shown_outputs(), output, atol=ROUNDING)
    # Lower temperature, sharper weights: the top weight of every row falls as T grows.
    tops = np.asarray(explorer.weights).max(axis=-1)[:, 0, 0]  # (temperatures, n_q)
    assert (tops[0] > tops[1]).all() and (tops[1] > tops[2]).all()
    with pytest.raises(AttributeError, match="query_labels and key_labels"):
        explorer.tokens  # noqa: B018 - the property refuses: queries and keys are different things


def test_explorer_from_qkv_with_heads_and_a_scale():
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 2))
    explorer = AttentionExplorer.from_qkv(q, k, v, query_labels=list("abc"), key_labels=list("vwxyz"), scale=0.3,
                                          head=ALL_HEADS)
    output, weights = an.attention(q, k, v, scale=0.3)
    assert explorer.shape == (1, 2, 3, 5) and explorer.value_labels == ["output[0]", "output[1]"]
    np.testing.assert_allclose(explorer.shown_weights(), weights, atol=ROUNDING)
    np.testing.assert_allclose(explorer.shown_outputs(), output, atol=ROUNDING)


def test_explorer_tokens_or_separate_labels():
    weights = np.full((2, 3), 1 / 3)  # two queries over three keys
    cross = AttentionExplorer(weights=weights, query_labels=["q0", "q1"], key_labels=["k0", "k1", "k2"],
                              outputs=np.ones((2, 4)), value_labels=list("abcd"))
    assert cross.shape == (1, 1, 2, 3) and cross.temperatures == [1.0] and cross.query == -1
    np.testing.assert_allclose(cross.shown_outputs(), np.ones((2, 4)))
    square = AttentionExplorer(["a", "b"], np.eye(2))  # the single-list call: queries and keys are the tokens
    assert square.query_labels == square.key_labels == square.tokens == ["a", "b"]
    with pytest.raises(ValueError, match="without outputs"):
        square.shown_outputs()
    square.query = 1
    with pytest.raises(ValueError, match=r"query must be in \[0, 2\)"):
        square.query = 2


def test_explorer_new_sentence_lets_go_of_the_pinned_query():
    explorer = AttentionExplorer.from_sentence("a b c d", seed=0, query=3)
    explorer.sentence = "a b"
    assert explorer.query == -1 and explorer.error == "" and explorer.tokens == ["a", "b"]


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AttentionExplorer(weights=np.full((3, 6), 1 / 6), query_labels=list("abcd"), key_labels=SIX),
         r"weights must have shape \(\.\.\., n_q, n_k\) = \(\.\.\., 4, 6\) for n_q = 4 labels in query_labels and "
         r"n_k = 6 in key_labels, got \(3, 6\)"),
        (lambda: AttentionExplorer(weights=np.full((4, 5), 1 / 5), query_labels=list("abcd"), key_labels=SIX),
         r"n_k = 6 in key_labels, got \(4, 5\)"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), key_labels=["a", "b"]), "give tokens .* not both"),
        (lambda: AttentionExplorer(weights=np.eye(2), query_labels=["a", "b"]), "both query_labels and key_labels"),
        (lambda: AttentionExplorer(weights=np.eye(2), query_labels=["a", "b"], key_labels="ab"),
         "key_labels must be a list of strings"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), outputs=np.ones((3, 2))),
         r"outputs must have one row per query row of weights.*got \(3, 2\)"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), outputs=np.ones((2, 2)), value_labels=["x"]),
         r"value_labels must have one label per output column \(d_v = 2\), got 1"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), value_labels=["x"]), "give outputs too"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), causal_outputs=np.ones((2, 2))),
         "causal_outputs needs causal_weights"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), outputs=np.ones((2, 40))), "at most 32"),
        (lambda: AttentionExplorer(["a", "b"], np.stack([np.eye(2)] * 2), temperatures=[1.0, 2.0, 3.0]),
         r"3 temperatures first.*got \(2, 2, 2\)"),
        (lambda: AttentionExplorer(["a", "b"], np.stack([np.eye(2)] * 2), temperatures=[1.0, 1.0]), "distinct"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2)[None], temperatures=[0.0]), "temperatures"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2)[None], temperatures=[2.0], temperature=1.0),
         r"temperature must be one of the temperatures computed, \[2.0\]"),
        (lambda: AttentionExplorer(["a", "b"], np.eye(2), query=5), "query must be in"),
        (lambda: AttentionExplorer.from_qkv(*library()[:3], query_labels=list("abc"), key_labels=library()[4]),
         r"query_labels must have one label per query \(row of q\): 3 labels for q of shape \(4, 5\)"),
        (lambda: AttentionExplorer.from_qkv(*library()[:3], query_labels=library()[3], key_labels=["k"]),
         r"key_labels must have one label per key \(row of k\): 1 labels for k of shape \(6, 5\)"),
        (lambda: AttentionExplorer.from_qkv(*library()[:3], query_labels=library()[3], key_labels=library()[4],
                                            value_labels=["x"]), "value_labels must have one label per output column"),
        (lambda: AttentionExplorer.from_qkv(np.ones((1, 1, 2, 3)), np.ones((2, 3)), np.ones((2, 3)),
                                            query_labels=["a", "b"], key_labels=["c", "d"]), "q must have shape"),
        (lambda: AttentionExplorer.from_qkv(np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 3)),
                                            query_labels=["a", "b"], key_labels=["c", "d"]), "q and k must share"),
        (lambda: AttentionExplorer.from_qkv(*library()[:3], query_labels=library()[3], key_labels=library()[4],
                                            temperatures=[]), "temperatures must hold 1 to 9 values"),
    ],
)
def test_explorer_bad_labels_outputs_and_temperatures_name_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --- TileStepper ----------------------------------------------------------------------------------------------


def qkv(n_q=5, n_k=7, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_q, d)), rng.standard_normal((n_k, d)), rng.standard_normal((n_k, d))


@pytest.mark.parametrize("causal", [False, True])
def test_tile_stepper_state_is_the_flash_trace(causal):
    q, k, v = qkv()
    stepper = TileStepper.from_qkv(q, k, v, block_q=2, block_k=3, causal=causal)
    trace = FlashTrace.record(q, k, v, block_q=2, block_k=3, causal=causal)
    output = flash_attention(q, k, v, block_q=2, block_k=3, causal=causal)
    assert len(stepper.steps) == len(trace.steps) and stepper.skipped == [list(t) for t in trace.skipped]
    for shown, step in zip(stepper.steps, trace.steps, strict=True):
        assert (shown["i"], shown["j"]) == (step.i, step.j)
        for name in ("m_new", "l_old", "l_new", "rescale", "acc"):
            np.testing.assert_allclose(shown[name], getattr(step, name), atol=ROUNDING)
        m_old = np.array([-np.inf if m is None else m for m in shown["m_old"]])
        np.testing.assert_allclose(m_old, step.m_old, atol=ROUNDING)
        scores = np.array([[-np.inf if s is None else s for s in row] for row in shown["scores"]])
        np.testing.assert_allclose(scores, step.scores, atol=ROUNDING)
        np.testing.assert_allclose(shown["rescale"], np.exp(step.m_old - step.m_new), atol=ROUNDING)
    np.testing.assert_allclose(stepper.output, output, atol=ROUNDING)
    reference, _ = an.attention(q, k, v, causal=causal)
    np.testing.assert_allclose(stepper.reference, reference, atol=ROUNDING)
    assert 0 <= stepper.max_error < 1e-12
    assert bool(stepper.skipped) == causal  # with blocks of 2 x 3 and 5 x 7, causal skips the top-right tile


def test_tile_stepper_from_a_trace_or_its_dict():
    q, k, v = qkv()
    trace = FlashTrace.record(q, k, v, block_q=3, block_k=2)
    reference, _ = an.attention(q, k, v)
    from_trace = TileStepper(trace, reference)
    from_dict = TileStepper(trace.to_dict(), reference)
    assert from_trace.steps == from_dict.steps and from_trace.output == from_dict.output
    assert TileStepper(trace).max_error == -1.0  # no reference: no final comparison


def test_tile_stepper_block_sizes_causal_and_seed_recompute():
    stepper = TileStepper.random(n_q=6, n_k=8, d=4, seed=0, block_q=2, block_k=3)
    assert len(stepper.steps) == 3 * 3
    stepper.step = 4
    stepper.block_q = 3
    assert len(stepper.steps) == 2 * 3 and stepper.step == 0 and stepper.block_q == 3
    stepper.block_k = 8
    assert len(stepper.steps) == 2
    stepper.causal = True
    assert stepper.max_error < 1e-12 and stepper.error == ""
    before = stepper.output
    stepper.seed = 1
    assert stepper.output != before
    assert stepper.output == TileStepper.random(n_q=6, n_k=8, d=4, seed=1, block_q=3, block_k=8, causal=True).output


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TileStepper.from_qkv(*qkv(), block_q=0), "block_q"),
        (lambda: TileStepper.from_qkv(*qkv(n_q=40, n_k=40)), "n_q = 40 is too large"),
        (lambda: TileStepper.from_qkv(*qkv(d=20)), "d_v = 20 is too large"),
        (lambda: TileStepper.from_qkv(np.ones((2, 3, 4)), np.ones((2, 3, 4)), np.ones((2, 3, 4))), "one head"),
        (lambda: TileStepper(FlashTrace()), "no steps"),
        (lambda: TileStepper("trace"), "trace must be a FlashTrace"),
        (lambda: TileStepper.random(step=100), "step"),
        (lambda: TileStepper(*_trace_and_reference()), "reference must have the output's shape"),
    ],
)
def test_tile_stepper_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def _trace_and_reference():
    q, k, v = qkv()
    trace = FlashTrace.record(q, k, v, block_q=2, block_k=2)
    return trace, an.attention(q, k, v)[0][:, :2]  # a reference of the wrong shape


def test_tile_stepper_bad_live_input_is_shown_in_the_figure():
    stepper = TileStepper.random(n_q=4, n_k=4, d=2)
    with pytest.raises(ValueError, match="block_k"):
        stepper.block_k = -1
    stepper.seed = -3
    assert "seed" in stepper.error
    stepper.seed = 2
    assert stepper.error == ""


# --- ExamGrader -----------------------------------------------------------------------------------------------


def test_exam_grader_notes_are_attnlib_online_softmax():
    marks = [62.0, 71, 80, 55, 68, 74, 59, 77, 66, 70, 64, 90, 58, 73, 81, 69, 60, 75, 52, 67, 70]
    grader = ExamGrader(marks, batch_size=10)
    states = an.online_softmax_steps(np.array(marks), 10)
    assert len(grader.batches) == 3
    for note, state in zip(grader.batches, states, strict=True):
        assert note["m_new"] == pytest.approx(float(state.m)) and note["l_new"] == pytest.approx(float(state.l))
        assert note["l_new"] == pytest.approx(note["l_old"] * note["rescale"] + note["batch_sum"])
    first, second, third = grader.batches
    assert first["m_old"] is None and first["rescale"] == 0.0 and first["m_new"] == 80
    assert second["m_old"] == 80 and second["m_new"] == 90
    assert second["rescale"] == pytest.approx(np.exp(80 - 90))  # the one rescale factor of the story
    assert third["rescale"] == 1.0  # no new best: nothing to correct
    np.testing.assert_allclose(grader.shares, an.softmax(np.array(marks)), atol=ROUNDING)
    assert grader.max_error < 1e-15


def test_exam_grader_story_and_recompute():
    grader = ExamGrader.story(seed=0)
    assert len(grader.marks) == 30
    assert grader.batches[0]["batch_best"] == 80 and grader.batches[1]["batch_best"] == 90
    assert max(grader.marks[20:]) < 90
    same_papers = grader.marks
    grader.batch_size = 7
    assert grader.marks == same_papers and len(grader.batches) == 5
    grader.batch_size = 10
    grader.temperature = 10.0
    assert grader.batches[1]["rescale"] == pytest.approx(np.exp((80 - 90) / 10))
    np.testing.assert_allclose(grader.shares, an.softmax(np.array(same_papers) / 10), atol=ROUNDING)
    grader.seed = 5
    assert grader.marks != same_papers and grader.marks == ExamGrader.story(seed=5).marks


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ExamGrader([]), "marks must not be empty"),
        (lambda: ExamGrader([[1.0, 2.0]]), "1-D"),
        (lambda: ExamGrader(list(range(61))), "at most 60"),
        (lambda: ExamGrader([1.0, 2.0], batch_size=0), "batch_size"),
        (lambda: ExamGrader([1.0, 2.0], temperature=0), "temperature"),
        (lambda: ExamGrader([1.0, float("nan")]), "marks contains NaN"),
        (lambda: ExamGrader([1.0, 2.0], step=1), "step"),
        (lambda: ExamGrader.story(n_batches=1), "n_batches"),
    ],
)
def test_exam_grader_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_exam_grader_bad_live_input_is_shown_in_the_figure():
    grader = ExamGrader.story(seed=0)
    grader.batch_size = 0
    assert "batch_size must be a positive integer" in grader.error
    grader.batch_size = 10
    assert grader.error == ""
    grader.temperature = -1.0
    assert "temperature" in grader.error
    grader.temperature = 2.0
    assert grader.error == ""


# --- KVCacheView ----------------------------------------------------------------------------------------------


def test_kv_cache_view_holds_the_cache_attnlib_builds():
    model = small_lm(seed=1)
    view = KVCacheView.from_model(model, [3, 4, 5], n_new=4, layer=1, head=2)
    generated = model.generate(np.array([3, 4, 5]), 4)
    assert view.tokens == [f"#{i}" for i in generated]  # the same greedy tokens as TransformerLM.generate
    cache = model.new_cache()
    model(generated[None, :-1], kv_cache=cache)  # every token the decoding read: prompt + n_new - 1 generated...
    model(generated[None, -1:], kv_cache=cache)  # ...and the last one, read at the last step
    np.testing.assert_allclose(view.cache_keys, cache[1].keys[0, 2], atol=ROUNDING)
    np.testing.assert_allclose(view.cache_values, cache[1].values[0, 2], atol=ROUNDING)
    assert len(view.weights) == 5 and [len(w) for w in view.weights] == [3, 4, 5, 6, 7]
    np.testing.assert_allclose([sum(w) for w in view.weights], 1, atol=1e-5)
    # The work counted from what the model computed equals the count by hand, and the cache changes nothing.
    assert view.work == expected_work(3, 5, n_layers=2, n_heads=4)
    assert 0 <= view.logit_gap < 1e-12
    work = view.work
    assert sum(work["without_cache"]["kv_rows"]) > sum(work["with_cache"]["kv_rows"])


def test_kv_cache_view_torch_model_and_labels():
    torch.manual_seed(0)
    model = at.TransformerLM(vocab_size=12, d_model=8, n_heads=2, d_ff=16, n_layers=1, max_len=16)
    words = [f"w{i}" for i in range(12)]
    view = KVCacheView.from_model(model, torch.tensor([1, 2]), 3, vocabulary=words)
    assert view.tokens[:2] == ["w1", "w2"] and len(view.tokens) == 5
    assert view.logit_gap < 1e-4  # float32: the same logits up to rounding

    class Decoder:
        def decode(self, ids):
            return "-".join(str(i) for i in ids)

    assert KVCacheView.from_model(model, [1, 2], 3, tokenizer=Decoder()).tokens[:2] == ["1", "2"]


def test_kv_cache_view_plain_data_and_recompute():
    keys = np.arange(12.0).reshape(4, 3)
    view = KVCacheView(["a", "b", "c", "d"], 2, keys, -keys)
    assert view.work == expected_work(2, 3) and view.n_new == 2 and view.weights == []
    model = small_lm(seed=2)
    live = KVCacheView.from_model(model, [1, 2], 2)
    live.n_new = 5
    assert len(live.tokens) == 7 and live.error == ""
    live.layer, live.head = 1, 3
    np.testing.assert_allclose(live.cache_keys, KVCacheView.from_model(model, [1, 2], 5, layer=1, head=3).cache_keys)
    live.head = 9
    assert "head must be in [0, 4)" in live.error
    live.head = 0
    assert live.error == ""
    live.n_new = 40
    assert "n_new=40" in live.error


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: KVCacheView.from_model(small_lm(), [], 3), "prompt_ids"),
        (lambda: KVCacheView.from_model(small_lm(), [1], 0), "n_new"),
        (lambda: KVCacheView.from_model(small_lm(), [1], 20), "exceeds|more than"),
        (lambda: KVCacheView.from_model(small_lm(), [99], 2), "prompt_ids must lie in"),
        (lambda: KVCacheView.from_model(small_lm(), [1], 2, head=4), "head"),
        (lambda: KVCacheView.from_model(small_lm(), [1], 2, layer=2), "layer"),
        (lambda: KVCacheView.from_model(small_lm(causal=False), [1], 2), "causal"),
        (lambda: KVCacheView.from_model("model", [1], 2), "model must be an attnlib TransformerLM"),
        (lambda: KVCacheView(["a", "b"], 2, np.ones((2, 2)), np.ones((2, 2))), "n_prompt"),
        (lambda: KVCacheView(["a", "b"], 1, np.ones((3, 2)), np.ones((2, 2))), "keys must have shape"),
        (lambda: KVCacheView(["a", "b"], 1, np.ones((2, 40)), np.ones((2, 40))), "at most 32"),
        (lambda: KVCacheView(["a"] * 40, 1, np.ones((40, 2)), np.ones((40, 2))), "at most 32"),
        (lambda: KVCacheView(["a", "b"], 1, np.ones((2, 2)), np.ones((2, 2)), weights=[[1.0]]), "weights"),
    ],
)
def test_kv_cache_view_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --- AddNormView ----------------------------------------------------------------------------------------------


def test_add_norm_view_with_residual_is_the_block_itself():
    """With the residual on, the view's wiring is exactly TransformerBlock.forward (post-LN and pre-LN)."""
    from attnlib.depth import apply_block

    torch.manual_seed(0)
    x = torch.randn(5, 16)
    for norm_first in (False, True):
        block = at.TransformerBlock(16, 4, 32, norm_first=norm_first)
        torch.testing.assert_close(apply_block(block, x, norm="pre" if norm_first else "post"), block(x))


def test_add_norm_view_measures_scale_and_gradient_at_every_depth():
    torch.manual_seed(0)
    blocks = [at.TransformerBlock(16, 4, 32) for _ in range(3)]
    x = torch.randn(6, 16)
    view = AddNormView.from_blocks(blocks, x, seed=0)
    assert [(p["residual"], p["norm_first"]) for p in view.profiles] == WIRINGS and view.n_layers == 3
    plain = next(p for p in view.profiles if not p["residual"] and not p["norm_first"])
    # By hand for the plain stack: no residual, post-LN, h = norm2(ff(norm1(attention(h)))).
    h = x.clone().requires_grad_(True)
    states = [h]
    for block in blocks:
        h = block.norm2(block.feed_forward(block.norm1(block.attention(h))))
        h.retain_grad()
        states.append(h)
    probe = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    (h * probe).sum().backward()
    np.testing.assert_allclose(plain["gradient_norm"], [float(s.grad.norm()) for s in states], rtol=1e-5)
    np.testing.assert_allclose(plain["activation_scale"], [float(s.detach().pow(2).mean().sqrt()) for s in states],
                               rtol=1e-5)
    assert plain["gradient_norm"][-1] == pytest.approx(float(probe.norm()), rel=1e-5)  # d loss / d output = probe


def test_add_norm_view_recompute_and_rng_left_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    view = AddNormView.random(n_layers=4, seed=0)
    assert torch.equal(torch.rand(1), expected_next), "random() does not consume the caller's torch RNG"
    first = view.profiles
    view.n_layers = 6
    assert len(view.profiles[0]["gradient_norm"]) == 7
    view.seed = 1
    assert view.profiles != first and view.profiles == AddNormView.random(n_layers=6, seed=1).profiles
    view.n_layers = 0
    assert "n_layers" in view.error
    view.n_layers = 2
    assert view.error == ""


def test_add_norm_view_plain_data():
    profiles = {(r, n): {"activation_scale": [1.0, 2.0], "gradient_norm": [0.5, 1.0]} for r, n in WIRINGS}
    view = AddNormView(profiles, residual=False, norm_first=True)
    assert view.n_layers == 1 and view.residual is False and len(view.profiles) == 4


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: AddNormView({(True, False): {"activation_scale": [1, 2], "gradient_norm": [1, 2]}}), "missing"),
        (lambda: AddNormView([{"residual": r, "norm_first": n, "activation_scale": [1.0], "gradient_norm": [1.0]}
                              for r, n in WIRINGS]), "at least 2"),
        (lambda: AddNormView("profiles"), "profiles must be a list"),
        (lambda: AddNormView.random(n_layers=0), "n_layers"),
        (lambda: AddNormView.random(n_layers=65), "n_layers"),
        (lambda: AddNormView.from_blocks([], torch.randn(2, 4)), "blocks"),
        (lambda: AddNormView.from_blocks([at.TransformerBlock(8, 2, 16)], torch.randn(3, 4)), "last dimension 8"),
    ],
)
def test_add_norm_view_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


# --- FeedForwardMemoryView ------------------------------------------------------------------------------------


def memory(seed=0):
    """A three-slot memory in 8 dimensions: each slot's key is the sum of two word vectors, its value a third.
    The eight word vectors are orthonormal, so a slot's match is exactly 2 * 2 - 3 = 1 for its two words, -1 for
    one of them and -3 for neither."""
    vectors, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((8, 8)))  # orthonormal columns
    words = dict(zip("abcdefgh", vectors.T, strict=True))
    facts = [("a", "b", "f"), ("c", "d", "g"), ("a", "e", "h")]
    ffn = at.FeedForward(8, 3).double()
    with torch.no_grad():
        ffn.w_1.copy_(torch.tensor(np.stack([2 * (words[x] + words[y]) for x, y, _ in facts], axis=1)))  # (8, 3)
        ffn.b_1.fill_(-3.0)
        ffn.w_2.copy_(torch.tensor(np.stack([words[z] for *_, z in facts])))  # (3, 8)
        ffn.b_2.zero_()
    inputs = np.stack([words["a"] + words["b"], words["c"] + words["d"], words["a"] + words["c"]])  # (3, 8)
    return ffn, inputs, ["a + b", "c + d", "a + c"], [f"{x} + {y} → {z}" for x, y, z in facts], words


def test_ffn_view_numbers_are_attnlib_feed_forward():
    ffn, inputs, labels, slots, words = memory()
    view = FeedForwardMemoryView(ffn, inputs, input_labels=labels, slot_labels=slots, readout=words)
    x = torch.tensor(inputs)
    with torch.no_grad():
        pre = x @ ffn.w_1 + ffn.b_1  # (3, 3)
        expected = {"outputs": ffn(x), "linear_outputs": pre @ ffn.w_2 + ffn.b_2}
    np.testing.assert_allclose(view.pre_activation, pre.numpy(), atol=ROUNDING)
    np.testing.assert_allclose(view.pre_activation, [[1, -3, -1], [-3, 1, -3], [-1, -1, -1]], atol=1e-6)
    np.testing.assert_allclose(view.with_activation["gates"], torch.relu(pre).numpy(), atol=ROUNDING)
    np.testing.assert_allclose(view.without_activation["gates"], pre.numpy(), atol=ROUNDING)
    np.testing.assert_allclose(view.with_activation["outputs"], expected["outputs"].numpy(), atol=ROUNDING)
    np.testing.assert_allclose(view.without_activation["outputs"], expected["linear_outputs"].numpy(), atol=ROUNDING)
    vectors = np.stack(list(words.values()))  # (8 words, 8) unit vectors
    for mode, outputs in ((view.with_activation, expected["outputs"]), (view.without_activation,
                                                                        expected["linear_outputs"])):
        # The output is the sum of what the slots add (gate_j v_j), plus b_2.
        total = np.asarray(mode["contributions"]).sum(axis=1) + np.asarray(view.bias)
        np.testing.assert_allclose(total, mode["outputs"], atol=1e-5)
        outputs = outputs.numpy()
        norms = np.linalg.norm(outputs, axis=1, keepdims=True)
        cosine = np.where(norms > 0, outputs @ vectors.T / np.maximum(norms, 1e-300), 0)
        np.testing.assert_allclose(mode["readout"], cosine, atol=ROUNDING)
    # With the ReLU, each input that matches a slot's two words fires exactly that slot; "a + c" fires none.
    fires = np.asarray(view.with_activation["gates"]) > 0
    assert fires.tolist() == [[True, False, False], [False, True, False], [False, False, False]]
    assert np.abs(view.with_activation["outputs"][2]).max() == 0 and view.with_activation["readout"][2] == [0.0] * 8
    nearest = [list(words)[int(np.argmax(row))] for row in view.with_activation["readout"][:2]]
    assert nearest == ["f", "g"]
    assert view.readout_labels == list(words) and view.slot_labels == slots and view.activation_name == "relu"


def test_ffn_view_numpy_gelu_and_float32_torch():
    ffn_numpy = an.FeedForward(6, 4, activation="gelu", seed=0)
    inputs = np.random.default_rng(0).standard_normal((2, 6))
    view = FeedForwardMemoryView(ffn_numpy, inputs, input_labels=["p", "q"])
    np.testing.assert_allclose(view.with_activation["outputs"], ffn_numpy(inputs), atol=ROUNDING)
    pre = inputs @ ffn_numpy.w_1 + ffn_numpy.b_1
    np.testing.assert_allclose(view.with_activation["gates"], an.gelu(pre) if hasattr(an, "gelu") else
                               torch.nn.functional.gelu(torch.tensor(pre)).numpy(), atol=ROUNDING)
    assert view.activation_name == "gelu" and view.slot_labels == ["slot 0", "slot 1", "slot 2", "slot 3"]
    assert view.readout_labels == [] and view.with_activation["readout"] == []
    torch.manual_seed(0)
    ffn_torch = at.FeedForward(6, 4)  # float32
    view = FeedForwardMemoryView(ffn_torch, torch.tensor(inputs, dtype=torch.float32), input_labels=["p", "q"])
    with torch.no_grad():
        np.testing.assert_allclose(view.with_activation["outputs"], ffn_torch(torch.tensor(inputs).float()).numpy(),
                                   atol=1e-5)


def test_ffn_view_shows_what_the_reader_picked():
    ffn, inputs, labels, slots, words = memory()
    view = FeedForwardMemoryView(ffn, inputs, input_labels=labels, slot_labels=slots, readout=words, input_index=1)
    shown = view.shown()
    assert shown["gates"].tolist() == view.with_activation["gates"][1] and shown["readout"].shape == (8,)
    view.activation = False
    np.testing.assert_allclose(view.shown()["gates"], view.pre_activation[1])
    np.testing.assert_allclose(view.shown()["output"], view.without_activation["outputs"][1])
    with pytest.raises(ValueError, match=r"input_index must be in \[0, 3\)"):
        view.input_index = 3
    import json

    json.dumps(view.get_state())  # the static page draws from this state


def ffn_view(**changes):
    """The memory() view, with some constructor arguments changed."""
    ffn, inputs, labels, slots, words = memory()
    arguments = {"ffn": ffn, "inputs": inputs, "input_labels": labels, "slot_labels": slots, "readout": words}
    return FeedForwardMemoryView(**{**arguments, **changes})


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ffn_view(ffn=torch.nn.Linear(2, 2)), "ffn must be an attnlib FeedForward"),
        (lambda: ffn_view(ffn="ffn"), "ffn must be an attnlib FeedForward"),
        (lambda: FeedForwardMemoryView(an.FeedForward(4, 64, seed=0), np.ones((1, 4)), input_labels=["x"]),
         "d_ff = 64 slots; at most 32"),
        (lambda: FeedForwardMemoryView(an.FeedForward(200, 4, seed=0), np.ones((1, 200)), input_labels=["x"]),
         "d_model = 200; at most 128"),
        (lambda: ffn_view(inputs=np.ones((3, 5))),
         r"inputs must have shape \(n_inputs, d_model\) = \(n_inputs, 8\), got \(3, 5\)"),
        (lambda: ffn_view(inputs=np.ones(8), input_labels=["x"]), r"inputs must have shape.*got \(8,\)"),
        (lambda: ffn_view(inputs=np.full((3, 8), np.nan)), "inputs contains NaN"),
        (lambda: ffn_view(input_labels=["x"]),
         r"input_labels must have one label per row of inputs: 1 labels for inputs of shape \(3, 8\)"),
        (lambda: ffn_view(input_labels=["x"] * 17), "input_labels has 17 tokens; at most 16"),
        (lambda: ffn_view(slot_labels=["s"]), "slot_labels must have one label per slot: d_ff = 3, got 1"),
        (lambda: ffn_view(readout={"w": np.ones(5)}),
         r"readout vectors must have shape \(d_model,\) = \(8,\), got \[\('w', \(5,\)\)\]"),
        (lambda: ffn_view(readout={"w": np.zeros(8)}), "readout vectors must be nonzero"),
        (lambda: ffn_view(readout=(["w", "v"], [np.ones(8)])), "one vector per label, got 1 vectors for 2 labels"),
        (lambda: ffn_view(readout="words"), "readout must be a dict"),
        (lambda: ffn_view(input_index=-1), "input_index"),
    ],
)
def test_ffn_view_bad_input_names_the_argument(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()
