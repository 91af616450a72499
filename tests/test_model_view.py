"""The model view in a live kernel: its state holds the real model's attention weights and weight x ||value||
(Kobayashi et al. 2020) for every layer and head, and bad input is refused with a message naming the argument.

Drawing is tested in a real browser by test_site_browser.py (on the gallery page); here only the Python half runs,
plus a syntax check of the assembled JavaScript module.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import attnlib.numpy as an
import attnlib.torch as at
from attnlib.widgets import ModelView
from attnlib.widgets import model_view as mv
from attnlib.widgets._base import STATIC, esm

# The model view stores its maps rounded to 4 decimals; 1e-6 more allows for float32 rounding between its batched
# pass and the single-sentence pass of a test, which can tip a value at a rounding boundary.
ROUNDING = 5e-5 + 1e-6
SENTENCES = ["The animal didn't cross the street because it was too tired.", "A man is eating food.", "Hi."]


@pytest.fixture(scope="module")
def minilm():
    from attnlib.pretrained import load

    try:
        return load("all-MiniLM-L6-v2")
    except ModuleNotFoundError as error:  # the weights package is pinned in requirements.txt
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def minilm_view(minilm):
    model, tokenizer = minilm
    return ModelView.from_model(model, tokenizer, SENTENCES, title="MiniLM")


def independent_norm_shares(block, x, weights):
    """weight_ij * ||(x_j W_v^h + b_v^h) W_o^h|| per head, each row divided by its sum: the head slices taken one by
    one with an explicit loop and an einsum, in float64."""
    attention = block.attention
    d_head = attention.d_head
    w_v, b_v = attention.w_v.detach().double(), attention.b_v.detach().double()
    w_o = attention.w_o.detach().double()
    x = x.detach().double()[0]  # (n, d_model)
    norms = []
    for h in range(attention.n_heads):
        columns = slice(h * d_head, (h + 1) * d_head)
        value = x @ w_v[:, columns] + b_v[columns]  # (n, d_head): this head's values
        moved = torch.einsum("jd,dm->jm", value, w_o[columns, :])  # (n, d_model): what key j adds, per unit weight
        norms.append(torch.linalg.vector_norm(moved, dim=-1))
    product = torch.as_tensor(weights, dtype=torch.float64) * torch.stack(norms)[:, None, :]  # (H, n, n)
    return (product / product.sum(dim=-1, keepdim=True)).numpy()


# --- the real model -------------------------------------------------------------------------------------------


def test_minilm_view_holds_the_models_own_weights(minilm, minilm_view):
    model, tokenizer = minilm
    view = minilm_view
    assert view.shape == (6, 12) and view.sentences == SENTENCES and view.title == "MiniLM"
    assert view.tokens == tokenizer.tokens(SENTENCES[:1]) + tokenizer.tokens(SENTENCES[1:2]) + \
        tokenizer.tokens(SENTENCES[2:])
    for s, sentence in enumerate(SENTENCES):
        ids, key_mask = tokenizer([sentence])
        assert key_mask.all(), "one sentence at a time: every token is real"
        with torch.no_grad():
            model(ids, key_mask=key_mask)
        expected = np.stack([w[0].numpy() for w in model.last_weights])  # (6, 12, n, n)
        stored = np.asarray(view.weights[s])
        assert stored.shape == expected.shape == (6, 12, len(view.tokens[s]), len(view.tokens[s]))
        np.testing.assert_allclose(stored, expected, rtol=0, atol=ROUNDING)
        assert np.array_equal(stored, np.round(stored, 4)), "stored rounded to 4 decimals"


def test_minilm_norm_weights_equal_an_independent_computation(minilm, minilm_view):
    model, tokenizer = minilm
    for s, sentence in enumerate(SENTENCES):
        ids, _ = tokenizer([sentence])
        n = ids.shape[-1]
        with torch.no_grad():
            x = model.embedding_norm(model.token_embedding[ids] + model.position_embedding[:n]
                                     + model.token_type_embedding[0])
            for layer, block in enumerate(model.blocks):
                y = block(x)
                expected = independent_norm_shares(block, x, block.last_weights[0].numpy())
                stored = np.asarray(minilm_view.norm_weights[s][layer])
                np.testing.assert_allclose(stored, expected, rtol=0, atol=ROUNDING + 1e-6)
                x = y
        rows = np.asarray(minilm_view.norm_weights[s]).sum(axis=-1)
        np.testing.assert_allclose(rows, 1.0, atol=n * 5e-5), "each row of shares sums to 1"


def test_minilm_norm_weights_differ_from_the_weights(minilm_view):
    """Kobayashi et al.'s point: weight and weight x ||value|| disagree. MiniLM's heads put most of their weight
    on [CLS] (about half of it in layers 1-4), whose transformed value is small: its share of what moves is less."""
    weights, shares = np.asarray(minilm_view.weights[0]), np.asarray(minilm_view.norm_weights[0])
    assert minilm_view.tokens[0][0] == "[CLS]"
    assert np.abs(weights - shares).max() > 0.1
    assert weights[..., 0].mean() > 0.3 and shares[..., 0].mean() < weights[..., 0].mean() / 2


def test_minilm_view_state_is_plain_json_and_small(minilm_view):
    state = minilm_view.get_state()
    text = json.dumps({name: state[name] for name in ("sentences", "tokens", "weights", "norm_weights", "sentence",
                                                        "mode", "layer", "head", "title")})
    assert len(text) < 1_500_000, f"{len(text)} characters for {len(SENTENCES)} sentences"
    assert state["_esm"] == esm("model_view.js")
    assert (minilm_view.layer, minilm_view.head, minilm_view.mode, minilm_view.sentence) == (-1, -1, "weights", 0)


def test_minilm_view_selection_and_shown_maps(minilm_view):
    view = ModelView(minilm_view.tokens, minilm_view.weights, minilm_view.norm_weights,
                     sentences=minilm_view.sentences, layer=2, head=5, sentence=1, mode="norm")
    assert view.opened_map().shape == (len(view.tokens[1]),) * 2
    # given back, the stored shares are divided by their (rounded) row sums again: equal up to the rounding
    np.testing.assert_allclose(view.opened_map(), np.asarray(minilm_view.norm_weights[1][2][5]), rtol=0, atol=2e-4)
    view.mode = "weights"
    np.testing.assert_array_equal(view.shown_maps(), np.asarray(minilm_view.weights[1]))
    view.layer = view.head = -1
    assert view.opened_map() is None


# --- both twins, any block wiring -----------------------------------------------------------------------------


class WordTokens:
    """A tokenizer with the SentenceTokenizer's contract for a tiny vocabulary: [CLS] words [SEP]."""

    def __init__(self, words):
        self.words = ["[CLS]", "[SEP]", *words]

    def tokens(self, sentences):
        return [["[CLS]", *sentence.split(), "[SEP]"] for sentence in sentences]

    def __call__(self, sentences):
        (pieces,) = self.tokens(sentences)
        ids = torch.tensor([[self.words.index(piece) for piece in pieces]])
        return ids, torch.ones_like(ids, dtype=torch.bool)


@pytest.mark.parametrize("norm_first", [False, True])
def test_numpy_twin_gives_the_same_view(norm_first):
    torch.manual_seed(0)
    model = at.TransformerEncoder(vocab_size=10, d_model=16, n_heads=4, d_ff=32, n_layers=3, max_len=16,
                                  norm_first=norm_first, dtype=torch.float64).eval()
    twin = an.TransformerEncoder.from_twin(model)
    tokenizer = WordTokens(["a", "b", "c", "d", "e", "f"])
    sentences = ["a b c", "f e d c b a"]
    ours = ModelView.from_model(model, tokenizer, sentences)
    theirs = ModelView.from_model(twin, tokenizer, sentences)
    assert ours.shape == (3, 4) and ours.tokens == theirs.tokens
    for name in ("weights", "norm_weights"):
        for s in range(2):
            np.testing.assert_allclose(np.asarray(getattr(ours, name)[s]), np.asarray(getattr(theirs, name)[s]),
                                       rtol=0, atol=1.01e-4)  # the same numbers, each rounded to 4 decimals
    ids, _ = tokenizer(["f e d c b a"])
    model(ids)
    np.testing.assert_allclose(np.asarray(ours.weights[1]), np.stack([w[0].numpy() for w in model.last_weights]),
                               rtol=0, atol=ROUNDING)


def test_value_norms_give_each_heads_share_of_the_output():
    """Σ_j α_ij f_h(x_j), summed over heads, plus b_o, is the attention layer's output: f is what each key adds."""
    torch.manual_seed(1)
    attention = at.MultiHeadAttention(12, 3, dtype=torch.float64)
    x = torch.randn(5, 12, dtype=torch.float64)
    with torch.no_grad():
        output = attention(x)
    alpha = attention.last_weights.numpy()  # (3, 5, 5)
    with torch.no_grad():
        norms = attention.value_norms(x).numpy()  # (3, 5)
    assert norms.shape == (3, 5)
    d_head = attention.d_head
    total = attention.b_o.detach().numpy().copy()[None].repeat(5, 0)
    for h in range(3):
        rows = slice(h * d_head, (h + 1) * d_head)
        moved = (x.numpy() @ attention.w_v.detach().numpy()[:, rows] + attention.b_v.detach().numpy()[rows]) \
            @ attention.w_o.detach().numpy()[rows]
        np.testing.assert_allclose(np.linalg.norm(moved, axis=-1), norms[h], rtol=1e-12)
        total = total + alpha[h] @ moved
    np.testing.assert_allclose(total, output.numpy(), rtol=0, atol=1e-12)
    shares = mv.norm_weighted(alpha, norms)
    np.testing.assert_allclose(shares.sum(axis=-1), 1.0, atol=1e-12)


# --- plain data -----------------------------------------------------------------------------------------------


def random_maps(rng, layers, heads, n):
    scores = rng.standard_normal((layers, heads, n, n))
    weights = np.exp(scores) / np.exp(scores).sum(-1, keepdims=True)
    return weights, weights * rng.uniform(0.5, 3.0, (layers, heads, 1, n))


def test_plain_data_rounds_and_normalises_each_row():
    rng = np.random.default_rng(0)
    first, second = random_maps(rng, 2, 3, 4), random_maps(rng, 2, 3, 6)
    view = ModelView.from_weights([list("abcd"), list("uvwxyz")], [first[0], second[0]], [first[1], second[1]])
    assert view.sentences == ["a b c d", "u v w x y z"] and view.shape == (2, 3)
    np.testing.assert_allclose(np.asarray(view.weights[1]), second[0], atol=ROUNDING)
    expected = second[1] / second[1].sum(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(view.norm_weights[1]), expected, atol=ROUNDING)
    torch_view = ModelView([list("abcd")], [torch.tensor(first[0])], [torch.tensor(first[1])], title="t")
    assert torch_view.weights[0] == view.weights[0]


def test_a_head_can_be_opened_from_python_and_the_choice_is_checked():
    rng = np.random.default_rng(1)
    weights, norms = random_maps(rng, 2, 3, 4)
    view = ModelView([list("abcd")], [weights], [norms], layer=1, head=2)
    assert (view.layer, view.head) == (1, 2)
    np.testing.assert_allclose(view.opened_map(), weights[1, 2], atol=ROUNDING)
    for name, value, match in [("layer", 2, r"layer must be in \[0, 2\)"), ("head", 3, r"head must be in \[0, 3\)"),
                               ("sentence", 1, r"sentence must be in \[0, 1\)"), ("mode", "values", "mode must be one"),
                               ("layer", True, "layer must be an integer")]:
        with pytest.raises((ValueError, TypeError), match=match):
            setattr(view, name, value)
    assert (view.layer, view.head, view.sentence, view.mode) == (1, 2, 0, "weights")


W, N = random_maps(np.random.default_rng(2), 2, 2, 3)
W2, N2 = random_maps(np.random.default_rng(3), 2, 2, 2)
NAN = W.copy()
NAN[0, 0, 0, 0] = np.nan


@pytest.mark.parametrize("make, match", [
    (lambda: ModelView([], [], []), r"tokens must hold 1 to 8 token lists"),
    (lambda: ModelView([list("abc")] * 9, [W] * 9, [N] * 9), r"tokens must hold 1 to 8 token lists, got 9"),
    (lambda: ModelView("abc", [W], [N]), r"tokens must be a list with one entry per sentence"),
    (lambda: ModelView([list("abc")], [W, W], [N]), r"weights must hold one \(layers, heads, n, n\) array per sent"),
    (lambda: ModelView([list("abc")], [W], N), r"norm_weights must hold one \(layers, .* per sentence: 2 for 1"),
    (lambda: ModelView([list("abcd")], [W], [N]), r"weights\[0\] must have shape \(layers, heads, n, n\) with n = 4"),
    (lambda: ModelView([list("abc")], [W[0]], [N]), r"weights\[0\] must have shape \(layers, heads, n, n\)"),
    (lambda: ModelView([list("abc")], [NAN], [N]), r"weights\[0\]"),
    (lambda: ModelView([list("abc")], [W], [-N]), r"norm_weights\[0\] must be non-negative"),
    (lambda: ModelView([list("abc")], [W * 2], [N]), r"weights\[0\] must be attention weights"),
    (lambda: ModelView([list("abc")], [W], [N[:1]]), r"norm_weights\[0\] has 1 layers x 2 heads, but"),
    (lambda: ModelView([list("abc"), list("ab")], [W, W2], [N, N2[:1]]),
     r"norm_weights\[1\] has 1 layers x 2 heads"),
    (lambda: ModelView([["x"] * 41], [np.full((1, 1, 41, 41), 1 / 41)], [np.ones((1, 1, 41, 41))]),
     r"tokens\[0\] has 41 tokens; at most 40"),
    (lambda: ModelView([["x"]], [np.ones((25, 1, 1, 1))], [np.ones((25, 1, 1, 1))]), r"weights\[0\] has 25 layers"),
    (lambda: ModelView([["x"]], [np.ones((1, 17, 1, 1))], [np.ones((1, 17, 1, 1))]), r"weights\[0\] has 1 layers x 17"),
    (lambda: ModelView([list("abc")], [W], [N], sentences=["one", "two"]), r"sentences must name each of the 1"),
    (lambda: ModelView([list("abc")], [W], [N], sentences=[3]), r"sentences\[0\]: sentence must be a str"),
    (lambda: ModelView([list("abc")], [W], [N], layer=1), r"give both layer and head"),
    (lambda: ModelView([list("abc")], [W], [N], layer=0, head=2), r"head must be in \[0, 2\)"),
    (lambda: ModelView([list("abc")], [W], [N], mode="raw"), r"mode must be one of"),
    (lambda: ModelView([list("abc")], [W], [N], sentence=1), r"sentence must be in \[0, 1\)"),
    (lambda: ModelView([list("abc")], [W], [N], title=3), r"title must be a str"),
    (lambda: ModelView([list("abc")], [W], [N], heads=2), r"unexpected keyword argument\(s\) \['heads'\]"),
])
def test_bad_data_is_refused_by_name(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_bad_model_input_is_refused_by_name(minilm):
    model, tokenizer = minilm
    long = " ".join(["word"] * 45)
    for make, match in [
        (lambda: ModelView.from_model(model, tokenizer, "A man is eating food."), r"sentences must be a list"),
        (lambda: ModelView.from_model(model, tokenizer, []), r"sentences must hold 1 to 8 sentences, got 0"),
        (lambda: ModelView.from_model(model, tokenizer, ["a"] * 9), r"sentences must hold 1 to 8 sentences, got 9"),
        (lambda: ModelView.from_model(model, tokenizer, ["ok", 5]), r"sentences\[1\]: sentence must be a str"),
        (lambda: ModelView.from_model(model, tokenizer, ["ok", "  "]), r"sentences\[1\]: sentence must contain"),
        (lambda: ModelView.from_model(model, tokenizer, ["ok", long]), r"sentences\[1\] has 47 tokens .* at most 40"),
        (lambda: ModelView.from_model(model, None, ["ok"]), r"tokenizer must be callable and have tokens\(\)"),
        (lambda: ModelView.from_model(at.TransformerLM(vocab_size=5, d_model=8, n_heads=2, d_ff=8, n_layers=1,
                                                       max_len=8), tokenizer, ["ok"]),
         r"model must be an attnlib TransformerEncoder"),
        (lambda: ModelView.from_model(model, tokenizer, ["ok"], layer=6, head=0), r"layer must be in \[0, 6\)"),
    ]:
        with pytest.raises((ValueError, TypeError), match=match):
            make()


def test_too_large_a_model_is_refused_before_it_runs():
    model = an.TransformerEncoder(vocab_size=8, d_model=34, n_heads=17, d_ff=8, n_layers=1, max_len=8)
    with pytest.raises(ValueError, match=r"model has 1 layers x 17 heads; the grid shows at most 24 layers and 16"):
        ModelView.from_model(model, WordTokens(["a"]), ["a"])


# --- the JavaScript -------------------------------------------------------------------------------------------


def test_module_is_its_own_file_with_the_shared_helpers_inlined():
    import anywidget

    assert ModelView._esm == esm("model_view.js")
    source = (STATIC / "model_view.js").read_text()
    assert not re.search(r"^(function|const) (svg|html|share|viridis|button|toggle|table|stepper|mount)\b", source,
                         re.M), "helpers come from _shared.js"
    module = esm("model_view.js")
    assert not re.search(r"^import ", module, re.M) and re.search(r"^function render\(", module, re.M)
    ours = set(ModelView.class_trait_names()) - set(anywidget.AnyWidget.class_trait_names())
    for name in ours:
        assert not hasattr(anywidget.AnyWidget, name), f"ModelView.{name} shadows an ipywidgets attribute"
    assert ".attnlib-mv-grid" in (STATIC / "widgets.css").read_text()


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed (the browser tests still run it)")
def test_assembled_module_is_valid_javascript(tmp_path):
    path = tmp_path / "module.mjs"
    path.write_text(esm("model_view.js"))
    result = subprocess.run(["node", "--check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr



def test_value_norms_are_the_same_in_both_twins_on_the_real_model(minilm):
    """MultiHeadAttention.value_norms (the figure's "weight x ||value||", chapter 12's measurements) in both twins."""
    from attnlib.pretrained import heads

    model, tokenizer = minilm
    ids, key_mask = tokenizer(SENTENCES[:2])
    for block, x in zip(model.blocks, heads.block_inputs(model, ids, key_mask), strict=True):
        twin = an.MultiHeadAttention.from_twin(block.attention, dtype=np.float64)
        with torch.no_grad():
            ours = block.attention.value_norms(x).double().numpy()
        np.testing.assert_allclose(twin.value_norms(x.double().numpy()), ours, rtol=1e-5)
