"""The KV cache, written once for both backends (they differ only in how arrays are joined and sized).

During decoding, the keys and values of past positions never change, so each layer keeps them and the next
step computes k and v for the one new token only, instead of re-projecting the whole sequence.

Updates are all-or-nothing. ``LayerCache.append`` checks the new keys and values together before it stores
either; a model checks everything it can before its first layer appends, and if a layer still fails part-way it
puts every layer back as it was (``KVCache.snapshot``/``restore``), so that the next valid call sees a cache
that never heard of the failed one.

A *rolling* cache (``window=w``) serves sliding-window attention: a query never sees keys more than w - 1 positions
back, so each layer keeps only the last w positions and its memory stops growing. Keys and values are stored as
the layer made them -- RoPE keys already turned at their own position -- so nothing cached depends on where it
sits in the buffer; ``position`` counts every position ever appended (the absolute position of the next token),
``length`` the ones still held.
"""

from __future__ import annotations

from . import _checks


class LayerCache:
    """Keys and values of one attention layer, shaped (..., n_kv_heads, n_cached, d_head), grown along n_cached.

    ``window=None`` keeps every position; ``window=w`` keeps only the last w (a rolling cache).
    """

    @staticmethod
    def _concatenate(old, new):  # overridden per backend
        raise NotImplementedError

    @staticmethod
    def _last(x, n: int):  # overridden per backend: a compact copy of the last n positions (dim -2)
        raise NotImplementedError

    @staticmethod
    def _nbytes(x) -> int:
        raise NotImplementedError

    @staticmethod
    def _as_array(name: str, x):  # overridden per backend: the namespace's own array type
        raise NotImplementedError

    def __init__(self, *, window: int | None = None):
        self.window = _checks.window(window, causal=True)
        self.keys = None
        self.values = None
        self._seen = 0  # positions appended so far, including those a rolling cache has dropped

    @property
    def length(self) -> int:
        """The number of positions held now (at most ``window`` for a rolling cache)."""
        return 0 if self.keys is None else self.keys.shape[-2]

    @property
    def position(self) -> int:
        """The number of positions appended so far: the absolute position of the next token."""
        return self._seen

    def check_extends(self, k_shape, v_shape, dtype, device=None) -> None:
        """Raise unless new keys/values of these shapes and dtype can be appended to what is cached."""
        k_shape, v_shape = tuple(k_shape), tuple(v_shape)
        if len(k_shape) < 2 or k_shape[:-1] != v_shape[:-1]:
            raise ValueError(
                f"k and v must share their batch dimensions and number of positions, got k {k_shape} and v {v_shape}"
            )
        if self.keys is None:
            return
        cached = f"the cached keys {tuple(self.keys.shape)} and values {tuple(self.values.shape)}"
        if k_shape[:-2] != tuple(self.keys.shape[:-2]) or k_shape[-1] != self.keys.shape[-1]:
            raise ValueError(f"k of shape {k_shape} does not extend {cached}")
        if v_shape[-1] != self.values.shape[-1]:
            raise ValueError(f"v of shape {v_shape} does not extend {cached}")
        if dtype != self.keys.dtype:
            raise TypeError(f"new keys and values have dtype {dtype}, the cache holds {self.keys.dtype}")
        if device is not None and device != self.keys.device:
            raise ValueError(f"new keys and values are on {device}, the cache is on {self.keys.device}")

    def append(self, k, v):
        """Add the new positions' k and v; return all keys and values so far (the new ones last).

        Both are checked before either is stored: a refused call leaves the cache as it was.
        """
        k, v = self._as_array("k", k), self._as_array("v", v)
        for name, x in (("k", k), ("v", v)):
            _checks.floating_array(name, x, min_ndim=2)
        _checks.same_dtype(k=k, v=v)
        self.check_extends(k.shape, v.shape, k.dtype, getattr(k, "device", None))
        return self._append(k, v)

    def _append(self, k, v):
        """``append`` on arguments that a caller already checked (``check_extends``).

        Returns every key and value this call's queries may need: the held ones, then the new ones. A rolling
        cache then forgets all but the last ``window`` positions (a new array: nothing older stays referenced).
        """
        if self.keys is None:
            keys, values = k, v
        else:
            keys, values = self._concatenate(self.keys, k), self._concatenate(self.values, v)
        self._seen += k.shape[-2]
        if self.window is not None and keys.shape[-2] > self.window:
            self.keys, self.values = self._last(keys, self.window), self._last(values, self.window)
        else:
            self.keys, self.values = keys, values
        return keys, values

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self._nbytes(self.keys) + self._nbytes(self.values)


class KVCache:
    """One layer cache per layer. Pass ``cache[i]`` to layer i; ``cache.length`` positions are held.

    ``window=w`` makes every layer a rolling cache of the last w positions (what a model with a sliding window
    needs); ``cache.position`` is then the number of positions seen, which can exceed what is held.
    """

    layer_class = LayerCache

    def __init__(self, n_layers: int, *, window: int | None = None):
        n_layers = _checks.positive_int("n_layers", n_layers)
        self.window = _checks.window(window, causal=True)
        self.layers = [self.layer_class(window=self.window) for _ in range(n_layers)]

    def __getitem__(self, index: int):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        """Positions held now (per layer)."""
        return self.layers[0].length

    @property
    def position(self) -> int:
        """Positions seen so far: the absolute position of the next token."""
        return self.layers[0].position

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def snapshot(self) -> list:
        """What every layer holds now. Appending builds new arrays, so keeping the old references is enough."""
        return [(layer.keys, layer.values, layer._seen) for layer in self.layers]

    def restore(self, snapshot: list) -> None:
        """Put every layer back as it was when ``snapshot`` was taken."""
        for layer, (keys, values, seen) in zip(self.layers, snapshot, strict=True):
            layer.keys, layer.values, layer._seen = keys, values, seen
