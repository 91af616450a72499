"""Parameter counting: the explainer's "the FFN holds about two thirds of a block" claim, computed."""

from fractions import Fraction

import attnlib.numpy as anp
import attnlib.torch as at


def test_ffn_holds_two_thirds_of_a_blocks_weight_matrices():
    counts = at.TransformerBlock(512, 8, 2048).parameter_counts(include_biases=False)
    assert counts["attention"] == 4 * 512 * 512
    assert counts["feed_forward"] == 2 * 512 * 2048
    assert Fraction(counts["feed_forward"], counts["total"]) == Fraction(2, 3)
    with_biases = at.TransformerBlock(512, 8, 2048).parameter_counts()
    assert 0.66 < with_biases["feed_forward"] / with_biases["total"] < 0.67  # biases and norms barely move it


def test_language_model_breakdown_adds_up_and_layers_are_independent():
    model = at.TransformerLM(100, 32, 4, 128, 3, 64)
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["embeddings"] == 100 * 32 + 64 * 32
    assert counts["head"] == 32 * 100
    assert counts["attention"] == 3 * (4 * 32 * 32 + 4 * 32)
    assert counts["norms"] == (3 * 2 + 1) * 2 * 32
    first, second = model.blocks[0].attention.w_q, model.blocks[1].attention.w_q
    assert first.data_ptr() != second.data_ptr()  # a stack of independent layers, not one layer reused
    numpy_counts = anp.TransformerLM(100, 32, 4, 128, 3, 64, seed=0).parameter_counts()
    assert numpy_counts == counts
