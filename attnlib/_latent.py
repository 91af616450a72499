"""The latent cache of multi-head latent attention and the checks at its door, written once for both namespaces.

Multi-head latent attention (DeepSeek-V2) does not cache keys and values per head. Each position leaves two
vectors: the latent ``c_kv`` (d_latent numbers, from which every head's keys and values are rebuilt) and the RoPE
key ``k_rope`` (d_rope numbers, shared by every head). ``LatentCache`` holds them, grown along the positions axis;
the twins override only how arrays are joined, sized and recognised, as ``attnlib._kv_cache`` does for the plain
cache. Appends are all or nothing: both arrays are checked before either is stored, and a module call that fails
after appending puts the cache back (``snapshot``/``restore``).
"""

from __future__ import annotations

from . import _checks


class LatentCache:
    """One layer's latent cache: ``c_kv`` (..., n_cached, d_latent) and ``k_rope`` (..., n_cached, d_rope).

    ``length`` positions are cached; ``nbytes`` is what they occupy: (d_latent + d_rope) numbers per position,
    however many heads read them. Pass it as ``kv_cache=`` to ``MultiHeadLatentAttention``, which appends each
    call's positions and numbers the new ones from ``length`` on.
    """

    @staticmethod
    def _concatenate(old, new):  # overridden per backend
        raise NotImplementedError

    @staticmethod
    def _nbytes(x) -> int:
        raise NotImplementedError

    @staticmethod
    def _as_array(name: str, x):  # overridden per backend: the namespace's own array type
        raise NotImplementedError

    def __init__(self):
        """An empty cache; the first append fixes its batch dimensions, widths, dtype and device."""
        self.c_kv = None
        self.k_rope = None

    @property
    def length(self) -> int:
        """How many positions are cached."""
        return 0 if self.c_kv is None else self.c_kv.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes held: ``c_kv`` and ``k_rope`` together."""
        return 0 if self.c_kv is None else self._nbytes(self.c_kv) + self._nbytes(self.k_rope)

    def check_extends(self, c_kv_shape, k_rope_shape, dtype, device=None) -> None:
        """Raise unless ``c_kv`` and ``k_rope`` of these shapes and dtype can be appended to what is cached."""
        held = None if self.c_kv is None else (self.c_kv, self.k_rope)
        _checks.extends_cache(("c_kv", "k_rope"), (c_kv_shape, k_rope_shape), held, dtype, device)

    def append(self, c_kv, k_rope):
        """Add new positions' ``c_kv`` (..., n, d_latent) and ``k_rope`` (..., n, d_rope); return all so far.

        Both are checked before either is stored: a refused call leaves the cache as it was.
        """
        c_kv, k_rope = _checks.cache_pair(self._as_array, ("c_kv", "k_rope"), c_kv, k_rope)
        self.check_extends(c_kv.shape, k_rope.shape, c_kv.dtype, getattr(c_kv, "device", None))
        return self._append(c_kv, k_rope)

    def _append(self, c_kv, k_rope):
        """``append`` on arguments that a caller already checked (``check_extends``)."""
        if self.c_kv is None:
            self.c_kv, self.k_rope = c_kv, k_rope
        else:
            self.c_kv = self._concatenate(self.c_kv, c_kv)
            self.k_rope = self._concatenate(self.k_rope, k_rope)
        return self.c_kv, self.k_rope

    def snapshot(self):
        """What the cache holds now. Appending builds new arrays, so keeping the old references is enough."""
        return self.c_kv, self.k_rope

    def restore(self, snapshot) -> None:
        """Put the cache back as it was when ``snapshot`` was taken."""
        self.c_kv, self.k_rope = snapshot


def attention_call(module, x, *, kv_cache, absorbed, cache_class) -> bool:
    """Check a ``MultiHeadLatentAttention`` call on x (..., n, d_model) that its module input check passed.

    The cache must be this namespace's ``LatentCache`` and able to take the call's positions, checked before
    anything is computed. Returns ``absorbed`` as a bool.
    """
    absorbed = _checks.flag("absorbed", absorbed)
    if kv_cache is not None:
        if not isinstance(kv_cache, cache_class):
            raise TypeError(f"kv_cache must be a {cache_class.__module__}.LatentCache (module.new_cache()) or None, "
                            f"got {type(kv_cache).__module__}.{type(kv_cache).__name__}")
        positions = tuple(x.shape[:-1])  # (..., n): one latent and one RoPE key per position
        kv_cache.check_extends(positions + (module.d_latent,), positions + (module.d_rope,), module.dtype,
                               getattr(module, "device", None))
    return absorbed
