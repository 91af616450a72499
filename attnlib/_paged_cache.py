"""The paged KV cache, written once for both namespaces (they differ only in how arrays are made and joined).

A contiguous KV cache (``attnlib._kv_cache``) gives every sequence one array that grows with every token. A server
that runs many sequences of unknown length at once must then either reserve each sequence's maximum length up
front -- memory that mostly sits empty -- or copy arrays as they grow. The paged cache borrows the operating
system's answer to the same problem, virtual memory:

* the memory is one preallocated *pool* per layer, cut into ``n_blocks`` fixed-size *blocks* of ``block_size``
  positions each, shaped (n_blocks, n_kv_heads, block_size, d_head) for keys and the same for values;
* a *free list* holds the blocks nobody uses;
* each sequence has a *block table*: its logical block i (positions i·block_size .. (i+1)·block_size - 1) lives
  in physical block ``table[i]``, anywhere in the pool. A sequence takes a new block only when its last one is
  full, so at most ``block_size - 1`` positions per sequence are allocated and empty;
* freeing a sequence returns its blocks to the free list, and the next sequence reuses them.

One block table serves every layer: block ``b`` of a sequence holds the same positions in each layer's pool.
Updates are all or nothing: an ``append`` that does not fit raises :class:`OutOfBlocksError` before it takes a
block or writes a value, so a refused call leaves the cache exactly as it was.
"""

from __future__ import annotations

import math

from . import _checks


class OutOfBlocksError(MemoryError):
    """The pool has too few free blocks for what was asked; nothing was allocated or written.

    Each namespace raises its own subclass (``attnlib.numpy.OutOfBlocksError``, ``attnlib.torch.OutOfBlocksError``);
    catching this base class catches both.
    """


class PagedKVCache:
    """Keys and values of many sequences in fixed-size blocks of one preallocated pool per layer.

    ``key_pool`` and ``value_pool`` are (n_layers, n_blocks, n_kv_heads, block_size, d_head): ``key_pool[i]`` is
    layer i's pool. ``add_sequence()`` returns a new sequence id; ``append(seq, k, v)`` stores new positions of
    every layer, ``gather(seq)`` returns them in order, ``free(seq)`` gives the sequence's blocks back.
    """

    # Overridden per namespace.
    out_of_blocks = OutOfBlocksError  # the error a full pool raises

    @staticmethod
    def _zeros(shape, dtype, device):
        raise NotImplementedError

    def _index(self, blocks: list[int]):  # a block table as an integer array that indexes the pools
        raise NotImplementedError

    @staticmethod
    def _take(pools, index):  # pools (..., n_blocks, H, block_size, d) -> the indexed blocks, in order
        raise NotImplementedError

    @staticmethod
    def _as_array(name: str, x):
        raise NotImplementedError

    @staticmethod
    def _nbytes(x) -> int:
        raise NotImplementedError

    @staticmethod
    def _dtype(dtype):  # the namespace's floating dtype for a dtype argument
        raise NotImplementedError

    def _setup(self, n_blocks, n_kv_heads, d_head, block_size, n_layers, dtype, device):
        self.n_blocks = _checks.positive_int("n_blocks", n_blocks)
        self.n_kv_heads = _checks.positive_int("n_kv_heads", n_kv_heads)
        self.d_head = _checks.positive_int("d_head", d_head)
        self.block_size = _checks.positive_int("block_size", block_size)
        self.n_layers = _checks.positive_int("n_layers", n_layers)
        self.dtype = self._dtype(dtype)
        shape = (self.n_layers, self.n_blocks, self.n_kv_heads, self.block_size, self.d_head)
        self.key_pool = self._zeros(shape, self.dtype, device)
        self.value_pool = self._zeros(shape, self.dtype, device)
        self.device = getattr(self.key_pool, "device", None)
        # Handed out from the end: block 0 first. Freed blocks go back on the end and are the next to be reused.
        self._free = list(reversed(range(self.n_blocks)))
        self._tables: dict[int, list[int]] = {}
        self._lengths: dict[int, int] = {}
        self._indices: dict[int, tuple] = {}  # seq -> (table length, the table as an index array)
        self._next_id = 0

    # ----------------------------------------------------------------------------------------------------------
    # What the cache holds
    # ----------------------------------------------------------------------------------------------------------

    @property
    def sequences(self) -> tuple[int, ...]:
        """The ids of the sequences held, in the order they were added."""
        return tuple(self._tables)

    def length(self, seq: int) -> int:
        """How many positions of sequence ``seq`` are stored."""
        return self._lengths[self._known(seq)]

    def block_table(self, seq: int) -> tuple[int, ...]:
        """The physical block of each logical block of ``seq``, in order (a copy)."""
        return tuple(self._tables[self._known(seq)])

    @property
    def n_free_blocks(self) -> int:
        """Blocks on the free list, ready for any sequence."""
        return len(self._free)

    @property
    def stored_positions(self) -> int:
        """Positions stored over all sequences (per layer)."""
        return sum(self._lengths.values())

    @property
    def utilisation(self) -> float:
        """Stored positions / the positions the allocated blocks can hold; 1.0 when no block is allocated.

        Only each sequence's last block can be partly empty, so this stays above
        1 - (block_size - 1) · n_sequences / allocated positions.
        """
        allocated = (self.n_blocks - len(self._free)) * self.block_size
        return 1.0 if allocated == 0 else self.stored_positions / allocated

    @property
    def nbytes(self) -> int:
        """Bytes of the two preallocated pools (all of it, used or not)."""
        return self._nbytes(self.key_pool) + self._nbytes(self.value_pool)

    def _known(self, seq):
        if isinstance(seq, bool) or not isinstance(seq, int) or seq not in self._tables:
            raise KeyError(f"seq {seq!r} is not a sequence of this cache; it holds {list(self._tables)}")
        return seq

    # ----------------------------------------------------------------------------------------------------------
    # Changing it
    # ----------------------------------------------------------------------------------------------------------

    def add_sequence(self) -> int:
        """Start a new, empty sequence and return its id (ids are never reused). It takes no block yet."""
        seq, self._next_id = self._next_id, self._next_id + 1
        self._tables[seq] = []
        self._lengths[seq] = 0
        return seq

    def blocks_needed(self, seq: int, n_new: int) -> int:
        """How many more blocks ``seq`` needs to store ``n_new`` more positions (0 while its last block has room)."""
        n_new = _checks.non_negative_int("n_new", n_new)
        seq = self._known(seq)
        return math.ceil((self._lengths[seq] + n_new) / self.block_size) - len(self._tables[seq])

    def append(self, seq: int, k, v) -> None:
        """Store the keys and values of new positions of ``seq`` for every layer, after the ones it holds.

        k and v are (n_layers, n_kv_heads, n_new, d_head), in the cache's dtype (and device). Everything is
        checked, and the blocks counted, before any block is taken or any value written: a refused call --
        including :class:`OutOfBlocksError` -- leaves the cache as it was.
        """
        seq = self._known(seq)
        k, v = self._as_array("k", k), self._as_array("v", v)
        expected = f"(n_layers, n_kv_heads, n_new, d_head) = ({self.n_layers}, {self.n_kv_heads}, n_new, {self.d_head})"
        for name, x in (("k", k), ("v", v)):
            _checks.floating_array(name, x, min_ndim=4)
            shape = tuple(x.shape)
            if len(shape) != 4 or shape[:2] != (self.n_layers, self.n_kv_heads) or shape[3] != self.d_head:
                raise ValueError(f"{name} must have shape {expected}, got {shape}")
            if x.dtype != self.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but the cache holds {self.dtype}: convert it first")
            if self.device is not None and x.device != self.device:
                raise ValueError(f"{name} is on {x.device} but the cache is on {self.device}")
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
        start = self._reserve(seq, k.shape[-2])
        self._write(seq, start, k, v, slice(None))

    def gather(self, seq: int):
        """(keys, values) of every position of ``seq`` in order, each (n_layers, n_kv_heads, length, d_head).

        Read block by block through the block table: the blocks can lie anywhere in the pool.
        """
        return self._gather(self._known(seq), slice(None))

    def free(self, seq: int) -> None:
        """Forget ``seq`` and put its blocks back on the free list, where the next allocation finds them first."""
        seq = self._known(seq)
        self._free.extend(reversed(self._tables.pop(seq)))
        del self._lengths[seq]
        self._indices.pop(seq, None)

    # ----------------------------------------------------------------------------------------------------------
    # The steps (on checked arguments); a model writes and reads one layer at a time
    # ----------------------------------------------------------------------------------------------------------

    def _reserve(self, seq: int, n_new: int) -> int:
        """Take the blocks ``n_new`` more positions need and count them as stored; return where they start.

        Raises OutOfBlocksError, taking nothing, when the free list is too short.
        """
        needed = self.blocks_needed(seq, n_new)
        if needed > len(self._free):
            raise self.out_of_blocks(
                f"sequence {seq} needs {needed} more block(s) of {self.block_size} positions to store {n_new} new "
                f"position(s) after its {self._lengths[seq]}, but only {len(self._free)} of {self.n_blocks} blocks "
                "are free: free a finished sequence or make the pool larger (nothing was changed)"
            )
        for _ in range(needed):
            self._tables[seq].append(self._free.pop())
        start = self._lengths[seq]
        self._lengths[seq] = start + n_new
        return start

    def _write(self, seq: int, start: int, k, v, layers) -> None:
        """Write positions start .. start + n - 1 of ``seq`` (already reserved) into the pools of ``layers``.

        k, v are (..., n_kv_heads, n, d_head), ``...`` matching ``key_pool[layers]``'s leading dims. The positions
        are cut where they cross from one block into the next.
        """
        table, n = self._tables[seq], k.shape[-2]
        written = 0
        while written < n:
            position = start + written
            block, offset = table[position // self.block_size], position % self.block_size
            count = min(self.block_size - offset, n - written)  # up to the end of this block
            self.key_pool[layers, block, :, offset:offset + count, :] = k[..., written:written + count, :]
            self.value_pool[layers, block, :, offset:offset + count, :] = v[..., written:written + count, :]
            written += count

    def _gather(self, seq: int, layers):
        """Keys and values of ``seq`` from the pools of ``layers``: (..., n_kv_heads, length, d_head).

        One indexed read per pool picks the sequence's blocks, in block-table order, wherever they lie.
        """
        index, length = self._table_index(seq), self._lengths[seq]
        return self._read_blocks(self.key_pool, layers, index, length), self._read_blocks(
            self.value_pool, layers, index, length)

    def _table_index(self, seq: int):
        """The block table of ``seq`` as an index array, made again only when the table has grown.

        A table gains a block once every block_size positions, while every layer reads it, for keys and for values,
        at every step: building the index once per table saves most of the per-step cost of a paged read.
        """
        table = self._tables[seq]
        cached = self._indices.get(seq)
        if cached is None or cached[0] != len(table):
            cached = self._indices[seq] = (len(table), self._index(table))
        return cached[1]

    def _read_blocks(self, pool, layers, index, length):
        """The first ``length`` positions of the blocks that ``index`` lists (see ``_index``), in that order."""
        blocks = self._take(pool[layers], index)  # (..., blocks, H, block_size, d): in the index's order
        blocks = blocks.swapaxes(-4, -3)  # (..., H, blocks, block_size, d)
        shape = tuple(blocks.shape)
        positions = blocks.reshape(shape[:-3] + (shape[-3] * shape[-2], shape[-1]))  # (..., H, blocks·size, d)
        return positions[..., :length, :]  # the last block may be partly empty

    def snapshot(self):
        """The bookkeeping (block tables, lengths, free list) as it is now; ``restore`` puts it back.

        The pools need no copy as long as only appends happen between the two: a write only fills positions past
        a sequence's stored length, which the restored length makes invisible again. (After a ``free`` the freed
        blocks may be rewritten by others, so a snapshot taken before it cannot bring that sequence back.)
        """
        return ({seq: list(table) for seq, table in self._tables.items()}, dict(self._lengths), list(self._free),
                self._next_id)

    def restore(self, snapshot) -> None:
        """Put the bookkeeping back as ``snapshot`` saw it."""
        tables, lengths, free, next_id = snapshot
        self._tables = {seq: list(table) for seq, table in tables.items()}
        self._lengths, self._free, self._next_id = dict(lengths), list(free), next_id
        self._indices = {}


def attention_call(q, cache, seqs, layer, n_splits, scale, *, as_array, cache_class):
    """Check a ``paged_attention`` call (both twins); return q, the sequence ids, layer, n_splits and the scale."""
    if not isinstance(cache, cache_class):
        raise TypeError(f"cache must be a {cache_class.__module__}.PagedKVCache, got {type(cache).__name__}")
    if isinstance(seqs, (int, str)) or not hasattr(seqs, "__len__") or len(seqs) == 0:
        raise TypeError(f"seqs must be a non-empty list of sequence ids of the cache, got {seqs!r}")
    lengths = [cache.length(seq) for seq in seqs]  # raises KeyError, by id, for an unknown sequence
    layer = _checks.non_negative_int("layer", layer)
    if layer >= cache.n_layers:
        raise ValueError(f"layer must be below n_layers = {cache.n_layers} of the cache, got {layer}")
    n_splits = _checks.positive_int("n_splits", n_splits)
    q = _checks.floating_array("q", as_array("q", q), min_ndim=4)
    expected = (len(seqs), cache.n_kv_heads)
    if q.ndim != 4 or tuple(q.shape[:2]) != expected or q.shape[-1] != cache.d_head:
        raise ValueError(f"q must have shape (len(seqs), n_kv_heads, n_q, d_head) = ({len(seqs)}, "
                         f"{cache.n_kv_heads}, n_q, {cache.d_head}), got {tuple(q.shape)}")
    if q.dtype != cache.dtype:
        raise TypeError(f"q has dtype {q.dtype} but the cache holds {cache.dtype}: convert it first")
    if getattr(cache, "device", None) is not None and q.device != cache.device:
        raise ValueError(f"q is on {q.device} but the cache is on {cache.device}")
    n_q = q.shape[-2]
    short = {seq: length for seq, length in zip(seqs, lengths, strict=True) if length < n_q}
    if short:
        raise ValueError(f"the {n_q} queries of a sequence are its last {n_q} cached positions, but these sequences "
                         f"hold fewer: {short} (sequence: length)")
    scale = _checks.scale(scale)
    return q, list(seqs), layer, n_splits, 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
