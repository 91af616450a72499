"""Split-KV decoding: every split count gives attention, the merge is associative, the kernel agrees, bad input fails.

The Triton tests run the decode kernel under Triton's CPU interpreter (conftest.py switches it on when there is no
CUDA device), with few programs per launch: the interpreter runs each program in Python.
"""

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib import occupancy
from attnlib.torch import flash_triton, split_kv_triton

EXACT = dict(rtol=1e-12, atol=1e-13)  # float64 rounding


def random_qkv(batch, n_q, n_k, d_k=8, d_v=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(batch + (n_q, d_k)), rng.standard_normal(batch + (n_k, d_k)),
            rng.standard_normal(batch + (n_k, d_v)))


def reference_lse(q, k, causal):
    """log(sum(exp(scores))) over each query's visible keys, straight from the definition."""
    scores = (q / np.sqrt(q.shape[-1])) @ np.swapaxes(k, -1, -2)  # (..., n_q, n_k)
    if causal:
        scores = np.where(anp.causal_mask(q.shape[-2], k.shape[-2]), scores, -np.inf)
    m = scores.max(axis=-1)
    return m + np.log(np.exp(scores - m[..., None]).sum(axis=-1))


def as_torch(*arrays):
    return [torch.from_numpy(np.ascontiguousarray(x)) for x in arrays]


# ---------------------------------------------------------------------------------------------------------------
# Every split count gives attention
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_q", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_every_split_count_equals_attention_at_float64_rounding(n_q, causal):
    n_k = 13  # prime: every n_splits from 2 to 12 leaves chunks of unequal length
    q, k, v = random_qkv((2, 3), n_q, n_k)
    expected = anp.attention(q, k, v, causal=causal)[0]
    expected_lse = reference_lse(q, k, causal)
    for n_splits in range(1, n_k + 1):
        output, lse = anp.split_kv_attention(q, k, v, n_splits=n_splits, causal=causal, return_lse=True)
        np.testing.assert_allclose(output, expected, **EXACT, err_msg=f"n_splits={n_splits}")
        np.testing.assert_allclose(lse, expected_lse, **EXACT, err_msg=f"n_splits={n_splits}")


@pytest.mark.parametrize("n_q", [1, 3])
@pytest.mark.parametrize("causal", [False, True])
def test_torch_twin_computes_the_same_numbers(n_q, causal):
    n_k = 11
    q, k, v = random_qkv((2,), n_q, n_k, seed=1)
    tq, tk, tv = as_torch(q, k, v)
    for n_splits in range(1, n_k + 1):
        ours, lse = at.split_kv_attention(tq, tk, tv, n_splits=n_splits, causal=causal, return_lse=True,
                                          backend="torch")
        theirs, their_lse = anp.split_kv_attention(q, k, v, n_splits=n_splits, causal=causal, return_lse=True)
        np.testing.assert_allclose(ours.numpy(), theirs, **EXACT)
        np.testing.assert_allclose(lse.numpy(), their_lse, **EXACT)
        for torch_part, numpy_part in zip(at.split_kv_partials(tq, tk, tv, n_splits=n_splits, causal=causal),
                                          anp.split_kv_partials(q, k, v, n_splits=n_splits, causal=causal),
                                          strict=True):
            for name in ("m", "l", "acc"):
                np.testing.assert_allclose(getattr(torch_part, name).numpy(), getattr(numpy_part, name), **EXACT)


def test_batch_dimensions_broadcast_like_attention():
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 4, 1, 8))  # (B, H, 1, d): four query heads ...
    k = rng.standard_normal((2, 1, 9, 8))  # ... sharing one key/value head, by broadcasting
    v = rng.standard_normal((2, 1, 9, 6))
    np.testing.assert_allclose(anp.split_kv_attention(q, k, v, n_splits=4), anp.attention(q, k, v)[0], **EXACT)
    tq, tk, tv = as_torch(q, k, v)
    np.testing.assert_allclose(at.split_kv_attention(tq, tk, tv, n_splits=4, backend="torch").numpy(),
                               anp.attention(q, k, v)[0], **EXACT)


def test_gradients_of_the_torch_backend_equal_attention_gradients():
    q, k, v = (x.requires_grad_() for x in as_torch(*random_qkv((2,), 3, 10, seed=3)))
    grad_output = torch.randn(2, 3, 5, dtype=torch.float64)
    ours = torch.autograd.grad(at.split_kv_attention(q, k, v, n_splits=4, causal=True, backend="torch"),
                               (q, k, v), grad_output)
    theirs = torch.autograd.grad(at.attention(q, k, v, causal=True)[0], (q, k, v), grad_output)
    for name, mine, expected in zip("qkv", ours, theirs, strict=True):
        assert torch.isfinite(mine).all(), name
        torch.testing.assert_close(mine, expected, rtol=1e-12, atol=1e-13, msg=f"d{name}")


def test_float16_is_computed_in_float32_and_returned_as_float16():
    q, k, v = random_qkv((2,), 1, 40, d_k=16, d_v=16, seed=4)
    output = anp.split_kv_attention(*(x.astype(np.float16) for x in (q, k, v)), n_splits=3)
    assert output.dtype == np.float16
    np.testing.assert_allclose(output, anp.attention(q, k, v)[0], atol=3e-3)
    torch_output = at.split_kv_attention(*(x.half() for x in as_torch(q, k, v)), n_splits=3, backend="torch")
    assert torch_output.dtype == torch.float16
    np.testing.assert_allclose(torch_output.double().numpy(), output.astype(np.float64), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# Chunks hidden by causal masking; the merge
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_a_chunk_hidden_from_a_query_adds_nothing_and_makes_no_nan(namespace):
    # n_q = n_k = 4, one key per chunk, causal: query 0 sees chunk 0 only, query 3 sees all four.
    q, k, v = random_qkv((), 4, 4, seed=5)
    arrays = (q, k, v) if namespace is anp else as_torch(q, k, v)
    parts = namespace.split_kv_partials(*arrays, n_splits=4, causal=True)
    for chunk, part in enumerate(parts):
        m, l, acc = (np.asarray(x) for x in (part.m, part.l, part.acc))
        hidden = np.arange(4) < chunk  # queries before the chunk's key cannot see it
        assert np.isneginf(m[hidden]).all() and (l[hidden] == 0).all() and (acc[hidden] == 0).all()
        assert np.isfinite(m[~hidden]).all() and (l[~hidden] == 1).all()
        assert not np.isnan(np.asarray(part.output())).any()
        assert np.isneginf(np.asarray(part.lse())[hidden]).all()
    output = namespace.split_kv_attention(*arrays, n_splits=4, causal=True)
    np.testing.assert_allclose(np.asarray(output), anp.attention(q, k, v, causal=True)[0], **EXACT)


def merged(parts, merge, order, grouping):
    parts = [parts[i] for i in order]
    if grouping == "left":
        total = parts[0]
        for part in parts[1:]:
            total = merge(total, part)
        return total
    if grouping == "right":
        total = parts[-1]
        for part in reversed(parts[:-1]):
            total = merge(part, total)
        return total
    while len(parts) > 1:  # "tree": neighbours in pairs, as a reduction on a GPU would
        parts = [merge(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
    return parts[0]


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_merging_in_any_order_and_grouping_gives_the_same_attention(namespace):
    q, k, v = random_qkv((3,), 3, 17, seed=6)
    arrays = (q, k, v) if namespace is anp else as_torch(q, k, v)
    parts = namespace.split_kv_partials(*arrays, n_splits=5, causal=True)
    expected = anp.attention(q, k, v, causal=True)[0]
    expected_lse = reference_lse(q, k, True)
    orders = [(0, 1, 2, 3, 4), (4, 3, 2, 1, 0), (2, 4, 0, 3, 1)]
    for order, grouping in itertools.product(orders, ("left", "right", "tree")):
        total = merged(parts, namespace.merge_partials, list(order), grouping)
        np.testing.assert_allclose(np.asarray(total.output()), expected, **EXACT, err_msg=f"{order} {grouping}")
        np.testing.assert_allclose(np.asarray(total.lse()), expected_lse, **EXACT)


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_the_empty_state_is_the_identity_of_the_merge(namespace):
    q, k, v = random_qkv((2,), 3, 6, seed=7)
    arrays = (q, k, v) if namespace is anp else as_torch(q, k, v)
    part = namespace.split_kv_partials(*arrays, n_splits=2)[1]
    empty = namespace.PartialAttention.empty((2, 3), 5)
    for total in (namespace.merge_partials(empty, part), namespace.merge_partials(part, empty)):
        for name in ("m", "l", "acc"):
            np.testing.assert_array_equal(np.asarray(getattr(total, name)), np.asarray(getattr(part, name)))


@given(n_q=st.integers(1, 4), extra_keys=st.integers(0, 16), causal=st.booleans(), data=st.data())
def test_any_split_merged_in_any_order_is_attention(n_q, extra_keys, causal, data):
    n_k = n_q + extra_keys
    n_splits = data.draw(st.integers(1, n_k), label="n_splits")
    order = data.draw(st.permutations(range(n_splits)), label="order")
    q, k, v = random_qkv((2,), n_q, n_k, seed=n_k)
    parts = anp.split_kv_partials(q, k, v, n_splits=n_splits, causal=causal)
    total = merged(parts, anp.merge_partials, order, "left")
    np.testing.assert_allclose(total.output(), anp.attention(q, k, v, causal=causal)[0], **EXACT)


# ---------------------------------------------------------------------------------------------------------------
# Bad input fails at the door, naming the argument
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_bad_inputs_are_refused_by_name(namespace):
    q, k, v = random_qkv((2,), 3, 6)
    good = (q, k, v) if namespace is anp else as_torch(q, k, v)
    split = namespace.split_kv_attention
    with pytest.raises(ValueError, match="n_splits must be a positive integer, got 0"):
        split(*good, n_splits=0)
    with pytest.raises(ValueError, match=r"n_splits must be at most n_k = 6.*got n_splits=7"):
        split(*good, n_splits=7)
    with pytest.raises(TypeError, match="n_splits must be a positive integer"):
        split(*good, n_splits=2.0)
    with pytest.raises(TypeError, match="n_splits must be a positive integer"):
        split(*good, n_splits=True)
    with pytest.raises(TypeError, match="n_splits"):
        split(*good)  # n_splits has no default: how to cut the keys is the caller's choice
    with pytest.raises(ValueError, match="d_k"):
        split(good[0][..., :4], good[1], good[2], n_splits=2)
    with pytest.raises(ValueError, match="same number of positions"):
        split(good[0], good[1], good[2][..., :5, :], n_splits=2)
    with pytest.raises(ValueError, match="causal attention needs n_k >= n_q"):
        split(good[0], good[1][..., :2, :], good[2][..., :2, :], n_splits=1, causal=True)
    with pytest.raises(TypeError, match="return_lse must be True or False"):
        split(*good, n_splits=2, return_lse="yes")
    with pytest.raises(ValueError, match="scale"):
        split(*good, n_splits=2, scale=-1.0)
    nan_k = good[1].copy() if namespace is anp else good[1].clone()
    nan_k[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="k contains NaN"):
        split(good[0], nan_k, good[2], n_splits=2)
    other = as_torch(q, k, v) if namespace is anp else (q, k, v)
    with pytest.raises(TypeError, match="attnlib"):
        split(*other, n_splits=2)
    part = namespace.split_kv_partials(*good, n_splits=2)[0]
    with pytest.raises(TypeError, match="b must be a PartialAttention"):
        namespace.merge_partials(part, (part.m, part.l, part.acc))
    narrow = namespace.PartialAttention(part.m, part.l, part.acc[..., :2])
    with pytest.raises(ValueError, match="value widths 5 and 2"):
        namespace.merge_partials(part, narrow)


def test_torch_backend_is_checked():
    q, k, v = as_torch(*random_qkv((2,), 1, 6))
    with pytest.raises(ValueError, match="backend must be one of"):
        at.split_kv_attention(q, k, v, n_splits=2, backend="cuda")


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_overflowing_scores_raise_like_attention(namespace):
    q, k, v = (x.astype(np.float32) for x in random_qkv((), 1, 8, seed=8))
    q, k = q * np.float32(1e20), k * np.float32(1e20)  # q·k overflows float32 to ±inf
    arrays = (q, k, v) if namespace is anp else as_torch(q, k, v)
    with pytest.raises(OverflowError), np.errstate(invalid="ignore"):
        namespace.attention(*arrays)
    with pytest.raises(OverflowError):
        namespace.split_kv_attention(*arrays, n_splits=3)


# ---------------------------------------------------------------------------------------------------------------
# The launch arithmetic
# ---------------------------------------------------------------------------------------------------------------


def test_split_bounds_cover_the_keys_in_balanced_non_empty_chunks():
    for n_k in range(1, 40):
        for n_splits in range(1, n_k + 1):
            bounds = occupancy.split_bounds(n_k, n_splits)
            assert len(bounds) == n_splits and bounds[0][0] == 0 and bounds[-1][1] == n_k
            assert all(end == next_start for (_, end), (next_start, _) in zip(bounds, bounds[1:], strict=False))
            lengths = [end - start for start, end in bounds]
            assert min(lengths) >= 1 and max(lengths) - min(lengths) <= 1
    assert occupancy.split_bounds(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]


def test_one_sequence_leaves_most_of_an_h100_idle_until_the_keys_are_split():
    assert occupancy.sm_count("H100 SXM") == 132
    launch = occupancy.decode_launch(batch=1, n_heads=32)  # one sequence, 32 heads, no split
    assert (launch.programs, launch.waves, launch.idle_sms) == (32, 1, 100)
    assert launch.sm_utilisation == pytest.approx(32 / 132)
    n_splits = occupancy.splits_to_fill(batch=1, n_heads=32, n_k=8192)
    assert n_splits == 5
    assert occupancy.decode_launch(1, 32, n_splits).idle_sms == 0
    assert occupancy.decode_launch(1, 32, n_splits - 1).idle_sms == 4  # 128 programs: 4 SMs still idle
    assert occupancy.splits_to_fill(batch=8, n_heads=32, n_k=8192) == 1  # 256 programs already fill it
    assert occupancy.splits_to_fill(batch=1, n_heads=32, n_k=3) == 3  # never more chunks than keys
    two_waves = occupancy.decode_launch(2, 132, gpu="H100 SXM")
    assert (two_waves.waves, two_waves.sm_utilisation) == (2, 1.0)
    assert occupancy.decode_launch(1, 1, 300, gpu=108).waves == 3  # an SM count directly
    assert occupancy.decode_launch(1, 1, gpu="A100").sms == 108


def test_launch_arithmetic_refuses_bad_arguments():
    with pytest.raises(ValueError, match="gpu must be one of"):
        occupancy.sm_count("H200 NVL")
    with pytest.raises(TypeError, match="batch must be a positive integer"):
        occupancy.decode_launch(1.5, 32)
    with pytest.raises(ValueError, match="n_heads must be a positive integer"):
        occupancy.splits_to_fill(1, 0, n_k=10)
    with pytest.raises(ValueError, match="n_splits must be at most n_k = 3"):
        occupancy.split_bounds(3, 4)


# ---------------------------------------------------------------------------------------------------------------
# The Triton decode kernel (under the interpreter without a GPU)
# ---------------------------------------------------------------------------------------------------------------

requires_triton = pytest.mark.skipif(not flash_triton.available(), reason="triton is not importable here")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def triton_inputs(n_q, n_k, d=16, batch=(1, 2), seed=9):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*batch, n, d, generator=generator, dtype=torch.float32).to(DEVICE)
            for n in (n_q, n_k, n_k)]


@requires_triton
@pytest.mark.parametrize("n_q,causal,splits", [
    (1, False, (1, 3, 7)), (1, True, (2, 5)), (3, False, (1, 4)), (3, True, (3, 7, 19)),
])
def test_triton_kernel_equals_attention_and_the_reference_chunk_states(n_q, causal, splits):
    n_k = 19  # ragged for every split count above except 1 and 19; 19 splits = one key per program
    q, k, v = triton_inputs(n_q, n_k)
    expected = at.attention(q.double(), k.double(), v.double(), causal=causal)[0]
    for n_splits in splits:
        output, lse = at.split_kv_attention(q, k, v, n_splits=n_splits, causal=causal, return_lse=True,
                                            backend="triton")
        assert output.dtype == torch.float32 and output.shape == (1, 2, n_q, 16)
        torch.testing.assert_close(output.double(), expected, rtol=0, atol=2e-6)
        _, expected_lse = at.split_kv_attention(q.double(), k.double(), v.double(), n_splits=1, causal=causal,
                                                return_lse=True, backend="torch")
        torch.testing.assert_close(lse.double(), expected_lse, rtol=0, atol=2e-6)
        # Each program's own state (m, l, acc) is the reference's state of the same chunk.
        m, l, acc = split_kv_triton.partials(q, k, v, n_splits, causal, 1 / 4)
        reference = at.split_kv_partials(q.double(), k.double(), v.double(), n_splits=n_splits, causal=causal)
        for chunk, part in enumerate(reference):
            torch.testing.assert_close(m[..., chunk, :].double(), part.m, rtol=0, atol=2e-6)
            torch.testing.assert_close(l[..., chunk, :].double(), part.l, rtol=1e-5, atol=0)
            torch.testing.assert_close(acc[..., chunk, :, :].double(), part.acc, rtol=1e-5, atol=2e-6)


@requires_triton
def test_triton_kernel_in_float16_with_key_heads_shared_by_broadcasting():
    q, k, v = triton_inputs(2, 21, batch=(1, 2))
    k, v = k[:, :1], v[:, :1]  # (1, 1, 21, 16): both query heads read one key/value head
    expected = at.attention(q.double(), k.double(), v.double(), causal=True)[0]
    output = at.split_kv_attention(q.half(), k.half(), v.half(), n_splits=3, causal=True, backend="triton")
    assert output.dtype == torch.float16 and output.shape == (1, 2, 2, 16)
    torch.testing.assert_close(output.double(), expected, rtol=0, atol=2e-3)


@requires_triton
def test_triton_kernel_refuses_what_it_cannot_compute(monkeypatch):
    q, k, v = triton_inputs(1, 8)
    with pytest.raises(ValueError, match="at most 64 queries"):
        at.split_kv_attention(*triton_inputs(65, 70), n_splits=2, backend="triton")
    with pytest.raises(ValueError, match="no backward pass"):
        at.split_kv_attention(q.requires_grad_(), k, v, n_splits=2, backend="triton")
    with torch.no_grad():  # without gradients the same call is fine
        at.split_kv_attention(q, k, v, n_splits=2, backend="triton")
    q = q.detach()
    with pytest.raises(ValueError, match="head dimension"):
        at.split_kv_attention(q[..., :12], k[..., :12], v[..., :12], n_splits=2, backend="triton")
    if flash_triton.interpreted():
        with pytest.raises(TypeError, match="bfloat16"):
            at.split_kv_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), n_splits=2, backend="triton")
    monkeypatch.setattr(flash_triton, "interpreted", lambda: False)
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            at.split_kv_attention(q, k, v, n_splits=2, backend="triton")
        # "auto" never picks the kernel for CPU tensors; it computes with plain torch ops instead.
        assert at.split_kv.split_kv_attention(q, k, v, n_splits=2).shape == q.shape


# ---------------------------------------------------------------------------------------------------------------
# The GPU benchmark's helpers and its measuring loop, on a toy CPU shape (timings meaningless, never asserted)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench():
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_split_kv_gpu.py"
    if str(script.parent) not in sys.path:  # as when run as a script: benchmarks/ first, for its helpers
        sys.path.insert(0, str(script.parent))
    spec = importlib.util.spec_from_file_location("bench_split_kv_gpu", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_arithmetic(bench):
    assert bench.cache_bytes(1, 32, 4096, 128, 2) == 2 * 32 * 4096 * 128 * 2  # 64 MiB of float16 k and v
    assert bench.bandwidth_gb_per_s(2e9, 1000.0) == pytest.approx(2.0)
    assert bench.split_counts(1, 32, 8192, 132) == [1, 2, 4, 5, 8, 16, 32, 64, 128]  # 5 fills an H100 SXM
    assert bench.split_counts(1, 2, 5, 132) == [1, 2, 4, 5]  # never more splits than keys
    assert bench.results_path("NVIDIA H100 80GB HBM3").name == "split_kv_gpu_nvidia_h100_80gb_hbm3.json"


@requires_triton
def test_benchmark_loop_on_a_toy_cpu_shape(bench):
    if DEVICE != "cpu":
        pytest.skip("the toy run is for machines without a GPU")
    rows = bench.measure(torch, cache_lengths=(40,), batch=1, heads=2, d=16, dtype=torch.float32, sms=4,
                         device="cpu", warmup=0, repeats=1, largest_split=2)
    assert [row["line"] for row in rows] == ["flash_attention triton", "sdpa", "split-kv triton, n_splits = 1",
                                             "split-kv triton, n_splits = 2"]
    measured = rows[1:] if "failed" in rows[0] else rows  # the FlashAttention line is that kernel's concern
    assert all(row["max_error"] < 1e-5 and row["ms"] > 0 and row["gb_per_s"] > 0 for row in measured)
    assert [(row["programs"], row["waves"]) for row in rows[2:]] == [(2, 1), (4, 1)]
