"""attnlib.torch equals PyTorch's own modules when given the same weights (float64, tight tolerances)."""

import pytest
import torch
import torch.nn.functional as F

import attnlib.torch as at

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _reference_mha(d_model=16, n_heads=4):
    return torch.nn.MultiheadAttention(d_model, n_heads, batch_first=True, dtype=torch.float64)


@pytest.mark.parametrize("case", ["none", "causal", "key_padding", "causal+key_padding"])
def test_multihead_attention_matches_torch(case):
    reference = _reference_mha()
    with torch.no_grad():  # non-zero biases so that a mix-up between them would show
        reference.in_proj_bias.normal_()
        reference.out_proj.bias.normal_()
    ours = at.MultiHeadAttention.from_torch(reference)
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[1, 4:] = True  # torch: True = ignore this key
    padding[2, 5:] = True
    causal = "causal" in case
    keep_keys = ~padding[:, None, None, :] if "key_padding" in case else None  # ours: True = may attend
    expected, expected_weights = reference(
        x, x, x,
        key_padding_mask=padding if "key_padding" in case else None,
        attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1) if causal else None,  # torch: True = blocked
        average_attn_weights=False,
    )
    output = ours(x, causal=causal, mask=keep_keys)
    torch.testing.assert_close(output, expected, **TOL)
    torch.testing.assert_close(ours.last_weights, expected_weights, **TOL)
    assert ours.last_weights.shape == (3, 4, 6, 6)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("causal", [False, True])
def test_transformer_block_matches_encoder_layer(norm_first, activation, causal):
    reference = torch.nn.TransformerEncoderLayer(
        16, 4, dim_feedforward=40, dropout=0.0, activation=activation, batch_first=True,
        norm_first=norm_first, dtype=torch.float64,
    )
    with torch.no_grad():
        for norm in (reference.norm1, reference.norm2):  # non-trivial gain and bias
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_()
    reference.eval()
    ours = at.TransformerBlock.from_torch(reference)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    mask = torch.nn.Transformer.generate_square_subsequent_mask(7, dtype=torch.float64) if causal else None
    expected = reference(x, src_mask=mask, is_causal=causal)
    torch.testing.assert_close(ours(x, causal=causal), expected, **TOL)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("n_q,n_k", [(5, 5), (3, 8), (1, 6)])
def test_attention_matches_sdpa(causal, n_q, n_k):
    q = torch.randn(2, 3, n_q, 8, dtype=torch.float64)
    k = torch.randn(2, 3, n_k, 8, dtype=torch.float64)
    v = torch.randn(2, 3, n_k, 5, dtype=torch.float64)
    output, weights = at.attention(q, k, v, causal=causal)
    if causal:
        # SDPA's is_causal aligns top-left when n_q != n_k; spell out the bottom-right mask instead.
        allowed = torch.ones(n_q, n_k, dtype=torch.bool).tril(diagonal=n_k - n_q)
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    else:
        expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(output, expected, **TOL)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, n_q, dtype=torch.float64), **TOL)


def test_attention_is_causal_matches_sdpa_for_square_inputs():
    q, k, v = (torch.randn(2, 9, 4, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(at.attention(q, k, v, causal=True)[0],
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), **TOL)


def test_attention_boolean_mask_and_scale_match_sdpa():
    q, k, v = (torch.randn(2, 6, 4, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(2, 6, 6) > 0.3
    mask[..., 0] = True  # every row keeps a key; fully masked rows are tested separately
    torch.testing.assert_close(at.attention(q, k, v, mask=mask, scale=0.7)[0],
                               F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.7), **TOL)


def test_layer_norm_matches_functional():
    reference = torch.nn.LayerNorm(12, eps=1e-6, dtype=torch.float64)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    ours = at.LayerNorm.from_torch(reference)
    x = torch.randn(4, 5, 12, dtype=torch.float64) * 3 + 2
    expected = F.layer_norm(x, (12,), reference.weight, reference.bias, eps=1e-6)
    torch.testing.assert_close(ours(x), expected, **TOL)
    assert ours.eps == 1e-6


@pytest.mark.parametrize("activation,reference", [("relu", F.relu), ("gelu", F.gelu)])
def test_activations_match_torch(activation, reference):
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(getattr(at, activation)(x), reference(x), **TOL)


def test_autograd_flows_through_every_parameter():
    model = at.TransformerLM(20, 16, 4, 32, 2, 12).double()
    ids = torch.randint(0, 20, (2, 10))
    model(ids).logsumexp(-1).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_attention_gradcheck():
    q, k, v = (torch.randn(1, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True, True, False, True]])
    assert torch.autograd.gradcheck(lambda q, k, v: at.attention(q, k, v, mask=mask, causal=True)[0], (q, k, v))
