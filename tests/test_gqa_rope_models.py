"""Grouped/multi-query heads, RoPE, ALiBi and sliding windows in the modules, the model and the KV cache."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import attnlib
import attnlib.numpy as anp
import attnlib.torch as at

DOUBLE = dict(rtol=0, atol=1e-12)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomise(module):
    """Fresh modules have zero biases and unit gains; randomise so every parameter matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def _reference_attention(module, x, *, causal):
    """The layer rebuilt from PyTorch's SDPA (enable_gqa=True) and projections written out by hand."""
    h, h_kv, d_head = module.n_heads, module.n_kv_heads, module.d_head
    *batch, n, d_model = x.shape
    q = (x @ module.w_q + module.b_q).reshape(*batch, n, h, d_head).transpose(-2, -3)
    k = (x @ module.w_k + module.b_k).reshape(*batch, n, h_kv, d_head).transpose(-2, -3)
    v = (x @ module.w_v + module.b_v).reshape(*batch, n, h_kv, d_head).transpose(-2, -3)
    positions = torch.arange(n)
    attn_mask = torch.zeros(h, n, n, dtype=x.dtype)
    if module.positional == "rope":
        q, k = at.apply_rope(q, positions), at.apply_rope(k, positions)
    if module.positional == "alibi":
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / h) for i in range(h)], dtype=x.dtype)  # h a power of two
        attn_mask = attn_mask + slopes[:, None, None] * (positions[None, :] - positions[:, None])
    if causal:
        allowed = positions[None, :] <= positions[:, None]
        if module.window is not None:
            allowed &= positions[None, :] > positions[:, None] - module.window
        attn_mask = attn_mask.masked_fill(~allowed, float("-inf"))
    heads = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=True)
    return heads.transpose(-2, -3).reshape(*batch, n, d_model) @ module.w_o + module.b_o


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("positional", ["none", "rope", "alibi"])
@pytest.mark.parametrize("window", [None, 3])
def test_attention_module_equals_sdpa_reference(n_kv_heads, positional, window):
    module = _randomise(at.MultiHeadAttention(16, 4, n_kv_heads=n_kv_heads, positional=positional, window=window,
                                              dtype=torch.float64))
    assert module.w_k.shape == module.w_v.shape == (16, n_kv_heads * 4)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    torch.testing.assert_close(module(x, causal=True), _reference_attention(module, x, causal=True), **DOUBLE)
    if window is None:
        torch.testing.assert_close(module(x), _reference_attention(module, x, causal=False), **DOUBLE)
    twin = anp.MultiHeadAttention.from_twin(module)
    np.testing.assert_allclose(twin(x.numpy(), causal=True), module(x, causal=True).detach().numpy(), **DOUBLE)
    np.testing.assert_allclose(twin.last_weights, module.last_weights.numpy(), **DOUBLE)


def test_as_many_kv_heads_as_query_heads_is_the_classic_layer():
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True, dtype=torch.float64)
    _randomise(reference)
    ours = at.MultiHeadAttention.from_torch(reference)
    assert ours.n_kv_heads == 4 and ours.positional == "none" and ours.window is None
    explicit = at.MultiHeadAttention(16, 4, n_kv_heads=4, dtype=torch.float64)
    explicit.load_state_dict(ours.state_dict())  # same names and shapes as the classic layer
    x = torch.randn(3, 6, 16, dtype=torch.float64)
    expected, _ = reference(x, x, x, need_weights=False)
    torch.testing.assert_close(explicit(x), expected, **DOUBLE)
    # "As many as the query heads" is written None, so it stays true if n_heads is edited in the configuration.
    assert at.MultiHeadAttention(16, 4, n_kv_heads=4).config()["n_kv_heads"] is None
    assert at.TransformerBlock(**{**at.TransformerBlock(16, 4, 32).config(), "n_heads": 8}).attention.n_kv_heads == 8


def test_gradients_of_a_grouped_rope_layer_match_the_reference():
    module = _randomise(at.MultiHeadAttention(16, 4, n_kv_heads=2, positional="rope", dtype=torch.float64))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    ours = torch.autograd.grad(module(x, causal=True).square().sum(), list(module.parameters()))
    theirs = torch.autograd.grad(_reference_attention(module, x, causal=True).square().sum(), list(module.parameters()))
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **DOUBLE)


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_parameter_counts_shrink_with_the_key_value_heads(n_kv_heads):
    d_model, n_heads = 32, 8
    block = anp.TransformerBlock(d_model, n_heads, 64, n_kv_heads=n_kv_heads)
    kv = n_heads if n_kv_heads is None else n_kv_heads
    d_kv = kv * d_model // n_heads
    assert block.parameter_counts()["attention"] == 2 * d_model * d_model + 2 * d_model * d_kv + 2 * d_model + 2 * d_kv
    torch_block = at.TransformerBlock(d_model, n_heads, 64, n_kv_heads=n_kv_heads)
    assert torch_block.parameter_counts() == block.parameter_counts()


def test_position_table_only_for_learned_positions():
    learned = at.TransformerLM(40, 16, 4, 32, 2, 20)
    rope = at.TransformerLM(40, 16, 4, 32, 2, 20, positional="rope")
    assert "position_embedding" in dict(learned.named_parameters())
    assert "position_embedding" not in dict(rope.named_parameters())
    assert learned.parameter_counts()["embeddings"] - rope.parameter_counts()["embeddings"] == 20 * 16
    assert anp.TransformerLM(40, 16, 4, 32, 2, 20, positional="alibi").parameter_counts() == \
        at.TransformerLM(40, 16, 4, 32, 2, 20, positional="alibi").parameter_counts()


MODELS = [
    dict(positional="learned"), dict(positional="rope"), dict(positional="alibi"), dict(positional="none"),
    dict(positional="rope", n_kv_heads=2), dict(positional="rope", n_kv_heads=1), dict(positional="alibi",
                                                                                     n_kv_heads=2),
    dict(positional="learned", n_kv_heads=1), dict(positional="rope", n_kv_heads=2, window=4),
    dict(positional="alibi", window=3), dict(positional="learned", window=5),
]


def _model(**options):
    model = _randomise(at.TransformerLM(30, 16, 4, 32, 2, 40, dtype=torch.float64, **options))
    return model, anp.TransformerLM.from_twin(model)


GENERATING = [MODELS[i] for i in (1, 2, 4, 5, 8)]  # rope, alibi, GQA, MQA, window (the logits test has them all)


@pytest.mark.parametrize("options", GENERATING, ids=[str(o) for o in GENERATING])
def test_cached_generation_is_token_identical_to_uncached_in_both_twins(options):
    model, twin = _model(**options)
    prompt = torch.randint(0, 30, (2, 6))
    cached = model.generate(prompt, 10)
    assert torch.equal(cached, model.generate(prompt, 10, use_kv_cache=False))
    twin_cached = twin.generate(prompt.numpy(), 10)
    np.testing.assert_array_equal(twin_cached, twin.generate(prompt.numpy(), 10, use_kv_cache=False))
    np.testing.assert_array_equal(twin_cached, cached.numpy())


@pytest.mark.parametrize("options", MODELS, ids=[str(o) for o in MODELS])
def test_cached_logits_equal_uncached_logits_step_by_step(options):
    model, twin = _model(**options)
    ids = torch.randint(0, 30, (2, 14))
    full = model(ids)
    cache = model.new_cache()
    pieces = [model(ids[:, :5], kv_cache=cache)] + [model(ids[:, i:i + 1], kv_cache=cache) for i in range(5, 11)]
    pieces.append(model(ids[:, 11:], kv_cache=cache))  # several new tokens at once after single steps
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-10)
    np.testing.assert_allclose(twin(ids.numpy()), full.detach().numpy(), **DOUBLE)


@pytest.mark.parametrize("window", [1, 3, 6])
def test_rolling_cache_never_holds_more_than_the_window(window):
    model, twin = _model(positional="rope", n_kv_heads=2, window=window)
    for namespace_model, as_ids in ((model, torch.as_tensor), (twin, np.asarray)):
        cache = namespace_model.new_cache()
        assert cache.window == window and all(layer.window == window for layer in cache.layers)
        ids = np.random.default_rng(window).integers(0, 30, (1, 25))
        namespace_model(as_ids(ids[:, :10]), kv_cache=cache)  # a prompt longer than the window
        seen = 10
        for i in range(10, 25):
            assert all(layer.length == min(window, seen) for layer in cache.layers)
            assert cache.position == seen
            namespace_model(as_ids(ids[:, i:i + 1]), kv_cache=cache)
            seen += 1
        assert cache.length == window and cache.position == 25
        per_position = 2 * 2 * 2 * 4 * 8  # layers x (k and v) x kv heads x d_head x float64 bytes
        assert cache.nbytes == window * per_position


def test_rolling_cache_generation_equals_uncached_generation_past_the_window():
    model, twin = _model(positional="alibi", n_kv_heads=2, window=4)
    prompt = torch.randint(0, 30, (2, 9))
    for generate, to_ids in ((model.generate, lambda a: a), (twin.generate, lambda a: a.numpy())):
        cached = generate(to_ids(prompt), 8)
        uncached = generate(to_ids(prompt), 8, use_kv_cache=False)
        np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
    # The window matters: the same weights without it compute other logits once the sequence outgrows it.
    unwindowed = at.TransformerLM(**{**model.config(), "window": None}, dtype=torch.float64)
    unwindowed.load_state_dict(model.state_dict())
    assert not torch.allclose(unwindowed(prompt)[:, 4:], model(prompt)[:, 4:])
    torch.testing.assert_close(unwindowed(prompt)[:, :4], model(prompt)[:, :4], **DOUBLE)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cache_bytes_shrink_by_the_group_size(n_kv_heads):
    full, _ = _model(positional="rope")
    grouped, _ = _model(positional="rope", n_kv_heads=n_kv_heads)
    ids = torch.randint(0, 30, (2, 12))
    caches = []
    for model in (full, grouped):
        caches.append(model.new_cache())
        model(ids, kv_cache=caches[-1])
    assert caches[0].nbytes == caches[1].nbytes * (4 // n_kv_heads)
    assert caches[1][0].keys.shape == (2, n_kv_heads, 12, 4)
    twin_cache = anp.TransformerLM.from_twin(grouped).new_cache()
    anp.TransformerLM.from_twin(grouped)(ids.numpy(), kv_cache=twin_cache)
    assert twin_cache.nbytes == caches[1].nbytes


def test_rope_keys_are_cached_turned_at_their_own_position():
    model, _ = _model(positional="rope", n_kv_heads=2)
    ids = torch.randint(0, 30, (1, 6))
    cache = model.new_cache()
    model(ids, kv_cache=cache)
    attention = model.blocks[0].attention
    x = model.blocks[0].norm1(model.token_embedding[ids])
    k = (x @ attention.w_k + attention.b_k).reshape(1, 6, 2, 4).transpose(1, 2)  # (1, H_kv, n, d_head)
    torch.testing.assert_close(cache[0].keys, at.apply_rope(k, torch.arange(6)), **DOUBLE)


def test_models_without_a_table_can_extend_their_context():
    model, twin = _model(positional="rope", n_kv_heads=2)
    prompt = torch.randint(0, 30, (1, 36))
    with pytest.raises(ValueError, match=r"exceeds max_len=40.*model.extend_context"):
        model.generate(prompt, 8)
    model.extend_context(44)
    twin.extend_context(44)
    assert model.config()["max_len"] == 44
    out = model.generate(prompt, 8)
    assert out.shape == (1, 44)
    np.testing.assert_array_equal(twin.generate(prompt.numpy(), 8), out.numpy())
    assert torch.equal(out, model.generate(prompt, 8, use_kv_cache=False))
    learned, _ = _model(positional="learned")
    with pytest.raises(ValueError, match=r"positional='learned'.*40 rows.*cannot be extended"):
        learned.extend_context(80)
    with pytest.raises(ValueError, match=r"exceeds max_len=40 \(the learned position table has max_len rows"):
        learned.generate(prompt, 20)


def test_a_failed_call_puts_the_rolling_cache_back():
    model, _ = _model(positional="rope", window=3)
    cache = model.new_cache()
    model(torch.randint(0, 30, (1, 7)), kv_cache=cache)
    before = [(layer.keys.clone(), layer.position) for layer in cache.layers]
    with torch.no_grad():
        model.blocks[1].feed_forward.w_2[0, 0] = float("nan")  # a NaN born inside the second layer
    with pytest.raises(ValueError, match="NaN"):
        model(torch.randint(0, 30, (1, 2)), kv_cache=cache)
    for layer, (keys, position) in zip(cache.layers, before, strict=True):
        assert torch.equal(layer.keys, keys) and layer.position == position == 7


def _t(*shape):
    return torch.ones(*shape, dtype=torch.float64)


BAD = [
    ("heads do not divide", lambda: at.MultiHeadAttention(16, 4, n_kv_heads=3), ValueError,
     r"n_kv_heads must divide n_heads.*n_heads=4 and n_kv_heads=3"),
    ("zero kv heads", lambda: anp.TransformerBlock(16, 4, 32, n_kv_heads=0), ValueError,
     r"n_kv_heads must be a positive integer, got 0"),
    ("unknown positional", lambda: at.TransformerLM(10, 16, 4, 32, 1, 8, positional="sinusoidal"), ValueError,
     r"positional must be one of \('learned', 'none', 'rope', 'alibi'\), got 'sinusoidal'"),
    ("learned in a layer", lambda: anp.MultiHeadAttention(16, 4, positional="learned"), ValueError,
     r"positional must be one of \('none', 'rope', 'alibi'\)"),
    ("rope odd d_head", lambda: at.MultiHeadAttention(12, 4, positional="rope"), ValueError,
     r"d_head = d_model / n_heads must be even.*d_head=3"),
    ("window zero", lambda: at.TransformerBlock(16, 4, 32, window=0), ValueError, r"window must be a positive"),
    ("window in a bidirectional model", lambda: anp.TransformerLM(10, 16, 4, 32, 1, 8, causal=False, window=2),
     ValueError, r"window=2 needs causal=True"),
    ("window in a bidirectional call", lambda: at.MultiHeadAttention(16, 4, window=2, dtype=torch.float64)(
        _t(1, 3, 16)), ValueError, r"sliding window \(window=2\), which needs causal=True"),
    ("rolling cache, no window", lambda: at.MultiHeadAttention(16, 4, dtype=torch.float64)(
        _t(1, 3, 16), causal=True, kv_cache=at.LayerCache(window=2)), ValueError,
     r"rolling cache of the last 2 positions, but each query of this layer sees every earlier key"),
    ("rolling cache too short", lambda: anp.TransformerLM(10, 16, 4, 32, 1, 8, window=4)(
        np.array([[1, 2]]), kv_cache=anp.KVCache(1, window=2)), ValueError,
     r"rolling cache of the last 2 positions, but each query of this layer sees its 4 most recent keys"),
    ("cache with the wrong heads", lambda: at.TransformerLM(10, 16, 4, 32, 1, 8, n_kv_heads=2,
                                                            dtype=torch.float64)(
        torch.tensor([[1]]), kv_cache=_full_head_cache()), ValueError, r"k of shape \(1, 2, 1, 4\) does not extend"),
    ("extend below", lambda: at.TransformerLM(10, 16, 4, 32, 1, 8, positional="rope").extend_context(4),
     ValueError, r"max_len=4 is below the current 8"),
]


def _full_head_cache():
    """A cache filled by a model with 4 key/value heads."""
    cache = at.KVCache(1)
    at.TransformerLM(10, 16, 4, 32, 1, 8, dtype=torch.float64)(torch.tensor([[1, 2]]), kv_cache=cache)
    return cache


@pytest.mark.parametrize("description,call,error,message", BAD, ids=[case[0] for case in BAD])
def test_bad_configuration_is_refused_by_name(description, call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_config_round_trips_between_twins():
    model = at.TransformerLM(30, 16, 4, 32, 2, 40, n_kv_heads=2, positional="alibi", window=6)
    config = model.config()
    assert {k: config[k] for k in ("n_kv_heads", "positional", "window")} == dict(n_kv_heads=2, positional="alibi",
                                                                                  window=6)
    assert anp.TransformerLM(**config).config() == config
    assert math.prod(anp.TransformerLM.from_twin(model).blocks[0].attention.w_k.shape) == 16 * 8
    assert attnlib.finite_checks()


def test_value_norms_read_each_query_heads_shared_value_head():
    module = _randomise(at.MultiHeadAttention(16, 4, n_kv_heads=2, dtype=torch.float64))
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    norms = module.value_norms(x)  # (2, 4, 5)
    v = x @ module.w_v + module.b_v  # (2, 5, 8): two value heads of 4 features
    for h in range(4):
        g = h // 2  # query heads 0, 1 read value head 0; heads 2, 3 read value head 1
        by_hand = (v[..., 4 * g:4 * g + 4] @ module.w_o[4 * h:4 * h + 4]).norm(dim=-1)
        torch.testing.assert_close(norms[:, h], by_hand, **DOUBLE)
    twin = anp.MultiHeadAttention.from_twin(module)
    np.testing.assert_allclose(twin.value_norms(x.numpy()), norms.detach().numpy(), **DOUBLE)
