"""attnlib.torch equals PyTorch's own modules when given the same weights (float64, tight tolerances)."""

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attnlib.numpy as anp
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
    keep_keys = ~padding if "key_padding" in case else None  # ours: True = a real token that may be attended
    expected, expected_weights = reference(
        x, x, x,
        key_padding_mask=padding if "key_padding" in case else None,
        attn_mask=torch.ones(6, 6, dtype=torch.bool).triu(1) if causal else None,  # torch: True = blocked
        average_attn_weights=False,
    )
    output = ours(x, causal=causal, key_mask=keep_keys)
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


@pytest.mark.parametrize("activation,reference", [
    ("relu", F.relu), ("gelu", F.gelu), ("gelu_tanh", lambda x: F.gelu(x, approximate="tanh")),
])
def test_activations_match_torch(activation, reference):
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    torch.testing.assert_close(getattr(at, activation)(x), reference(x), **TOL)
    # The NumPy twin writes each formula out (erf, tanh): it must give the same numbers as PyTorch's kernels.
    np.testing.assert_allclose(getattr(anp, activation)(x.numpy()), reference(x).numpy(), rtol=1e-12, atol=1e-14)


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


# ---------------------------------------------------------------------------------------------------------------
# Key padding, bias=False, the tanh GELU, and what from_torch refuses
# ---------------------------------------------------------------------------------------------------------------


def _encoder_layer(**options):
    settings = dict(dim_feedforward=40, dropout=0.0, batch_first=True, dtype=torch.float64) | options
    reference = torch.nn.TransformerEncoderLayer(16, 4, **settings)
    with torch.no_grad():  # every parameter non-trivial, so that a mix-up would show
        for parameter in reference.parameters():
            parameter.normal_(0, 0.3)
    return reference.eval()


def _padded_batch():
    """Three sentences of 7, 5 and 3 real tokens, padded to 7; torch's mask: True = ignore."""
    lengths = torch.tensor([7, 5, 3])
    padding = torch.arange(7)[None, :] >= lengths[:, None]  # (3, 7)
    return torch.randn(3, 7, 16, dtype=torch.float64), padding


@pytest.mark.parametrize("norm_first", [False, True])
def test_key_mask_equals_src_key_padding_mask(norm_first):
    reference = _encoder_layer(norm_first=norm_first, activation="gelu")
    ours = at.TransformerBlock.from_torch(reference)
    x, padding = _padded_batch()
    with torch.enable_grad():  # a requires-grad input keeps PyTorch off its fast path, which zeroes padded rows
        expected = reference(x.requires_grad_(), src_key_padding_mask=padding).detach()
    output = ours(x.detach(), key_mask=~padding)
    torch.testing.assert_close(output, expected, **TOL)
    # Padded keys get exactly zero weight, in every head and for every query.
    weights = ours.last_weights  # (3, 4, 7, 7)
    assert (weights.masked_select(padding[:, None, None, :].expand_as(weights)) == 0).all()
    # And the real tokens of a sentence do not depend on what the padding holds.
    noisy = x.detach().clone()
    noisy[padding] = 1e3
    real = ~padding
    torch.testing.assert_close(ours(noisy, key_mask=real)[real], output[real], **TOL)


def test_key_mask_combines_with_causal_and_mask_in_the_model():
    model = at.TransformerLM(20, 16, 4, 32, 2, 12).double()
    ids = torch.randint(0, 20, (3, 7))
    _, padding = _padded_batch()
    extra = torch.rand(3, 1, 7, 7) > 0.3
    extra[..., 0] = True
    model(ids, key_mask=~padding, mask=extra)
    for weights in model.last_weights:  # one (B, H, n, n) per layer
        assert weights.shape == (3, 4, 7, 7)
        hidden = padding[:, None, None, :] | ~extra | ~torch.ones(7, 7, dtype=torch.bool).tril()
        assert (weights.masked_select(hidden.expand_as(weights)) == 0).all()
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 7, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("bad", [torch.ones(3, 7), torch.ones(3, 7, dtype=torch.long)])
def test_key_mask_must_be_boolean_and_says_which_convention(bad):
    block = at.TransformerBlock(16, 4, 40).double()
    with pytest.raises(TypeError, match=r"key_mask must be boolean \(True = a real token.*key_padding_mask is the "
                                        r"opposite, True = ignore: pass ~key_padding_mask"):
        block(torch.randn(3, 7, 16, dtype=torch.float64), key_mask=bad)


def test_key_mask_of_the_wrong_length_is_refused():
    block = at.TransformerBlock(16, 4, 40).double()
    with pytest.raises(ValueError, match=r"key_mask must have shape \(..., n_k\) with n_k = 7 keys, got shape \(3, 6"):
        block(torch.randn(3, 7, 16, dtype=torch.float64), key_mask=torch.ones(3, 6, dtype=torch.bool))


@pytest.mark.parametrize("activation", [
    "gelu_tanh_string", torch.nn.GELU(approximate="tanh"), "relu_module", torch.nn.GELU(),
])
@pytest.mark.parametrize("bias", [True, False])
def test_tanh_gelu_and_bias_false_equal_pytorch(activation, bias):
    if isinstance(activation, str):
        named = {"gelu_tanh_string": functools.partial(F.gelu, approximate="tanh"), "relu_module": torch.nn.ReLU()}
        activation = named[activation]
    reference = _encoder_layer(activation=activation, bias=bias)
    ours = at.TransformerBlock.from_torch(reference)
    assert ours.bias is bias and ours.config()["bias"] is bias
    expected_name = "relu" if isinstance(activation, torch.nn.ReLU) else (
        "gelu" if isinstance(activation, torch.nn.GELU) and activation.approximate == "none" else "gelu_tanh")
    assert ours.activation == expected_name
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(ours(x), reference(x), **TOL)
    # The NumPy twin, built straight from the PyTorch layer, agrees too.
    twin = anp.TransformerBlock.from_torch(reference)
    np.testing.assert_allclose(twin(x.numpy()), reference(x).detach().numpy(), rtol=1e-10, atol=1e-12)


def test_numpy_from_torch_takes_every_builtin():
    torch.manual_seed(2)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    norm = torch.nn.LayerNorm(16, dtype=torch.float64)
    linear1, linear2 = torch.nn.Linear(16, 24, dtype=torch.float64), torch.nn.Linear(24, 16, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    np.testing.assert_allclose(anp.MultiHeadAttention.from_torch(mha)(x.numpy()),
                               mha(x, x, x, need_weights=False)[0].detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(anp.LayerNorm.from_torch(norm)(x.numpy()), norm(x).detach().numpy(),
                               rtol=1e-10, atol=1e-12)
    ffn = anp.FeedForward.from_torch(linear1, linear2, activation="gelu")
    np.testing.assert_allclose(ffn(x.numpy()), linear2(F.gelu(linear1(x))).detach().numpy(), rtol=1e-10, atol=1e-12)
    assert anp.LayerNorm.from_torch(torch.nn.LayerNorm(16)).dtype == np.float32  # keeps the source's dtype
    assert anp.LayerNorm.from_torch(torch.nn.LayerNorm(16), dtype=np.float64).dtype == np.float64


REFUSALS = [
    ("add_zero_attn", lambda: torch.nn.MultiheadAttention(16, 4, batch_first=True, add_zero_attn=True),
     "add_zero_attn"),
    ("add_bias_kv", lambda: torch.nn.MultiheadAttention(16, 4, batch_first=True, add_bias_kv=True), "add_bias_kv"),
    ("batch_first", lambda: torch.nn.MultiheadAttention(16, 4), "batch_first=False"),
    ("kdim", lambda: torch.nn.MultiheadAttention(16, 4, batch_first=True, kdim=8, vdim=8), "kdim=8, vdim=8"),
    ("layer batch_first", lambda: torch.nn.TransformerEncoderLayer(16, 4, 32), "batch_first=False"),
    ("layer activation", lambda: torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation=torch.tanh),
     "activation .*tanh.* is not one attnlib has"),
    ("layer silu", lambda: torch.nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation=torch.nn.SiLU()),
     "activation SiLU"),
    ("norm shape", lambda: torch.nn.LayerNorm((4, 16)), r"normalized_shape=\(4, 16\)"),
    ("norm affine", lambda: torch.nn.LayerNorm(16, elementwise_affine=False), "elementwise_affine=False"),
]


@pytest.mark.parametrize("name,make,words", REFUSALS, ids=[r[0] for r in REFUSALS])
@pytest.mark.parametrize("namespace", [at, anp], ids=["torch", "numpy"])
def test_from_torch_refuses_by_name_what_attnlib_cannot_express(name, make, words, namespace):
    module = make()
    target = {torch.nn.MultiheadAttention: "MultiHeadAttention", torch.nn.TransformerEncoderLayer: "TransformerBlock",
              torch.nn.LayerNorm: "LayerNorm"}[type(module)]
    with pytest.raises(ValueError, match=words):
        getattr(namespace, target).from_torch(module)


def test_feed_forward_from_torch_needs_the_activation_named():
    linear1, linear2 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 8)
    with pytest.raises(TypeError, match="activation"):
        at.FeedForward.from_torch(linear1, linear2)
    with pytest.raises(ValueError, match="do not make d_model -> d_ff -> d_model"):
        at.FeedForward.from_torch(linear1, torch.nn.Linear(16, 4), activation="relu")
