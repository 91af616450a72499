"""The KV cache, written once for both backends (they differ only in how arrays are joined and sized).

During decoding, the keys and values of past positions never change, so each layer keeps them and the next
step computes k and v for the one new token only, instead of re-projecting the whole sequence.
"""

from __future__ import annotations

from . import _checks


class LayerCache:
    """Keys and values of one attention layer, shaped (..., n_heads, n_cached, d_head), grown along n_cached."""

    @staticmethod
    def _concatenate(old, new):  # overridden per backend
        raise NotImplementedError

    @staticmethod
    def _nbytes(x) -> int:
        raise NotImplementedError

    def __init__(self):
        self.keys = None
        self.values = None

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[-2]

    def append(self, k, v):
        """Add the new positions' k and v; return all keys and values so far (the new ones last)."""
        if self.keys is None:
            self.keys, self.values = k, v
        else:
            if k.shape[:-2] != self.keys.shape[:-2] or k.shape[-1] != self.keys.shape[-1]:
                raise ValueError(
                    f"k of shape {tuple(k.shape)} does not extend the cached keys of shape {tuple(self.keys.shape)}"
                )
            self.keys = self._concatenate(self.keys, k)
            self.values = self._concatenate(self.values, v)
        return self.keys, self.values

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self._nbytes(self.keys) + self._nbytes(self.values)


class KVCache:
    """One layer cache per layer. Pass ``cache[i]`` to layer i; ``cache.length`` positions are cached."""

    layer_class = LayerCache

    def __init__(self, n_layers: int):
        self.layers = [self.layer_class() for _ in range(_checks.positive_int("n_layers", n_layers))]

    def __getitem__(self, index: int):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        return self.layers[0].length

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)
