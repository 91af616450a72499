"""The paged KV cache holds exactly what a dict of contiguous arrays would, reuses freed blocks, and fails cleanly."""

import math

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib import _paged_cache
from attnlib.torch import flash_triton

N_LAYERS, N_KV_HEADS, D_HEAD = 2, 3, 4


def make(namespace, n_blocks=12, block_size=4):
    dtype = np.float64 if namespace is anp else torch.float64
    return namespace.PagedKVCache(n_blocks, N_KV_HEADS, D_HEAD, block_size=block_size, n_layers=N_LAYERS, dtype=dtype)


def new_positions(rng, n_new, namespace):
    k = rng.standard_normal((N_LAYERS, N_KV_HEADS, n_new, D_HEAD))  # (layers, H, n_new, d)
    v = rng.standard_normal((N_LAYERS, N_KV_HEADS, n_new, D_HEAD))
    return (k, v) if namespace is anp else (torch.from_numpy(k), torch.from_numpy(v))


def as_numpy(x):
    return x.numpy() if isinstance(x, torch.Tensor) else x


def state(cache):
    """Everything the cache remembers, copied: bookkeeping and the pools' contents."""
    sequences = cache.sequences
    return ({seq: cache.block_table(seq) for seq in sequences}, {seq: cache.length(seq) for seq in sequences},
            cache.n_free_blocks, as_numpy(cache.key_pool).copy(), as_numpy(cache.value_pool).copy())


def assert_same_state(before, after):
    assert before[:3] == after[:3]
    np.testing.assert_array_equal(before[3], after[3])
    np.testing.assert_array_equal(before[4], after[4])


def check_against(cache, reference):
    """The cache holds what the dict of contiguous arrays holds, and its blocks are accounted for exactly once."""
    assert set(cache.sequences) == set(reference)
    owned = []
    for seq, (keys, values) in reference.items():
        length = keys.shape[-2]
        assert cache.length(seq) == length
        assert len(cache.block_table(seq)) == math.ceil(length / cache.block_size)
        owned += cache.block_table(seq)
        gathered_keys, gathered_values = cache.gather(seq)
        assert tuple(gathered_keys.shape) == (N_LAYERS, N_KV_HEADS, length, D_HEAD)
        np.testing.assert_array_equal(as_numpy(gathered_keys), keys)
        np.testing.assert_array_equal(as_numpy(gathered_values), values)
    assert len(owned) == len(set(owned)), "a block belongs to two sequences"
    assert len(owned) + cache.n_free_blocks == cache.n_blocks, "a block is lost or counted twice"
    stored = sum(keys.shape[-2] for keys, _ in reference.values())
    expected = 1.0 if not owned else stored / (len(owned) * cache.block_size)
    assert cache.utilisation == pytest.approx(expected)


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_join_append_free_workloads_equal_a_dict_of_contiguous_arrays(namespace, seed):
    rng = np.random.default_rng(seed)
    cache = make(namespace)
    empty = np.zeros((N_LAYERS, N_KV_HEADS, 0, D_HEAD))
    reference = {}
    refusals = 0
    for _ in range(150):
        action = rng.choice(["join", "append", "append", "append", "free"])
        if action == "join" or not reference:
            reference[cache.add_sequence()] = (empty, empty)
        elif action == "append":
            seq = int(rng.choice(list(reference)))
            n_new = int(rng.integers(1, 10))
            k, v = new_positions(rng, n_new, namespace)
            if cache.blocks_needed(seq, n_new) > cache.n_free_blocks:
                before = state(cache)
                with pytest.raises(namespace.OutOfBlocksError, match=f"sequence {seq} needs"):
                    cache.append(seq, k, v)
                assert_same_state(before, state(cache))
                refusals += 1
            else:
                cache.append(seq, k, v)
                old_keys, old_values = reference[seq]
                reference[seq] = (np.concatenate([old_keys, as_numpy(k)], axis=-2),
                                  np.concatenate([old_values, as_numpy(v)], axis=-2))
        else:
            seq = int(rng.choice(list(reference)))
            cache.free(seq)
            del reference[seq]
        check_against(cache, reference)
    assert refusals > 0, "the workload never filled the pool: it tests less than it claims"


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_out_of_blocks_changes_nothing(namespace):
    rng = np.random.default_rng(3)
    cache = make(namespace, n_blocks=3, block_size=4)
    first, second = cache.add_sequence(), cache.add_sequence()
    cache.append(first, *new_positions(rng, 6, namespace))  # blocks 0 and 1, the second half full
    cache.append(second, *new_positions(rng, 1, namespace))  # block 2
    before = state(cache)
    with pytest.raises(namespace.OutOfBlocksError, match=r"needs 1 more block.*only 0 of 3 blocks are free"):
        cache.append(first, *new_positions(rng, 3, namespace))  # 6 + 3 = 9 positions need a third block
    assert_same_state(before, state(cache))
    cache.append(first, *new_positions(rng, 2, namespace))  # what still fits in its last block is accepted
    assert cache.length(first) == 8 and cache.n_free_blocks == 0
    for error in (anp.OutOfBlocksError, at.OutOfBlocksError):  # one base class catches both namespaces' errors
        assert issubclass(error, _paged_cache.OutOfBlocksError) and issubclass(error, MemoryError)


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_freed_blocks_are_reused(namespace):
    rng = np.random.default_rng(4)
    cache = make(namespace, n_blocks=4, block_size=4)
    # Twenty sequences of 7 positions (2 blocks each) pass through a pool of 4 blocks, two at a time.
    live, issued = [], []
    for _ in range(20):
        seq = cache.add_sequence()
        issued.append(seq)
        k, v = new_positions(rng, 7, namespace)
        cache.append(seq, k, v)
        np.testing.assert_array_equal(as_numpy(cache.gather(seq)[0]), as_numpy(k))
        live.append(seq)
        if len(live) == 2:
            freed = cache.block_table(live[0])
            cache.free(live.pop(0))
            reuser = cache.add_sequence()
            issued.append(reuser)
            cache.append(reuser, *new_positions(rng, 5, namespace))
            assert cache.block_table(reuser) == freed  # the blocks just given back, in the same order
            cache.free(reuser)
    assert len(set(cache.sequences)) == 1 and cache.n_free_blocks == 2
    with pytest.raises(KeyError, match="not a sequence of this cache"):
        cache.gather(0)  # freed long ago; ids are never reused
    assert cache.add_sequence() not in issued and len(set(issued)) == len(issued)


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_utilisation_counts_the_empty_end_of_the_last_blocks(namespace):
    rng = np.random.default_rng(5)
    cache = make(namespace, n_blocks=8, block_size=4)
    assert cache.utilisation == 1.0  # nothing allocated, nothing wasted
    first = cache.add_sequence()
    cache.append(first, *new_positions(rng, 5, namespace))
    assert cache.utilisation == 5 / 8
    second = cache.add_sequence()
    cache.append(second, *new_positions(rng, 4, namespace))
    assert cache.utilisation == 9 / 12
    assert cache.stored_positions == 9
    assert cache.nbytes == 2 * N_LAYERS * 8 * N_KV_HEADS * 4 * D_HEAD * 8  # both pools, all blocks, float64


def test_twins_place_the_same_values_in_the_same_blocks():
    rng = np.random.default_rng(6)
    caches = make(anp), make(at)
    for n_new in (3, 5, 9, 1):
        k, v = new_positions(rng, n_new, anp)
        for cache in caches:
            seq = cache.sequences[-1] if n_new != 3 and cache.sequences else cache.add_sequence()
            cache.append(seq, *((k, v) if cache is caches[0] else (torch.from_numpy(k), torch.from_numpy(v))))
    assert caches[0].block_table(0) == caches[1].block_table(0)
    np.testing.assert_array_equal(caches[0].key_pool, caches[1].key_pool.numpy())
    np.testing.assert_array_equal(caches[0].value_pool, caches[1].value_pool.numpy())


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_bad_inputs_are_refused_by_name_and_change_nothing(namespace):
    rng = np.random.default_rng(7)
    cache = make(namespace)
    seq = cache.add_sequence()
    cache.append(seq, *new_positions(rng, 2, namespace))
    before = state(cache)
    k, v = new_positions(rng, 3, namespace)
    expected = r"k must have shape \(n_layers, n_kv_heads, n_new, d_head\) = \(2, 3, n_new, 4\)"
    with pytest.raises(ValueError, match=expected):
        cache.append(seq, k[:1], v[:1])
    with pytest.raises(ValueError, match="v must have shape"):
        cache.append(seq, k, v[..., :2])
    with pytest.raises(ValueError, match="k and v must have the same shape"):
        cache.append(seq, k, v[..., :2, :])
    with pytest.raises(TypeError, match="k has dtype .*float32.* the cache holds .*float64"):
        cache.append(seq, k.astype(np.float32) if namespace is anp else k.float(), v)
    bad = k.copy() if namespace is anp else k.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="k contains NaN"):
        cache.append(seq, bad, v)
    with pytest.raises(TypeError, match="attnlib"):
        cache.append(seq, *new_positions(rng, 3, at if namespace is anp else anp))
    with pytest.raises(KeyError, match="seq 5 is not a sequence of this cache"):
        cache.append(5, k, v)
    with pytest.raises(KeyError, match="is not a sequence"):
        cache.append(True, k, v)
    with pytest.raises(ValueError, match="n_new must be a non-negative integer"):
        cache.blocks_needed(seq, -1)
    assert_same_state(before, state(cache))
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        namespace.PagedKVCache(4, 2, 8, block_size=0)
    with pytest.raises(TypeError, match="n_blocks must be a positive integer"):
        namespace.PagedKVCache(4.0, 2, 8)
    with pytest.raises(TypeError, match="dtype must be a"):
        namespace.PagedKVCache(4, 2, 8, dtype=np.int64 if namespace is anp else torch.int64)
    cache.free(seq)
    with pytest.raises(KeyError, match="is not a sequence"):
        cache.free(seq)


# ---------------------------------------------------------------------------------------------------------------
# Attention read straight from the paged cache
# ---------------------------------------------------------------------------------------------------------------


def filled_cache(namespace, lengths, *, block_size=4, d_head=D_HEAD, seed=8, dtype=None, device=None):
    """A cache holding sequences of the given lengths, appended in pieces so that their blocks interleave."""
    rng = np.random.default_rng(seed)
    if dtype is None:
        dtype = np.float64 if namespace is anp else torch.float64
    extra = {} if namespace is anp else {"device": device}
    cache = namespace.PagedKVCache(40, N_KV_HEADS, d_head, block_size=block_size, n_layers=N_LAYERS, dtype=dtype,
                                   **extra)
    seqs = [cache.add_sequence() for _ in lengths]
    remaining = dict(zip(seqs, lengths, strict=True))
    while any(remaining.values()):
        for seq in seqs:
            n_new = min(remaining[seq], int(rng.integers(1, 6)))
            if n_new:
                shape = (N_LAYERS, N_KV_HEADS, n_new, d_head)
                k, v = rng.standard_normal(shape), rng.standard_normal(shape)
                if namespace is at:
                    k, v = torch.from_numpy(k).to(dtype=dtype, device=device), torch.from_numpy(v).to(dtype=dtype,
                                                                                                   device=device)
                cache.append(seq, k, v)
                remaining[seq] -= n_new
    return cache, seqs


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
@pytest.mark.parametrize("n_q", [1, 3])
def test_paged_attention_equals_attention_over_each_gathered_sequence(namespace, n_q):
    cache, seqs = filled_cache(namespace, [13, 3, 22])  # 4, 1 and 6 blocks of 4, interleaved in the pool
    rng = np.random.default_rng(9)
    q = rng.standard_normal((3, N_KV_HEADS, n_q, D_HEAD))
    q_in = q if namespace is anp else torch.from_numpy(q)
    for layer in range(N_LAYERS):
        expected = []
        for seq in seqs:
            keys, values = (as_numpy(x) for x in cache.gather(seq))
            expected.append(anp.attention(q[len(expected)], keys[layer], values[layer], causal=True)[0])
        for n_splits in (1, 2, 3, 7):  # 7 > the blocks of every sequence: empty chunks add nothing
            extra = {} if namespace is anp else {"backend": "torch"}
            output = namespace.paged_attention(q_in, cache, seqs, layer=layer, n_splits=n_splits, **extra)
            np.testing.assert_allclose(as_numpy(output), np.stack(expected), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("n_q", [1, 3])
def test_paged_decode_kernel_reads_the_blocks_where_they_lie(n_q):
    if not flash_triton.available():
        pytest.skip("triton is not importable here")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cache, seqs = filled_cache(at, [20, 3, 37], block_size=16, d_head=16, dtype=torch.float32, device=device)
    q = torch.randn(3, N_KV_HEADS, n_q, 16, generator=torch.Generator().manual_seed(10)).to(device)
    for n_splits in (1, 2, 3):
        output, lse = at.paged_attention(q, cache, seqs, layer=1, n_splits=n_splits, return_lse=True,
                                         backend="triton")
        expected, expected_lse = at.paged_attention(q.double(), _as_double(cache), seqs, layer=1, return_lse=True,
                                                    backend="torch")
        torch.testing.assert_close(output.double(), expected, rtol=0, atol=2e-6)
        torch.testing.assert_close(lse.double(), expected_lse, rtol=0, atol=2e-6)


def _as_double(cache):
    """The same cache in float64 (same block tables), as a reference for the float32 kernel."""
    twin = at.PagedKVCache(cache.n_blocks, cache.n_kv_heads, cache.d_head, block_size=cache.block_size,
                           n_layers=cache.n_layers, dtype=torch.float64, device=cache.device)
    twin.key_pool, twin.value_pool = cache.key_pool.double(), cache.value_pool.double()
    twin.restore(cache.snapshot())
    return twin


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_paged_attention_refuses_bad_calls_by_name(namespace):
    cache, seqs = filled_cache(namespace, [5, 2])
    q = np.zeros((2, N_KV_HEADS, 1, D_HEAD))
    q = q if namespace is anp else torch.from_numpy(q)
    attend = namespace.paged_attention
    with pytest.raises(ValueError, match=r"q must have shape \(len\(seqs\), n_kv_heads, n_q, d_head\) = \(2, 3"):
        attend(q[:1], cache, seqs)
    with pytest.raises(TypeError, match="q has dtype"):
        attend(q.astype(np.float32) if namespace is anp else q.float(), cache, seqs)
    with pytest.raises(KeyError, match="seq 9 is not a sequence"):
        attend(q, cache, [seqs[0], 9])
    with pytest.raises(TypeError, match="seqs must be a non-empty list"):
        attend(q, cache, seqs[0])
    with pytest.raises(ValueError, match="layer must be below n_layers = 2"):
        attend(q, cache, seqs, layer=2)
    with pytest.raises(ValueError, match="n_splits must be a positive integer"):
        attend(q, cache, seqs, n_splits=0)
    with pytest.raises(TypeError, match="cache must be a"):
        attend(q, (cache.key_pool, cache.value_pool), seqs)
    three = np.zeros((2, N_KV_HEADS, 3, D_HEAD))
    with pytest.raises(ValueError, match=r"hold fewer: \{1: 2\}"):
        attend(three if namespace is anp else torch.from_numpy(three), cache, seqs)
    if namespace is at and flash_triton.available():
        small_blocks, (seq,) = filled_cache(at, [5], d_head=16, dtype=torch.float32)  # blocks of 4 positions
        with pytest.raises(ValueError, match="block_size must be a power of two >= 16"):
            attend(torch.zeros(1, N_KV_HEADS, 1, 16), small_blocks, [seq], backend="triton")
