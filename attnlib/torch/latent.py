"""Multi-head latent attention (Torch twin of ``attnlib.numpy.latent``; DeepSeek-V2, arXiv:2405.04434, section 2.1).

Each position caches one latent ``c_kv = x W_dkv`` (d_latent numbers) and one RoPE key ``k_rope = RoPE(x W_kr)``
(d_rope numbers) shared by all heads. The *materialised* path rebuilds every head's keys and values from the
latents; the *absorbed* path folds W_uk into the query and W_uv into the output projection and attends directly
against the latents. Both compute the same function.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _checks, _doors, _latent
from .._bookkeeping import LatentBookkeeping
from .._config import MultiHeadLatentAttentionConfig
from ._module import Module, floating_dtype
from .attention import _attention, visible
from .positions import apply_rope


class LatentCache(_latent.LatentCache):
    __doc__ = _latent.LatentCache.__doc__

    @staticmethod
    def _concatenate(old, new):
        return torch.cat([old, new], dim=-2)  # along the positions axis

    @staticmethod
    def _nbytes(x) -> int:
        return x.numel() * x.element_size()

    @staticmethod
    def _as_array(name, x):
        return _checks.torch_tensor(name, x)


class MultiHeadLatentAttention(LatentBookkeeping, Module):
    """Causal self-attention whose cache keeps one latent of ``d_latent`` numbers and one RoPE key of ``d_rope``
    numbers per position, from which ``n_heads`` heads rebuild their keys and values (DeepSeek-V2's MLA).

    Head h's query is [x W_q^h ; RoPE(x W_qr^h)], its key [c_kv W_uk^h ; k_rope] and its value c_kv W_uv^h;
    scores are scaled by 1/sqrt(d_head + d_rope). Weights are stored (d_in, d_out), without biases. Left out: the
    paper's optional query compression and the normalisation its released models apply to the latents. RoPE uses the
    rotate-half layout of ``attnlib.torch.positions.apply_rope``. ``last_weights`` is (..., n_heads, n_q, n_k).
    """

    Config = MultiHeadLatentAttentionConfig

    def __init__(self, d_model: int, n_heads: int, d_latent: int, d_rope: int, *, d_head: int | None = None,
                 rope_base: float = 10000.0, dtype=None, device=None):
        """Random weights in nn.Linear's range, drawn from PyTorch's global generator (``torch.manual_seed``)."""
        super().__init__()
        self._configure(d_model=d_model, n_heads=n_heads, d_latent=d_latent, d_rope=d_rope, d_head=d_head,
                        rope_base=rope_base)
        factory = {"dtype": floating_dtype(dtype), "device": device}
        heads_width = self.n_heads * self.d_head
        shapes = {  # name: (fan_in, fan_out), in the order of the NumPy twin
            "w_q": (self.d_model, heads_width),  # content queries
            "w_qr": (self.d_model, self.n_heads * self.d_rope),  # RoPE queries
            "w_dkv": (self.d_model, self.d_latent),  # down to the cached latent
            "w_uk": (self.d_latent, heads_width),  # latent up to content keys
            "w_uv": (self.d_latent, heads_width),  # latent up to values
            "w_kr": (self.d_model, self.d_rope),  # the shared RoPE key
            "w_o": (heads_width, self.d_model),
        }
        for name, (fan_in, fan_out) in shapes.items():
            bound = 1.0 / math.sqrt(fan_in)
            self.register_parameter(name, nn.Parameter(torch.empty(fan_in, fan_out, **factory).uniform_(-bound, bound)))
        self._last_weights = None

    @property
    def last_weights(self):
        """The previous call's attention weights, (..., n_heads, n_q, n_k), detached; None before a call."""
        return self._last_weights

    def new_cache(self) -> LatentCache:
        """An empty ``LatentCache`` for this layer."""
        return LatentCache()

    def forward(self, x, *, kv_cache: LatentCache | None = None, absorbed: bool = False):
        """Causal self-attention over x (..., n, d_model) -> (..., n, d_model).

        ``kv_cache``: a ``LatentCache``; this call's c_kv and k_rope are appended, its positions are numbered from
        the cached length on, and its queries see the cached positions and themselves (n_k = cached + n).
        ``absorbed``: compute with W_uk folded into the queries and W_uv into the output projection, attending
        directly against the latents (the same result as the default, materialised path, up to rounding).
        Records ``last_weights`` (..., n_heads, n, n_k).
        """
        _checks.module_input("x", _checks.torch_tensor("x", x), width=self.d_model, dtype=self.dtype,
                             device=self.device, min_ndim=2)
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
        return w_q @ w_uk.transpose(-1, -2), w_uv @ w_o  # (H, d_model, d_latent), (H, d_latent, d_model)

    def _per_head(self, w):
        """(d_in, n_heads * d_head) -> (n_heads, d_in, d_head): the columns that belong to each head."""
        return w.reshape(w.shape[0], self.n_heads, -1).transpose(0, 1)  # (H, d_in, d_head)

    def _split_heads(self, y):
        *batch, n, width = y.shape
        return y.reshape(*batch, n, self.n_heads, width // self.n_heads).transpose(-2, -3)  # (..., H, n, width / H)

    def _forward(self, x, kv_cache, absorbed):
        n_past = 0 if kv_cache is None else kv_cache.length
        positions = torch.arange(n_past, n_past + x.shape[-2], device=x.device)  # continue after the cached tokens

        c_kv = x @ self.w_dkv  # (..., n, d_latent)
        k_rope = apply_rope(x @ self.w_kr, positions, base=self.rope_base)  # (..., n, d_rope)
        q_rope = apply_rope(self._split_heads(x @ self.w_qr), positions, base=self.rope_base)  # (..., H, n, d_rope)
        if kv_cache is not None:
            c_kv, k_rope = kv_cache._append(c_kv, k_rope)  # (..., n_past + n, d_latent), (..., n_past + n, d_rope)

        allowed = visible(x.shape[-2], c_kv.shape[-2], True, device=x.device)  # causal, aligned bottom-right
        scale = 1.0 / math.sqrt(self.d_head + self.d_rope)  # a query and a key have d_head + d_rope numbers
        if absorbed:
            return self._absorbed(x, c_kv, k_rope, q_rope, allowed, scale)
        return self._materialised(x, c_kv, k_rope, q_rope, allowed, scale)

    def _materialised(self, x, c_kv, k_rope, q_rope, allowed, scale):
        q_content = self._split_heads(x @ self.w_q)  # (..., H, n, d_head)
        k_content = self._split_heads(c_kv @ self.w_uk)  # (..., H, n_k, d_head)
        v = self._split_heads(c_kv @ self.w_uv)  # (..., H, n_k, d_head)
        k_rope = k_rope[..., None, :, :].expand(*k_content.shape[:-1], self.d_rope)  # (..., H, n_k, d_rope)
        q = torch.cat([q_content, q_rope], dim=-1)  # (..., H, n, d_head + d_rope)
        k = torch.cat([k_content, k_rope], dim=-1)  # (..., H, n_k, d_head + d_rope)
        heads, weights = _attention(q, k, v, allowed, scale)  # (..., H, n, d_head)
        self._last_weights = weights.detach()
        concatenated = heads.transpose(-2, -3).reshape(*x.shape[:-1], self.n_heads * self.d_head)  # (..., n, H d_head)
        return concatenated @ self.w_o

    def _absorbed(self, x, c_kv, k_rope, q_rope, allowed, scale):
        # W_uk moves onto the query and W_uv onto the output side: they act on the n queries, not the n_k positions.
        q_content = self._split_heads(x @ self.w_q)  # (..., H, n, d_head)
        q_latent = q_content @ self._per_head(self.w_uk).transpose(-1, -2)  # (..., H, n, d_latent): q·W_ukᵀ
        q = torch.cat([q_latent, q_rope], dim=-1)  # (..., H, n, d_latent + d_rope)
        k = torch.cat([c_kv, k_rope], dim=-1)[..., None, :, :]  # (..., 1, n_k, d_latent + d_rope): shared by all
        v = c_kv[..., None, :, :]  # (..., 1, n_k, d_latent)
        latents, weights = _attention(q, k, v, allowed, scale)  # (..., H, n, d_latent): weighted latents
        self._last_weights = weights.detach()
        heads = latents @ self._per_head(self.w_uv)  # (..., H, n, d_head): what the values would have given
        concatenated = heads.transpose(-2, -3).reshape(*x.shape[:-1], self.n_heads * self.d_head)  # (..., n, H d_head)
        return concatenated @ self.w_o  # (..., n, d_model)
