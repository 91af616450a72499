"""The checks at the door of a self-attention call, written once for both namespaces.

``MultiHeadAttention``, ``TransformerBlock`` and ``TransformerLM`` all take ``causal``, ``mask``, ``key_mask`` and a
KV cache. Before anything is computed -- and before any cache grows -- these helpers check that the masks fit the
scores the call will make, (..., n_heads, n_new, n_past + n_new), and that the cache can take the new keys and
values. Each namespace passes in what differs: how to read an argument as its own array type, and its cache classes.
"""

from __future__ import annotations

from . import _checks


def attention_call(x_shape, *, n_heads: int, d_head: int, dtype, device, causal, mask, key_mask, kv_cache,
                   as_array, layer_cache_class, kv_cache_class, n_kv_heads: int | None = None,
                   window: int | None = None):
    """Check the masking and cache arguments of self-attention over x of shape (..., n, d_model).

    ``n_kv_heads`` (None = n_heads) is how many key/value heads the cache holds; ``window`` the layer's sliding
    window (None = none). Returns ``(causal, mask, key_mask)`` ready to combine with "and": ``key_mask`` (..., n_k)
    is reshaped to (..., 1, 1, n_k) so that it hides the same keys from every head and every query.
    """
    batch, n = tuple(x_shape[:-2]), x_shape[-2]
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    causal = _checks.flag("causal", causal)
    if window is not None and not causal:
        raise ValueError(f"this layer has a sliding window (window={window}), which needs causal=True: a sliding "
                         "window keeps each query's most recent keys, and a bidirectional call has no 'most recent'")
    if kv_cache is not None:
        if isinstance(kv_cache, kv_cache_class):
            raise TypeError("kv_cache must be one layer's cache: pass cache[i], not the whole KVCache")
        if not isinstance(kv_cache, layer_cache_class):
            raise TypeError(
                f"kv_cache must be a {layer_cache_class.__module__}.LayerCache or None, got {type(kv_cache).__name__}"
            )
    n_past = 0
    if kv_cache is not None:
        rolling_cache_fits(kv_cache.window, window, causal)
        new = batch + (n_kv_heads, n, d_head)  # the keys and values this call will append
        kv_cache.check_extends(new, new, dtype, device)
        n_past = kv_cache.length
    n_k = n_past + n
    target = batch + (n_heads, n, n_k)
    if mask is not None:
        mask = as_array("mask", mask)
        _checks.mask(mask, target)
    if key_mask is not None:
        key_mask = as_array("key_mask", key_mask)
        _checks.key_mask(key_mask, batch, n_k)
        key_mask = key_mask[..., None, None, :]  # (..., 1, 1, n_k): every head, every query
    return causal, mask, key_mask


def rolling_cache_fits(cache_window, window, causal) -> None:
    """A rolling cache forgets keys older than its window: refuse it to a layer whose queries may still need them."""
    if cache_window is None:
        return
    if not causal or window is None or window > cache_window:
        sees = "every earlier key" if window is None or not causal else f"its {window} most recent keys"
        raise ValueError(f"kv_cache is a rolling cache of the last {cache_window} positions, but each query of this "
                         f"layer sees {sees}: use a cache without a window, or one with window >= {window}")


def language_model_call(model, ids, *, mask, key_mask, kv_cache, as_array, layer_cache_class, kv_cache_class):
    """Check a ``TransformerLM`` call; return (ids, start position, causal, mask, key_mask)."""
    ids = as_array("ids", ids)
    _checks.token_ids("ids", ids, model.vocab_size)
    start = 0
    if kv_cache is not None:
        if not isinstance(kv_cache, kv_cache_class):
            raise TypeError(
                f"kv_cache must be a {kv_cache_class.__module__}.KVCache (model.new_cache()) or None, "
                f"got {type(kv_cache).__name__}"
            )
        if len(kv_cache) != model.n_layers:
            raise ValueError(f"kv_cache has {len(kv_cache)} layers but the model has {model.n_layers}")
        states = {(layer.length, layer.position) for layer in kv_cache.layers}
        if len(states) > 1:
            raise ValueError("kv_cache layers hold different numbers of positions (held, seen): "
                             f"{sorted(states)}")
        start = kv_cache.position  # absolute position of the first new token (a rolling cache holds fewer)
        attention = model.blocks[0].attention
        new = tuple(ids.shape[:-1]) + (attention.n_kv_heads, ids.shape[-1], attention.d_head)
        for layer in kv_cache.layers:  # all of them, before the first one grows
            rolling_cache_fits(layer.window, attention.window, model.causal)
            layer.check_extends(new, new, model.dtype, getattr(model, "device", None))
    n = ids.shape[-1]
    if start + n > model.max_len:
        raise ValueError(
            f"sequence of {start + n} positions (cached {start} + new {n}) exceeds max_len={model.max_len}"
            + _max_len_hint(model)
        )
    attention = model.blocks[0].attention
    causal, mask, key_mask = attention_call(
        tuple(ids.shape) + (model.d_model,), n_heads=attention.n_heads, d_head=attention.d_head, dtype=model.dtype,
        device=getattr(model, "device", None), causal=model.causal, mask=mask, key_mask=key_mask,
        kv_cache=None if kv_cache is None else kv_cache[0], as_array=as_array,
        layer_cache_class=layer_cache_class, kv_cache_class=kv_cache_class, n_kv_heads=attention.n_kv_heads,
        window=attention.window,
    )
    return ids, start, causal, mask, key_mask


def run_transaction(kv_cache, compute):
    """``compute()``, and if it raises, every layer of ``kv_cache`` is put back as it was before."""
    if kv_cache is None:
        return compute()
    snapshot = kv_cache.snapshot()
    try:
        return compute()
    except BaseException:
        kv_cache.restore(snapshot)
        raise


def generate_call(model, prompt_ids, n_new, *, as_array):
    """Check the arguments of ``generate``; return (prompt ids, n_new)."""
    n_new = _checks.non_negative_int("n_new", n_new)
    prompt_ids = as_array("prompt_ids", prompt_ids)
    _checks.token_ids("prompt_ids", prompt_ids, model.vocab_size)
    if not model.causal:
        raise ValueError("generate needs a causal model (causal=True); this one is bidirectional")
    if prompt_ids.shape[-1] + n_new > model.max_len:
        raise ValueError(f"prompt of {prompt_ids.shape[-1]} tokens + n_new={n_new} exceeds max_len={model.max_len}"
                         + _max_len_hint(model))
    return prompt_ids, n_new


def _max_len_hint(model) -> str:
    """How to go further: a learned position table cannot; rotary, ALiBi and position-free models can."""
    if getattr(model, "positional", "learned") == "learned":
        return " (the learned position table has max_len rows: there is no vector for later positions)"
    return f" (positional={model.positional!r} has no table: model.extend_context(new_max_len) raises the limit)"


def encoder_call(model, ids, *, token_types, mask, key_mask, as_array):
    """Check a ``TransformerEncoder`` call; return (ids, token_types or None, mask, key_mask)."""
    ids = as_array("ids", ids)
    _checks.token_ids("ids", ids, model.vocab_size)
    if ids.shape[-1] > model.max_len:
        raise ValueError(f"sequence of {ids.shape[-1]} positions exceeds max_len={model.max_len}")
    if token_types is not None:
        token_types = as_array("token_types", token_types)
        _checks.token_ids("token_types", token_types, model.n_token_types)
        if tuple(token_types.shape) != tuple(ids.shape):
            raise ValueError(f"token_types must have the shape of ids {tuple(ids.shape)}, got "
                             f"{tuple(token_types.shape)}")
    attention = model.blocks[0].attention
    _, mask, key_mask = attention_call(
        tuple(ids.shape) + (model.d_model,), n_heads=attention.n_heads, d_head=attention.d_head, dtype=model.dtype,
        device=getattr(model, "device", None), causal=False, mask=mask, key_mask=key_mask, kv_cache=None,
        as_array=as_array, layer_cache_class=None, kv_cache_class=None,  # an encoder keeps no cache
    )
    return ids, token_types, mask, key_mask


def pooling_call(hidden, key_mask, *, as_array):
    """Check the arguments of ``mean_pool``; return them as the namespace's arrays (key_mask may be None)."""
    hidden = _checks.floating_array("hidden", as_array("hidden", hidden), min_ndim=2)
    if key_mask is not None:
        key_mask = as_array("key_mask", key_mask)
        _checks.key_mask(key_mask, tuple(hidden.shape[:-2]), hidden.shape[-2])
    return hidden, key_mask
