"""The figures in a live kernel: their state holds exactly what attnlib computes, a Python-side input change
recomputes it, and bad input is refused with a message that names the argument (or shown in the figure).

Drawing is tested in a real browser by test_site_browser.py; here only the Python half runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attnlib.numpy as an
import attnlib.torch as at
from attnlib.widgets import ALL_HEADS, AttentionExplorer
from attnlib.widgets._base import STATIC

ROUNDING = 5e-7  # figures store weights rounded to 6 decimals


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
    np.testing.assert_allclose(explorer.causal_weights, expected, atol=ROUNDING)
    model.causal = False
    model(ids[None])
    expected = np.stack([block.attention.last_weights[0] for block in model.blocks])
    np.testing.assert_allclose(explorer.weights, expected, atol=ROUNDING)
    causal = np.asarray(explorer.causal_weights)
    upper = np.triu(np.ones((5, 5), dtype=bool), k=1)
    assert (causal[..., upper] == 0).all(), "above the diagonal, causal weights are exactly 0"
    assert (np.asarray(explorer.weights)[..., upper] > 0).all()
    np.testing.assert_allclose(causal.sum(-1), 1, atol=1e-5)


def test_explorer_from_torch_model_equals_its_numpy_twin():
    torch.manual_seed(0)
    model = at.TransformerLM(vocab_size=20, d_model=16, n_heads=2, d_ff=32, n_layers=2, max_len=16)
    twin = an.TransformerLM.from_torch(model)
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
    assert state["_esm"] == (STATIC / "attention_explorer.js").read_text()
    assert state["tokens"] == ["one", "two", "three"]


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
    assert first.shape == (2, 4, 3, 3) and explorer.error == ""


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
