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
from attnlib.numpy.flash_attention import FlashTrace, flash_attention
from attnlib.widgets import ALL_HEADS, AttentionExplorer, ExamGrader, TileStepper
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


# --- TileStepper ----------------------------------------------------------------------------------------------


def qkv(n_q=5, n_k=7, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n_q, d)), rng.standard_normal((n_k, d)), rng.standard_normal((n_k, d))


@pytest.mark.parametrize("causal", [False, True])
def test_tile_stepper_state_is_the_flash_trace(causal):
    q, k, v = qkv()
    stepper = TileStepper.from_qkv(q, k, v, block_q=2, block_k=3, causal=causal)
    trace = FlashTrace()
    output = flash_attention(q, k, v, block_q=2, block_k=3, causal=causal, trace=trace)
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
    trace = FlashTrace()
    flash_attention(q, k, v, block_q=3, block_k=2, trace=trace)
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
    trace = FlashTrace()
    flash_attention(q, k, v, block_q=2, block_k=2, trace=trace)
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
        assert note["l_new"] == pytest.approx(note["l_old"] * note["factor"] + note["batch_sum"])
    first, second, third = grader.batches
    assert first["m_old"] is None and first["factor"] == 0.0 and first["m_new"] == 80
    assert second["m_old"] == 80 and second["m_new"] == 90
    assert second["factor"] == pytest.approx(np.exp(80 - 90))  # the one correction factor of the story
    assert third["factor"] == 1.0  # no new best: nothing to correct
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
    assert grader.batches[1]["factor"] == pytest.approx(np.exp((80 - 90) / 10))
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
