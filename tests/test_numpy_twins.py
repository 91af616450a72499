"""attnlib.numpy computes the same numbers as attnlib.torch on the same weights."""

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1)


def _randomise(module):
    """Fresh modules have zero biases and unit gains; randomise so every parameter matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# The step-by-step trace of the tiled loop is a teaching aid of the readable reference only.
NUMPY_ONLY = {"FlashTrace", "FlashStep"}


def test_same_public_names():
    assert set(anp.__all__) - NUMPY_ONLY == set(at.__all__)
    for name in at.__all__:
        assert getattr(anp, name).__name__ == getattr(at, name).__name__ == name


def test_softmax_and_attention():
    x = _x(3, 7)
    np.testing.assert_allclose(anp.softmax(x.numpy()), at.softmax(x).numpy(), **TOL)
    q, k, v = _x(2, 4, 5), _x(2, 6, 5), _x(2, 6, 3)
    mask = torch.rand(2, 4, 6) > 0.2
    for causal in (False, True):
        out_t, w_t = at.attention(q, k, v, causal=causal, mask=mask)
        out_n, w_n = anp.attention(q.numpy(), k.numpy(), v.numpy(), causal=causal, mask=mask.numpy())
        np.testing.assert_allclose(out_n, out_t.numpy(), **TOL)
        np.testing.assert_allclose(w_n, w_t.numpy(), **TOL)
    np.testing.assert_array_equal(anp.causal_mask(3, 5), at.causal_mask(3, 5).numpy())


@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention(causal):
    torch_module = _randomise(at.MultiHeadAttention(12, 3).double())
    numpy_module = anp.MultiHeadAttention.from_torch(torch_module)
    x = _x(2, 5, 12)
    expected = torch_module(x, causal=causal).detach().numpy()
    np.testing.assert_allclose(numpy_module(x.numpy(), causal=causal), expected, **TOL)
    np.testing.assert_allclose(numpy_module.last_weights, torch_module.last_weights.numpy(), **TOL)


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_feed_forward(activation):
    torch_module = at.FeedForward(8, 20, activation=activation).double()
    numpy_module = anp.FeedForward.from_torch(torch_module)
    x = _x(3, 8)
    np.testing.assert_allclose(numpy_module(x.numpy()), torch_module(x).detach().numpy(), **TOL)


def test_layer_norm():
    torch_module = _randomise(at.LayerNorm(10, eps=1e-3).double())
    numpy_module = anp.LayerNorm.from_torch(torch_module)
    assert numpy_module.eps == 1e-3
    x = _x(4, 10) * 5
    np.testing.assert_allclose(numpy_module(x.numpy()), torch_module(x).detach().numpy(), **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_block(norm_first):
    torch_module = _randomise(at.TransformerBlock(12, 4, 24, norm_first=norm_first, activation="gelu").double())
    numpy_module = anp.TransformerBlock.from_torch(torch_module)
    x = _x(2, 6, 12)
    expected = torch_module(x, causal=True).detach().numpy()
    np.testing.assert_allclose(numpy_module(x.numpy(), causal=True), expected, **TOL)
    assert numpy_module.parameter_counts() == torch_module.parameter_counts()


def test_language_model_logits_generation_and_counts():
    torch_model = _randomise(at.TransformerLM(30, 16, 4, 32, 3, 40).double())
    numpy_model = anp.TransformerLM.from_torch(torch_model)
    ids = torch.randint(0, 30, (2, 9))
    np.testing.assert_allclose(numpy_model(ids.numpy()), torch_model(ids).detach().numpy(), **TOL)
    np.testing.assert_array_equal(numpy_model.generate(ids.numpy(), 6), torch_model.generate(ids, 6).numpy())
    assert numpy_model.parameter_counts() == torch_model.parameter_counts()
    assert numpy_model.num_parameters() == sum(p.numel() for p in torch_model.parameters())


def test_kv_cache_bytes_agree():
    torch_model = at.TransformerLM(30, 16, 4, 32, 2, 40).double()
    numpy_model = anp.TransformerLM.from_torch(torch_model)
    ids = torch.randint(0, 30, (1, 7))
    torch_cache, numpy_cache = torch_model.new_cache(), numpy_model.new_cache()
    torch_model(ids, kv_cache=torch_cache)
    numpy_model(ids.numpy(), kv_cache=numpy_cache)
    # 2 (k and v) x layers x heads x d_head x positions x 8 bytes
    assert torch_cache.nbytes == numpy_cache.nbytes == 2 * 2 * 4 * 4 * 7 * 8
    assert torch_cache.length == numpy_cache.length == 7


def test_load_state_dict_rejects_mismatches():
    model = anp.LayerNorm(4)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({"weight": np.ones(4)})
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict({"weight": np.ones(5), "bias": np.zeros(4)})
