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
from attnlib.widgets import ALL_HEADS, AddNormView, AttentionExplorer, ExamGrader, KVCacheView, TileStepper
from attnlib.widgets._base import STATIC
from attnlib.widgets.add_norm_view import WIRINGS
from attnlib.widgets.kv_cache_view import expected_work

ROUNDING = 5e-7  # figures store weights rounded to 6 decimals
FIGURES = [AttentionExplorer, TileStepper, ExamGrader, KVCacheView, AddNormView]


@pytest.mark.parametrize("figure", FIGURES)
def test_figures_do_not_shadow_ipywidgets_traits(figure):
    """A trait named like one of ipywidgets' own (e.g. "keys", the list of synced traits) breaks the widget."""
    import anywidget

    ours = set(figure.class_trait_names()) - set(anywidget.AnyWidget.class_trait_names())
    assert ours, figure
    assert {"_model_module", "_view_name"} <= set(figure.class_trait_names(sync=True))
    for name in ours:
        assert not hasattr(anywidget.AnyWidget, name), f"{figure.__name__}.{name} shadows an ipywidgets attribute"


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
    from attnlib.widgets.add_norm_view import _block

    torch.manual_seed(0)
    x = torch.randn(5, 16)
    for norm_first in (False, True):
        block = at.TransformerBlock(16, 4, 32, norm_first=norm_first)
        torch.testing.assert_close(_block(block, x, residual=True, norm_first=norm_first), block(x))


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
