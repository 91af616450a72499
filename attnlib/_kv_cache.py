"""The KV cache, written once for both backends (they differ only in how a buffer is allocated).

During decoding, the keys and values of past positions never change, so each layer keeps them and the next
step computes k and v for the one new token only, instead of re-projecting the whole sequence.

Storage: each layer keeps one preallocated buffer for keys and one for values, with room (``capacity``) for more
positions than it holds. A step writes its new positions in place, after the held ones; ``keys`` and ``values`` are
views of the filled part. Joining arrays at every step would copy the whole cache once per token -- O(N^2) bytes
moved to generate N tokens; here a buffer is copied only when it is full, into one twice as large, so the copies
add up to at most 2N positions (amortised O(1) per token), as a static preallocated cache would, without having to
know the final length.

Updates are all-or-nothing. ``LayerCache.append`` checks the new keys and values together before it stores
either; a model checks everything it can before its first layer appends, and if a layer still fails part-way it
puts every layer back as it was (``KVCache.snapshot``/``restore``), so that the next valid call sees a cache that
never heard of the failed one. A snapshot copies no data: a write only ever fills positions past the held ones, and
a full buffer is replaced, not overwritten, so the buffers' identities and the counters (where the held positions
start and end, how many were seen) are enough to put a cache back.

A *rolling* cache (``window=w``) serves sliding-window attention: a query never sees keys more than w - 1 positions
back, so each layer keeps only the last w positions and its memory stops growing. Keys and values are stored as
the layer made them -- RoPE keys already turned at their own position -- so nothing cached depends on where it
sits in the buffer; ``position`` counts every position ever appended (the absolute position of the next token),
``length`` the ones still held. When its buffer is full, the last w positions move to the front of a new buffer of
about 2w positions, once every ~w steps.
"""

from __future__ import annotations

from . import _checks

MIN_CAPACITY = 16  # positions a buffer has room for at least: the first few tokens do not each reallocate


class LayerCache:
    """Keys and values of one attention layer, shaped (..., n_kv_heads, n_cached, d_head), grown along n_cached.

    ``window=None`` keeps every position; ``window=w`` keeps only the last w (a rolling cache). ``keys`` and
    ``values`` are views of the held positions of preallocated buffers (None before the first append);
    ``capacity`` is how many positions the buffers can hold before they are replaced by larger ones.
    """

    @staticmethod
    def _empty(like, shape):  # overridden per backend: an uninitialised buffer of like's dtype (and device)
        raise NotImplementedError

    @staticmethod
    def _fresh_buffer_needed(buffer, k, v) -> bool:  # overridden per backend (autograd must not see in-place writes)
        return False

    @staticmethod
    def _nbytes(x) -> int:
        raise NotImplementedError

    @staticmethod
    def _as_array(name: str, x):  # overridden per backend: the namespace's own array type
        raise NotImplementedError

    def __init__(self, *, window: int | None = None):
        self.window = _checks.window(window, causal=True)
        self._key_buffer = None
        self._value_buffer = None
        self._start = 0  # the held positions are buffer[..., start:end, :]
        self._end = 0
        self._seen = 0  # positions appended so far, including those a rolling cache has dropped

    @property
    def keys(self):
        """The held keys, (..., n_kv_heads, length, d_head): a view of the buffer; None while nothing is held."""
        return None if self._end == self._start else self._key_buffer[..., self._start:self._end, :]

    @property
    def values(self):
        """The held values, (..., n_kv_heads, length, d_v): a view of the buffer; None while nothing is held."""
        return None if self._end == self._start else self._value_buffer[..., self._start:self._end, :]

    @property
    def length(self) -> int:
        """The number of positions held now (at most ``window`` for a rolling cache)."""
        return self._end - self._start

    @property
    def position(self) -> int:
        """The number of positions appended so far: the absolute position of the next token."""
        return self._seen

    @property
    def capacity(self) -> int:
        """How many positions the buffers hold before they must be replaced (0 before the first append)."""
        return 0 if self._key_buffer is None else self._key_buffer.shape[-2]

    def check_extends(self, k_shape, v_shape, dtype, device=None) -> None:
        """Raise unless new keys/values of these shapes and dtype can be appended to what is cached."""
        held = None if self._end == self._start else (self.keys, self.values)
        _checks.extends_cache(("k", "v"), (k_shape, v_shape), held, dtype, device, held_names=("keys", "values"))

    def append(self, k, v):
        """Add the new positions' k and v; return all keys and values so far (the new ones last).

        Both are checked before either is stored: a refused call leaves the cache as it was.
        """
        k, v = _checks.cache_pair(self._as_array, ("k", "v"), k, v)
        self.check_extends(k.shape, v.shape, k.dtype, getattr(k, "device", None))
        return self._append(k, v)

    def _append(self, k, v):
        """``append`` on arguments that a caller already checked (``check_extends``).

        Returns every key and value this call's queries may need: the held ones, then the new ones (views of the
        buffers, valid until the next append). A rolling cache then forgets all but the last ``window`` positions.
        """
        n = k.shape[-2]
        if (self._key_buffer is None or self._end + n > self.capacity
                or self._fresh_buffer_needed(self._key_buffer, k, v)):
            self._reallocate(k, v, n)
        end = self._end + n
        self._key_buffer[..., self._end:end, :] = k  # in place, after the held positions
        self._value_buffer[..., self._end:end, :] = v
        keys = self._key_buffer[..., self._start:end, :]  # (..., n_kv_heads, held + n, d_head)
        values = self._value_buffer[..., self._start:end, :]
        self._end, self._seen = end, self._seen + n
        if self.window is not None and self.length > self.window:
            self._start = self._end - self.window
            if self.capacity > 2 * max(self.window + 1, MIN_CAPACITY):  # a long prompt left a large buffer
                self._reallocate(k, v, 0)  # keep only the window's worth (the views returned stay valid)
        return keys, values

    def _reallocate(self, k, v, n: int) -> None:
        """Replace the buffers by new ones with room for the held positions + n and as many again (geometric
        growth); the held positions move to the front. The old buffers are left untouched (a snapshot may hold
        them, and so may views returned earlier)."""
        held = self.length
        capacity = max(2 * (held + n), MIN_CAPACITY)
        if self._fresh_buffer_needed(self._key_buffer, k, v):
            capacity = held + n  # a new buffer per call anyway: no room to spare
        buffers = []
        for old, new in ((self._key_buffer, k), (self._value_buffer, v)):
            buffer = self._empty(new, tuple(new.shape[:-2]) + (capacity, new.shape[-1]))  # (..., H_kv, capacity, d)
            if held:
                buffer[..., :held, :] = old[..., self._start:self._end, :]
            buffers.append(buffer)
        self._key_buffer, self._value_buffer = buffers
        self._start, self._end = 0, held

    @property
    def nbytes(self) -> int:
        """Bytes of the held keys and values (the buffers' spare room is not counted; see ``capacity``)."""
        return 0 if self.length == 0 else self._nbytes(self.keys) + self._nbytes(self.values)


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
        """Bytes of the held keys and values over all layers."""
        return sum(layer.nbytes for layer in self.layers)

    def snapshot(self) -> list:
        """Where every layer stands now: its buffers (not copied) and its counters.

        Appends write only past the held positions and replace a full buffer instead of overwriting it, so these
        are enough to put each layer back exactly; no key or value is copied.
        """
        return [(layer._key_buffer, layer._value_buffer, layer._start, layer._end, layer._seen)
                for layer in self.layers]

    def restore(self, snapshot: list) -> None:
        """Put every layer back as it was when ``snapshot`` was taken (only appends may have happened since)."""
        for layer, state in zip(self.layers, snapshot, strict=True):
            layer._key_buffer, layer._value_buffer, layer._start, layer._end, layer._seen = state
