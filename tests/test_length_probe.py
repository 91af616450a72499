"""The length probe of the training script (copying far past the training length, KV-cache bytes), run on the
shipped tiny-lm and on an untrained model of the tiny-lm-rope recipe."""

import pytest
import torch

from attnlib import pretrained
from attnlib.pretrained import train


@pytest.fixture(scope="module")
def tiny_lm():
    return pretrained.load("tiny-lm")


def test_the_probe_repeats_one_span_to_the_requested_length(tiny_lm):
    _, tokenizer = tiny_lm
    ids = train.long_copy_batch(tokenizer, 100, n_sequences=3, span_length=24, seed=7)
    assert ids.shape == (3, 100)
    assert torch.equal(ids[:, 24:48], ids[:, :24]) and torch.equal(ids[:, 96:], ids[:, :4])
    assert not torch.equal(ids[0, :24], ids[1, :24])


def test_a_learned_table_cannot_run_past_max_len_and_its_copying_is_measured_within(tiny_lm):
    model, tokenizer = tiny_lm
    result = train.copying_at_length(model, tokenizer, 2048)
    assert result.startswith("cannot run: 2048 positions") and "max_len=1024" in result
    accuracy = train.copying_at_length(model, tokenizer, 128)
    assert 0.6 < accuracy <= 1.0  # tiny-lm copies (its probe at this length recorded 0.8+)


def test_rope_recipe_runs_past_its_declared_length_on_a_copy(tiny_lm):
    _, tokenizer = tiny_lm
    model = train.new_model(len(tokenizer), train.RECIPES["tiny-lm-rope"]).eval()
    assert (model.positional, model.n_kv_heads, model.max_len) == ("rope", 2, 128)
    result = train.copying_at_length(model, tokenizer, 256)
    assert isinstance(result, float) and result < 0.2  # untrained: runs, but cannot copy
    assert model.max_len == 128
    with pytest.raises(ValueError, match="no position table"):
        train.logits_at_offsets(model, torch.zeros(2, 8, dtype=torch.long), torch.tensor([0, 3]))


def test_kv_cache_bytes_halve_with_half_the_key_value_heads(tiny_lm):
    model, tokenizer = tiny_lm
    rope = train.new_model(len(tokenizer), train.RECIPES["tiny-lm-rope"]).eval()
    per_token_per_head = 2 * 2 * 16 * 4  # layers x (k and v) x d_head x float32 bytes
    assert train.kv_cache_bytes(model, tokenizer) == 128 * 4 * per_token_per_head
    assert train.kv_cache_bytes(rope, tokenizer) == 128 * 2 * per_token_per_head
