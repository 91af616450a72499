"""Multi-head latent attention (DeepSeek-V2, arXiv:2405.04434, section 2.1): a small cache, rebuilt per head.

Instead of caching a key and a value per head, each position caches one latent vector ``c_kv = x W_dkv`` of
``d_latent`` numbers; every head rebuilds its keys and values from it with its own up-projections W_uk, W_uv. RoPE
cannot act on keys rebuilt from a cache (the rotation would sit between W_q and W_uk and spoil the fold below), so
position enters through a separate, decoupled part: a RoPE key ``k_rope = RoPE(x W_kr)`` of ``d_rope`` numbers,
cached too and shared by every head, and a RoPE part of each head's query. The cache holds d_latent + d_rope numbers
per position, whatever the number of heads.

Two ways to compute the same thing:

* *materialised*: rebuild k and v for every head from the cached latents, then attend as usual;
* *absorbed*: never rebuild them. q·k = (x W_q)(c W_uk)ᵀ = (x W_q W_ukᵀ)·c, so W_uk folds into the query, and the
  output sum_j w_j (c_j W_uv) W_o = (sum_j w_j c_j)(W_uv W_o), so W_uv folds into the output projection. Each head
  then attends straight against the latent cache, which acts as one key/value head shared by all, and the two
  up-projections act on the new queries only, not on every cached position.
"""

from __future__ import annotations

import numpy as np

from .. import _checks, _doors, _latent
from .._bookkeeping import LatentBookkeeping
from .._config import MultiHeadLatentAttentionConfig
from ._module import Module, floating_dtype, make_rng, uniform
from .attention import _attention, visible
from .positions import apply_rope


class LatentCache(_latent.LatentCache):
    __doc__ = _latent.LatentCache.__doc__

    @staticmethod
    def _concatenate(old, new):
        return np.concatenate([old, new], axis=-2)  # along the positions axis

    @staticmethod
    def _nbytes(x) -> int:
        return x.nbytes

    @staticmethod
    def _as_array(name, x):
        return _checks.numpy_array(name, x)


class MultiHeadLatentAttention(LatentBookkeeping, Module):
    """Causal self-attention whose cache keeps one latent of ``d_latent`` numbers and one RoPE key of ``d_rope``
    numbers per position, from which ``n_heads`` heads rebuild their keys and values (DeepSeek-V2's MLA).

    Head h's query is [x W_q^h ; RoPE(x W_qr^h)] (d_head + d_rope numbers), its key [c_kv W_uk^h ; k_rope] and its
    value c_kv W_uv^h, with c_kv = x W_dkv and k_rope = RoPE(x W_kr); scores are scaled by 1/sqrt(d_head + d_rope)
    and the heads' outputs, concatenated, go through W_o. Weights are stored (d_in, d_out), without biases, as in
    DeepSeek-V2. Left out of this teaching version: the paper's optional compression of the queries (W_dq, W_uq) and
    the normalisation its released models apply to the latents. RoPE uses the rotate-half layout of
    ``attnlib.numpy.positions.apply_rope``. After a call, ``last_weights`` holds the attention weights per head,
    (..., n_heads, n_q, n_k), the same in both paths.
    """

    Config = MultiHeadLatentAttentionConfig

    def __init__(self, d_model: int, n_heads: int, d_latent: int, d_rope: int, *, d_head: int | None = None,
                 rope_base: float = 10000.0, seed=None, dtype=np.float64):
        """Random weights in nn.Linear's range U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn from ``seed``."""
        self._configure(d_model=d_model, n_heads=n_heads, d_latent=d_latent, d_rope=d_rope, d_head=d_head,
                        rope_base=rope_base)
        dtype, rng = floating_dtype(dtype), make_rng(seed)
        heads_width = self.n_heads * self.d_head
        self.w_q = uniform(rng, self.d_model, (self.d_model, heads_width), dtype)  # content queries
        self.w_qr = uniform(rng, self.d_model, (self.d_model, self.n_heads * self.d_rope), dtype)  # RoPE queries
        self.w_dkv = uniform(rng, self.d_model, (self.d_model, self.d_latent), dtype)  # down to the cached latent
        self.w_uk = uniform(rng, self.d_latent, (self.d_latent, heads_width), dtype)  # latent up to content keys
        self.w_uv = uniform(rng, self.d_latent, (self.d_latent, heads_width), dtype)  # latent up to values
        self.w_kr = uniform(rng, self.d_model, (self.d_model, self.d_rope), dtype)  # the shared RoPE key
        self.w_o = uniform(rng, heads_width, (heads_width, self.d_model), dtype)
        self._last_weights = None

    @property
    def last_weights(self):
        """The previous call's attention weights, (..., n_heads, n_q, n_k); not a parameter. None before a call."""
        return self._last_weights

    def new_cache(self) -> LatentCache:
        """An empty ``LatentCache`` for this layer."""
        return LatentCache()

    def __call__(self, x, *, kv_cache: LatentCache | None = None, absorbed: bool = False):
        """Causal self-attention over x (..., n, d_model) -> (..., n, d_model).

        ``kv_cache``: a ``LatentCache``; this call's c_kv and k_rope are appended, its positions are numbered from
        the cached length on, and its queries see the cached positions and themselves (n_k = cached + n).
        ``absorbed``: compute with W_uk folded into the queries and W_uv into the output projection, attending
        directly against the latents (the same result as the default, materialised path, up to rounding).
        Records ``last_weights`` (..., n_heads, n, n_k).
        """
        x = _checks.module_input("x", _checks.numpy_array("x", x), width=self.d_model, dtype=self.dtype, min_ndim=2)
        absorbed = _latent.attention_call(self, x, kv_cache=kv_cache, absorbed=absorbed, cache_class=LatentCache)
        return _doors.run_transaction(kv_cache, lambda: self._forward(x, kv_cache, absorbed))

    def absorbed_weights(self):
        """W_uk folded into the query projection and W_uv into the output projection, for every head h:
        (W_q^h W_uk^hᵀ, W_uv^h W_o^h), shapes (n_heads, d_model, d_latent) and (n_heads, d_latent, d_model).

        x (W_q^h W_uk^hᵀ) is head h's query read in latent space, and a head's weighted sum of latents times
        W_uv^h W_o^h is its share of the output. A server multiplies these out once; the absorbed path applies the
        two factors to each query instead, the same numbers up to rounding, so the stored weights stay the only
        copy.
        """
        w_q = self._per_head(self.w_q)  # (H, d_model, d_head)
        w_uk = self._per_head(self.w_uk)  # (H, d_latent, d_head)
        w_uv = self._per_head(self.w_uv)  # (H, d_latent, d_head)
        w_o = self.w_o.reshape(self.n_heads, self.d_head, self.d_model)  # (H, d_head, d_model): head h's rows
        return w_q @ np.swapaxes(w_uk, -1, -2), w_uv @ w_o  # (H, d_model, d_latent), (H, d_latent, d_model)

    def _per_head(self, w):
        """(d_in, n_heads * d_head) -> (n_heads, d_in, d_head): the columns that belong to each head."""
        return np.swapaxes(w.reshape(w.shape[0], self.n_heads, -1), 0, 1)  # (H, d_in, d_head)

    def _split_heads(self, y):
        *batch, n, width = y.shape
        y = y.reshape(*batch, n, self.n_heads, width // self.n_heads)  # (..., n, H, width / H)
        return np.swapaxes(y, -2, -3)  # (..., H, n, width / H)

    def _forward(self, x, kv_cache, absorbed):
        n_past = 0 if kv_cache is None else kv_cache.length
        positions = np.arange(n_past, n_past + x.shape[-2])  # the new tokens continue after the cached ones

        # What every position writes: its latent and its RoPE key (both cached), and its queries.
        c_kv = x @ self.w_dkv  # (..., n, d_latent)
        k_rope = apply_rope(x @ self.w_kr, positions, base=self.rope_base)  # (..., n, d_rope)
        q_rope = apply_rope(self._split_heads(x @ self.w_qr), positions, base=self.rope_base)  # (..., H, n, d_rope)
        if kv_cache is not None:
            c_kv, k_rope = kv_cache._append(c_kv, k_rope)  # (..., n_past + n, d_latent), (..., n_past + n, d_rope)

        allowed = visible(x.shape[-2], c_kv.shape[-2], True)  # causal, aligned bottom-right
        scale = 1.0 / np.sqrt(self.d_head + self.d_rope)  # a query and a key have d_head + d_rope numbers
        if absorbed:
            return self._absorbed(x, c_kv, k_rope, q_rope, allowed, scale)
        return self._materialised(x, c_kv, k_rope, q_rope, allowed, scale)

    def _materialised(self, x, c_kv, k_rope, q_rope, allowed, scale):
        # Rebuild every head's keys and values from the latents, then attend as multi-head attention does.
        q_content = self._split_heads(x @ self.w_q)  # (..., H, n, d_head)
        k_content = self._split_heads(c_kv @ self.w_uk)  # (..., H, n_k, d_head)
        v = self._split_heads(c_kv @ self.w_uv)  # (..., H, n_k, d_head)
        shared = k_rope[..., None, :, :]  # (..., 1, n_k, d_rope): one RoPE key serves every head
        k_rope = np.broadcast_to(shared, k_content.shape[:-1] + (self.d_rope,))  # (..., H, n_k, d_rope)
        q = np.concatenate([q_content, q_rope], axis=-1)  # (..., H, n, d_head + d_rope)
        k = np.concatenate([k_content, k_rope], axis=-1)  # (..., H, n_k, d_head + d_rope)
        heads, self._last_weights = _attention(q, k, v, allowed, scale)  # (..., H, n, d_head)
        heads = np.swapaxes(heads, -2, -3)  # (..., n, H, d_head)
        concatenated = heads.reshape(*heads.shape[:-2], self.n_heads * self.d_head)  # (..., n, H * d_head)
        return concatenated @ self.w_o

    def _absorbed(self, x, c_kv, k_rope, q_rope, allowed, scale):
        # Attend against the latents themselves: one key/value head of width d_latent (+ d_rope) shared by all heads.
        # W_uk moves onto the query and W_uv onto the output side, so they act on the n queries, never on the n_k
        # cached positions. (absorbed_weights() multiplies them into W_q and W_o, as a server does once.)
        q_content = self._split_heads(x @ self.w_q)  # (..., H, n, d_head)
        q_latent = q_content @ np.swapaxes(self._per_head(self.w_uk), -1, -2)  # (..., H, n, d_latent): q·W_ukᵀ
        q = np.concatenate([q_latent, q_rope], axis=-1)  # (..., H, n, d_latent + d_rope)
        k = np.concatenate([c_kv, k_rope], axis=-1)[..., None, :, :]  # (..., 1, n_k, d_latent + d_rope)
        v = c_kv[..., None, :, :]  # (..., 1, n_k, d_latent)
        latents, self._last_weights = _attention(q, k, v, allowed, scale)  # (..., H, n, d_latent): weighted latents
        heads = latents @ self._per_head(self.w_uv)  # (..., H, n, d_head): what the values would have given
        heads = np.swapaxes(heads, -2, -3)  # (..., n, H, d_head)
        return heads.reshape(*heads.shape[:-2], self.n_heads * self.d_head) @ self.w_o  # (..., n, d_model)
