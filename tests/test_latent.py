"""Multi-head latent attention: the paper's equations, absorbed = materialised, cached = uncached, twins, the cache's
size, gradients, parameter counts, and refusals."""

import math

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib import _settings, sizes

NumpyLatent, TorchLatent = anp.MultiHeadLatentAttention, at.MultiHeadLatentAttention
NumpyLatentCache, TorchLatentCache = anp.LatentCache, at.LatentCache


def _rope_by_complex_numbers(x, positions, base=10000.0):
    """RoPE in the rotate-half layout, written independently of attnlib: feature i and feature i + d/2 are the real
    and imaginary parts of one complex number, turned by the angle position * base^(-2i/d)."""
    half = x.shape[-1] // 2
    frequencies = base ** (-np.arange(half) * 2.0 / x.shape[-1])  # (d/2,)
    turn = np.exp(1j * np.asarray(positions)[:, None] * frequencies)  # (n, d/2)
    z = (x[..., :half] + 1j * x[..., half:]) * turn  # (..., n, d/2)
    return np.concatenate([z.real, z.imag], axis=-1)


SHAPE = {"d_model": 16, "n_heads": 4, "d_latent": 12, "d_rope": 6}  # d_head = 16 / 4 = 4
WIDE = {"d_model": 16, "n_heads": 3, "d_latent": 10, "d_rope": 4, "d_head": 7}  # d_head not d_model / n_heads
ROUNDING = dict(rtol=1e-11, atol=1e-12)


def _x(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def _by_the_papers_equations(module, x):
    """DeepSeek-V2's equations, one head, one query and one key at a time, from the module's weight matrices."""
    H, d_head, d_rope = module.n_heads, module.d_head, module.d_rope
    n = x.shape[-2]
    positions = np.arange(n)
    c_kv = x @ module.w_dkv  # (..., n, d_latent)
    k_rope = _rope_by_complex_numbers(x @ module.w_kr, positions, module.rope_base)  # (..., n, d_rope)
    output = np.zeros(x.shape[:-1] + (H * d_head,))
    for h in range(H):
        columns, rope_columns = slice(h * d_head, (h + 1) * d_head), slice(h * d_rope, (h + 1) * d_rope)
        q_content = x @ module.w_q[:, columns]  # (..., n, d_head)
        q_rope = _rope_by_complex_numbers(x @ module.w_qr[:, rope_columns], positions, module.rope_base)
        k_content, v = c_kv @ module.w_uk[:, columns], c_kv @ module.w_uv[:, columns]
        for t in range(n):
            scores = np.stack([
                (q_content[..., t, :] * k_content[..., j, :]).sum(-1) + (q_rope[..., t, :] * k_rope[..., j, :]).sum(-1)
                for j in range(t + 1)], axis=-1) / math.sqrt(d_head + d_rope)  # (..., t + 1): keys 0..t only
            weights = np.exp(scores - scores.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            output[..., t, columns] = (weights[..., :, None] * v[..., : t + 1, :]).sum(-2)
    return output @ module.w_o


@pytest.mark.parametrize("shape", [SHAPE, WIDE], ids=["d_head=d_model/n_heads", "d_head=7"])
@pytest.mark.parametrize("absorbed", [False, True])
def test_both_paths_compute_the_papers_equations(shape, absorbed):
    module = NumpyLatent(**shape, seed=1)
    x = _x(2, 6, 16)
    np.testing.assert_allclose(module(x, absorbed=absorbed), _by_the_papers_equations(module, x), **ROUNDING)
    assert module.last_weights.shape == (2, shape["n_heads"], 6, 6)
    np.testing.assert_array_equal(np.triu(module.last_weights, 1), 0)  # causal: nothing from the future


def test_the_folded_weights_compute_the_absorbed_path():
    # Attention straight against the latents, with W_q W_ukᵀ and W_uv W_o multiplied out beforehand.
    module = NumpyLatent(**WIDE, seed=11)
    x = _x(2, 5, 16, seed=12)
    w_q_latent, w_o_latent = module.absorbed_weights()
    assert w_q_latent.shape == (3, 16, 10) and w_o_latent.shape == (3, 10, 16)
    positions = np.arange(5)
    c_kv = x @ module.w_dkv  # (2, 5, 10)
    k_rope = _rope_by_complex_numbers(x @ module.w_kr, positions)  # (2, 5, 4)
    q_rope = _rope_by_complex_numbers((x @ module.w_qr).reshape(2, 5, 3, 4).transpose(0, 2, 1, 3), positions)
    scores = ((x[:, None] @ w_q_latent) @ c_kv[:, None].transpose(0, 1, 3, 2)
              + q_rope @ k_rope[:, None].transpose(0, 1, 3, 2)) / math.sqrt(7 + 4)  # (2, 3, 5, 5)
    scores = np.where(np.tril(np.ones((5, 5), bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = ((weights @ c_kv[:, None]) @ w_o_latent).sum(axis=1)  # (2, 5, 16): every head's share, added
    np.testing.assert_allclose(module(x, absorbed=True), expected, **ROUNDING)
    np.testing.assert_allclose(module.last_weights, weights, **ROUNDING)
    for ours, theirs in zip(module.absorbed_weights(), TorchLatent.from_twin(module).absorbed_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), **ROUNDING)


def test_absorbed_equals_materialised_in_prefill_and_in_step_by_step_decoding():
    for namespace in ("numpy", "torch"):
        numpy_module = NumpyLatent(**WIDE, seed=2)
        module = numpy_module if namespace == "numpy" else TorchLatent.from_twin(numpy_module)
        x = _x(2, 7, 16, seed=3)
        x = x if namespace == "numpy" else torch.from_numpy(x)
        as_numpy = np.asarray if namespace == "numpy" else (lambda t: t.detach().numpy())
        materialised = as_numpy(module(x))
        weights = as_numpy(module.last_weights)
        absorbed = as_numpy(module(x, absorbed=True))
        np.testing.assert_allclose(absorbed, materialised, **ROUNDING)
        np.testing.assert_allclose(as_numpy(module.last_weights), weights, **ROUNDING)
        assert np.abs(materialised).max() > 0.1  # not a trivially tiny output
        caches = {path: module.new_cache() for path in (False, True)}
        for t in range(7):  # one token at a time, each path with its own latent cache
            steps = {path: as_numpy(module(x[:, t:t + 1], kv_cache=caches[path], absorbed=path)) for path in caches}
            np.testing.assert_allclose(steps[True], steps[False], **ROUNDING)
            np.testing.assert_allclose(steps[False], materialised[:, t:t + 1], **ROUNDING)
        for name in ("c_kv", "k_rope"):  # the two paths cache the very same numbers
            np.testing.assert_array_equal(as_numpy(getattr(caches[True], name)), as_numpy(getattr(caches[False], name)))


@pytest.mark.parametrize("absorbed", [False, True])
def test_cached_equals_uncached_in_any_chunks(absorbed):
    module = NumpyLatent(**SHAPE, seed=4)
    x = _x(3, 9, 16, seed=5)
    full = module(x, absorbed=absorbed)
    cache = module.new_cache()
    pieces = [module(x[:, start:stop], kv_cache=cache, absorbed=absorbed)
              for start, stop in ((0, 4), (4, 5), (5, 7), (7, 8), (8, 9))]
    np.testing.assert_allclose(np.concatenate(pieces, axis=-2), full, **ROUNDING)
    assert cache.length == 9
    # The cache holds the latents as projected and the RoPE keys rotated to their own positions 0..8.
    np.testing.assert_allclose(cache.c_kv, x @ module.w_dkv, **ROUNDING)
    np.testing.assert_allclose(cache.k_rope, _rope_by_complex_numbers(x @ module.w_kr, np.arange(9)), **ROUNDING)
    # Positions matter: the same last token without its cached past is computed as position 0 and differs.
    assert not np.allclose(module(x[:, 8:9], absorbed=absorbed), full[:, 8:9])


@pytest.mark.parametrize("absorbed", [False, True])
def test_any_batch_dimensions_compute_each_sequence_alone(absorbed):
    module = NumpyLatent(**SHAPE, seed=13)
    x = _x(2, 3, 5, 16, seed=14)  # (2, 3, n, d_model): two batch dimensions
    together = module(x, absorbed=absorbed)
    assert together.shape == (2, 3, 5, 16) and module.last_weights.shape == (2, 3, 4, 5, 5)
    for i in range(2):
        for j in range(3):
            alone = module(x[i, j], absorbed=absorbed)  # (n, d_model): no batch dimension at all
            np.testing.assert_allclose(together[i, j], alone, **ROUNDING)
    torch_module = TorchLatent.from_twin(module)
    np.testing.assert_allclose(torch_module(torch.from_numpy(x), absorbed=absorbed).detach().numpy(), together,
                               **ROUNDING)


def test_twins_compute_the_same_numbers_and_convert_both_ways():
    numpy_module = NumpyLatent(**WIDE, seed=6, rope_base=500.0)
    torch_module = TorchLatent.from_twin(numpy_module)
    assert torch_module.config() == numpy_module.config() == {**WIDE, "rope_base": 500.0}
    assert torch_module.dtype == torch.float64
    x = _x(2, 5, 16, seed=7)
    for absorbed in (False, True):
        numpy_cache, torch_cache = numpy_module.new_cache(), torch_module.new_cache()
        for start, stop in ((0, 3), (3, 5)):
            ours = numpy_module(x[:, start:stop], kv_cache=numpy_cache, absorbed=absorbed)
            theirs = torch_module(torch.from_numpy(x[:, start:stop]), kv_cache=torch_cache, absorbed=absorbed)
            np.testing.assert_allclose(ours, theirs.detach().numpy(), **ROUNDING)
            np.testing.assert_allclose(numpy_module.last_weights, torch_module.last_weights.numpy(), **ROUNDING)
        assert numpy_cache.nbytes == torch_cache.nbytes
        np.testing.assert_allclose(numpy_cache.k_rope, torch_cache.k_rope.detach().numpy(), **ROUNDING)
    back = NumpyLatent.from_twin(torch_module)
    for name, value in numpy_module.state_dict().items():
        np.testing.assert_array_equal(back.state_dict()[name], value)
    with pytest.raises(TypeError, match="from_twin expects an attnlib.torch.MultiHeadLatentAttention"):
        NumpyLatent.from_twin(numpy_module)
    # torch -> numpy from a float32 torch module keeps float32
    torch.manual_seed(0)
    single = TorchLatent(**SHAPE)
    assert NumpyLatent.from_twin(single).dtype == np.float32


def test_the_cache_holds_d_latent_plus_d_rope_numbers_per_token():
    for namespace, module in (("numpy", NumpyLatent(**WIDE, seed=8)), ("torch", TorchLatent(**WIDE).double())):
        cache = module.new_cache()
        x = _x(2, 5, 16, seed=9)
        module(x if namespace == "numpy" else torch.from_numpy(x), kv_cache=cache)
        assert tuple(cache.c_kv.shape) == (2, 5, 10) and tuple(cache.k_rope.shape) == (2, 5, 4)
        assert cache.nbytes == 2 * 5 * (10 + 4) * 8  # batch x tokens x (d_latent + d_rope) x 8 bytes
        layout = sizes.AttentionLayout("this layer", n_layers=1, n_heads=3, d_head=7, d_latent=10, d_rope=4)
        assert cache.nbytes == sizes.layout_kv_cache_bytes(layout, 5, bytes_per_number=8, batch=2)
        # The keys and values the materialised path rebuilds would take 2 x 3 heads x 7 = 42 numbers per token.
        assert sizes.AttentionLayout("as MHA", n_layers=1, n_heads=3, d_head=7).numbers_per_token_per_layer == 42
    assert NumpyLatentCache().nbytes == 0 and NumpyLatentCache().length == 0


def test_gradients_flow_and_both_paths_have_the_same_gradients():
    torch.manual_seed(0)
    module = TorchLatent(d_model=6, n_heads=2, d_latent=4, d_rope=2, dtype=torch.float64)
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    for absorbed in (False, True):
        assert torch.autograd.gradcheck(lambda inputs, path=absorbed: module(inputs, absorbed=path), (x,))
    gradients = {}
    for absorbed in (False, True):
        module.zero_grad()
        x.grad = None
        (module(x, absorbed=absorbed) ** 2).sum().backward()
        gradients[absorbed] = {name: p.grad.clone() for name, p in module.named_parameters()}
        gradients[absorbed]["x"] = x.grad.clone()
        assert all(g.abs().max() > 0 for g in gradients[absorbed].values())  # every weight matrix learns
    for name, gradient in gradients[False].items():
        torch.testing.assert_close(gradients[True][name], gradient, rtol=1e-10, atol=1e-12)


def test_parameter_counts_equal_the_formula_and_the_actual_parameters():
    for shape in (SHAPE, WIDE):
        torch.manual_seed(0)
        for module in (NumpyLatent(**shape), TorchLatent(**shape)):
            counts = module.parameter_counts()
            assert counts == sizes.latent_attention_parameters(**shape)
            actual = module.num_parameters() if isinstance(module, NumpyLatent) else \
                sum(p.numel() for p in module.parameters())
            assert counts["total"] == actual
    # By hand for WIDE: 3 heads of 7, d_latent 10, d_rope 4, d_model 16.
    assert NumpyLatent(**WIDE).parameter_counts() == {
        "queries": 16 * 21 + 16 * 3 * 4,                # W_q, W_qr
        "keys_values": 16 * 10 + 2 * 10 * 21 + 16 * 4,  # W_dkv, W_uk and W_uv, W_kr
        "output": 21 * 16,                               # W_o
        "total": 16 * 21 + 16 * 12 + 16 * 10 + 420 + 64 + 336,
    }


def test_a_call_that_fails_leaves_the_cache_as_it_was():
    module = NumpyLatent(**SHAPE, seed=10)
    cache = module.new_cache()
    x = _x(1, 4, 16)
    module(x, kv_cache=cache)
    c_kv, k_rope = cache.c_kv, cache.k_rope
    with pytest.raises(ValueError, match="c_kv of shape"):
        module(_x(2, 1, 16), kv_cache=cache)  # another batch size: refused before anything is appended
    assert cache.c_kv is c_kv and cache.k_rope is k_rope
    module.w_qr, module.w_kr = module.w_qr * 1e160, module.w_kr * 1e160  # RoPE scores of ~1e320 overflow float64
    with _settings.finite_checks_set_to(True), pytest.raises(OverflowError):
        module(_x(1, 2, 16, seed=1), kv_cache=cache)
    assert cache.c_kv is c_kv and cache.k_rope is k_rope and cache.length == 4  # appended, then put back


def _numpy_module():
    return NumpyLatent(**SHAPE, seed=0)


def _torch_module():
    torch.manual_seed(0)
    return TorchLatent(**SHAPE, dtype=torch.float64)


@pytest.mark.parametrize(
    "call, error, name",
    [
        (lambda: NumpyLatent(16, 4, 12, 5), ValueError, "d_rope must be even"),
        (lambda: NumpyLatent(18, 4, 12, 6), ValueError, "d_model must be divisible by n_heads"),
        (lambda: NumpyLatent(16, 4, 0, 6), ValueError, "d_latent"),
        (lambda: TorchLatent(16, 4, 12, 6, d_head=0), ValueError, "d_head"),
        (lambda: TorchLatent(16, 4, 12, 6, rope_base=-1.0), ValueError, "rope_base"),
        (lambda: TorchLatent(16, 4.0, 12, 6), TypeError, "n_heads"),
        (lambda: _numpy_module()(_x(2, 3, 15)), ValueError, "x must have last dimension 16"),
        (lambda: _numpy_module()(_x(2, 3, 16).astype(np.float32)), TypeError, "x has dtype float32"),
        (lambda: _numpy_module()(torch.zeros(2, 3, 16, dtype=torch.float64)), TypeError, "x is a torch.Tensor"),
        (lambda: _torch_module()(_x(2, 3, 16)), TypeError, "x is a NumPy array"),
        (lambda: _numpy_module()(_x(16)), ValueError, "x must have at least 2"),
        (lambda: _numpy_module()(np.full((1, 2, 16), np.nan)), ValueError, "x contains NaN"),
        (lambda: _numpy_module()(_x(1, 2, 16), absorbed="yes"), TypeError, "absorbed"),
        (lambda: _numpy_module()(_x(1, 2, 16), kv_cache=TorchLatentCache()), TypeError,
         "kv_cache must be a attnlib.numpy.latent.LatentCache"),
        (lambda: _torch_module()(torch.zeros(1, 2, 16, dtype=torch.float64), kv_cache=[]), TypeError, "kv_cache"),
        (lambda: _numpy_module()(_x(1, 2, 16), kv_cache=_filled(NumpyLatent(16, 2, 8, 6, seed=0))), ValueError,
         "c_kv of shape"),  # a cache of another layer shape (d_latent 8, not 12)
        (lambda: _filled(_numpy_module()).append(np.zeros((1, 2, 12)), np.zeros((1, 3, 6))), ValueError,
         "c_kv and k_rope must share"),
        (lambda: _filled(_numpy_module()).append(np.zeros((1, 2, 12)), np.zeros((1, 2, 4))), ValueError,
         "k_rope of shape"),
        (lambda: _filled(_numpy_module()).append(np.zeros((1, 2, 12), np.float32), np.zeros((1, 2, 6), np.float32)),
         TypeError, "dtype float32"),
        (lambda: NumpyLatentCache().append(np.zeros((1, 2, 12)), np.zeros((1, 2, 6), np.float32)), TypeError,
         "dtypes must match"),
        (lambda: NumpyLatentCache().append(torch.zeros(2, 12), torch.zeros(2, 6)), TypeError, "c_kv is a torch"),
    ],
)
def test_bad_input_is_refused_by_name(call, error, name):
    with pytest.raises(error, match=name):
        call()


def _filled(module):
    """A cache that already holds two positions of ``module``'s batch-1 input."""
    cache = module.new_cache()
    module(_x(1, 2, 16), kv_cache=cache)
    return cache


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_both_paths_equal_the_numpy_twin():
    numpy_module = NumpyLatent(**WIDE, seed=15)
    module = TorchLatent.from_twin(numpy_module, device="cuda")
    x = _x(2, 6, 16, seed=16)
    expected = numpy_module(x)
    for absorbed in (False, True):
        cache = module.new_cache()
        pieces = [module(torch.from_numpy(x[:, start:stop]).cuda(), kv_cache=cache, absorbed=absorbed)
                  for start, stop in ((0, 4), (4, 5), (5, 6))]
        np.testing.assert_allclose(torch.cat(pieces, dim=-2).cpu().numpy(), expected, **ROUNDING)
        assert cache.c_kv.device.type == "cuda" and cache.nbytes == 2 * 6 * (10 + 4) * 8
    with pytest.raises(ValueError, match="x is on cpu"):
        module(torch.from_numpy(x))
