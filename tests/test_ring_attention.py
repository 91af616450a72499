"""Ring attention: real gloo rings of 2 and 4 processes on 127.0.0.1 against SDPA on the whole sequence.

Each ring runs every case in one set of processes (spawning costs more than computing at these sizes), and every
ring is bounded in time: ``spawn_ring`` kills the ranks and raises TimeoutError after ``RING_TIMEOUT`` seconds.
"""

from __future__ import annotations

import time

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

import attnlib.torch as at
from attnlib.torch import distributed

RING_TIMEOUT = 120.0
CASES = [(causal, layout) for causal in (False, True) for layout in ("contiguous", "zigzag")]


def whole_sequence(n: int, seed: int, shape=(2, 3), d: int = 8):
    """q, k, v and an output gradient for the whole sequence, (*shape, n, d) in float64, the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, n, d, generator=generator, dtype=torch.float64) for _ in range(4)]


def sdpa_with_grads(q, k, v, grad_output, causal):
    q, k, v = (x.clone().requires_grad_() for x in (q, k, v))
    output = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    output.backward(grad_output)
    return output.detach(), q.grad, k.grad, v.grad


# --- in the ranks --------------------------------------------------------------------------------------------


def _ring_cases(rank, world_size, n, group_size):
    """Every case forward and backward on this rank's shards; with group_size < world_size, rings of that size."""
    group, group_rank, seed = None, rank, 0
    if group_size < world_size:
        groups = [dist.new_group(list(range(start, start + group_size))) for start in range(0, world_size, group_size)]
        group, group_rank, seed = groups[rank // group_size], rank % group_size, 1 + rank // group_size
    results = []
    for causal, layout in CASES:
        tensors = whole_sequence(n, seed)
        q, k, v, grad = (distributed.shard_sequence(x, group_rank, group_size, layout) for x in tensors)
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        output = at.ring_attention(q, k, v, causal=causal, layout=layout, group=group)
        output.backward(grad)
        results.append({"output": output.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad})
    return results


def _refusal(function) -> str:
    try:
        function()
    except (ValueError, TypeError, RuntimeError) as error:
        return f"{type(error).__name__}: {error}"
    return "no error"


def _door_checks(rank, world_size):
    """Bad calls, made on every rank at once: each must raise the same clear error everywhere, not hang."""
    q = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # the same everywhere
    shorter = q if rank == 0 else q[:, :6]  # rank 1's shard is shorter than rank 0's
    other_dtype = q if rank == 0 else q.float()
    return {
        "lengths differ": _refusal(lambda: at.ring_attention(shorter, shorter, shorter)),
        "dtypes differ across ranks": _refusal(lambda: at.ring_attention(other_dtype, other_dtype, other_dtype)),
        "odd zigzag shard": _refusal(lambda: at.ring_attention(q[:, :7], q[:, :7], q[:, :7], layout="zigzag")),
        "unknown layout": _refusal(lambda: at.ring_attention(q, q, q, layout="striped")),
        "mixed dtypes": _refusal(lambda: at.ring_attention(q, q.float(), q)),
        "q and k lengths": _refusal(lambda: at.ring_attention(q, q[:, :4], q[:, :4])),
        "still works after": float(at.ring_attention(q, q, q, causal=True).sum()),
    }


def _sleep_forever(rank, world_size):
    time.sleep(3600)


def _fail_on_rank_one(rank, world_size):
    if rank == 1:
        raise ArithmeticError("rank one gives up")
    dist.barrier()  # rank 0 would wait here forever for rank 1


# --- the tests -----------------------------------------------------------------------------------------------


def check_against_sdpa(per_rank, world_size, n, seed=0):
    for case, (causal, layout) in enumerate(CASES):
        q, k, v, grad = whole_sequence(n, seed)
        expected = dict(zip(("output", "dq", "dk", "dv"), sdpa_with_grads(q, k, v, grad, causal), strict=True))
        simulated, _ = distributed.simulate_ring(q, k, v, world_size, causal=causal, layout=layout)
        for name, reference in expected.items():
            ours = distributed.unshard_sequence([answer[case][name] for answer in per_rank], layout)
            torch.testing.assert_close(ours, reference, rtol=0, atol=1e-13,
                                       msg=f"{name}, causal={causal}, layout={layout}, P={world_size}")
        gathered = distributed.unshard_sequence([answer[case]["output"] for answer in per_rank], layout)
        assert torch.equal(gathered, simulated), "the one-process simulation runs the same schedule, to the bit"


@pytest.mark.parametrize("world_size,n", [(2, 16), (4, 32)])
def test_ring_equals_sdpa_forward_and_backward(world_size, n):
    per_rank = distributed.spawn_ring(world_size, _ring_cases, n, world_size, timeout=RING_TIMEOUT)
    check_against_sdpa(per_rank, world_size, n)


def test_two_rings_in_subgroups_of_four_ranks():
    per_rank = distributed.spawn_ring(4, _ring_cases, 16, 2, timeout=RING_TIMEOUT)
    for first, seed in ((0, 1), (2, 2)):  # ranks 0-1 and 2-3 attend to different sequences
        check_against_sdpa(per_rank[first:first + 2], 2, 16, seed=seed)


def test_bad_calls_raise_the_same_error_on_every_rank():
    answers = distributed.spawn_ring(2, _door_checks, timeout=RING_TIMEOUT)
    sums = [answer.pop("still works after") for answer in answers]
    assert answers[0] == answers[1], "every rank must see the same refusal"
    answer = answers[0]
    assert "ValueError" in answer["lengths differ"] and "shard length of q" in answer["lengths differ"]
    assert "[8, 6]" in answer["lengths differ"]
    assert "dtype code" in answer["dtypes differ across ranks"]
    assert "even shard length" in answer["odd zigzag shard"] and "(1, 7, 4)" in answer["odd zigzag shard"]
    assert "layout must be one of" in answer["unknown layout"] and "'striped'" in answer["unknown layout"]
    assert "TypeError" in answer["mixed dtypes"] and "dtypes must match" in answer["mixed dtypes"]
    assert "same length along dim -2" in answer["q and k lengths"]
    q = torch.randn(1, 8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    whole = torch.cat([q, q], dim=1)  # (1, 16, 4): both ranks held the same shard
    expected = F.scaled_dot_product_attention(whole, whole, whole, is_causal=True)
    assert sums == pytest.approx([float(expected[:, :8].sum()), float(expected[:, 8:].sum())])


def test_a_ring_that_hangs_is_stopped_and_reported():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ring of 2 processes did not finish within 3 s"):
        distributed.spawn_ring(2, _sleep_forever, timeout=3)
    assert time.monotonic() - start < 30


def test_an_error_in_one_rank_is_raised_in_the_caller():
    with pytest.raises(RuntimeError, match=r"(?s)rank 1 of the ring failed.*ArithmeticError: rank one gives up"):
        distributed.spawn_ring(2, _fail_on_rank_one, timeout=RING_TIMEOUT)


def test_run_ring_demo_gathers_the_whole_result():
    result = distributed.run_ring_demo(2, n=16, d=4, causal=True, layout="zigzag", seed=3)
    expected = sdpa_with_grads(result["q"], result["k"], result["v"], result["grad_output"], True)
    for name, reference in zip(("output", "dq", "dk", "dv"), expected, strict=True):
        torch.testing.assert_close(result[name], reference, rtol=0, atol=1e-13)


# --- one process ---------------------------------------------------------------------------------------------


def test_ring_attention_needs_a_process_group():
    assert not dist.is_initialized()
    q = torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        at.ring_attention(q, q, q)
    with pytest.raises(TypeError, match="NumPy array"):
        at.ring_attention(q.numpy(), q, q)


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_shards_put_back_together(world_size, layout):
    x = torch.arange(2 * 24 * 3).reshape(2, 24, 3).double()  # (B, n, d)
    shards = [at.shard_sequence(x, rank, world_size, layout) for rank in range(world_size)]
    assert all(shard.shape == (2, 24 // world_size, 3) for shard in shards)
    assert torch.equal(at.unshard_sequence(shards, layout), x)


def test_zigzag_pairs_an_early_chunk_with_a_late_one():
    x = torch.arange(8).double()[:, None]  # 8 positions, P = 2: chunks of 2, rank 0 holds chunks 0 and 3
    assert at.shard_sequence(x, 0, 2, "zigzag").flatten().tolist() == [0, 1, 6, 7]
    assert at.shard_sequence(x, 1, 2, "zigzag").flatten().tolist() == [2, 3, 4, 5]
    assert at.shard_sequence(x, 1, 2, "contiguous").flatten().tolist() == [4, 5, 6, 7]


def test_shard_refusals_name_the_argument():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match=r"n = 10 .* cannot cut into 4 equal chunks for world_size = 2"):
        at.shard_sequence(x, 0, 2, "zigzag")
    with pytest.raises(ValueError, match=r"rank must be in \[0, world_size\) = \[0, 2\), got 2"):
        at.shard_sequence(x, 2, 2)
    with pytest.raises(ValueError, match="layout must be one of"):
        at.shard_sequence(x, 0, 2, "diagonal")
    with pytest.raises(ValueError, match="one shape"):
        at.unshard_sequence([torch.zeros(5, 2), torch.zeros(4, 2)])
    with pytest.raises(TypeError, match="list of tensors"):
        at.unshard_sequence(torch.zeros(2, 5, 2))


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("causal,layout", CASES)
def test_simulation_equals_sdpa(world_size, causal, layout):
    q, k, v, _ = whole_sequence(8 * world_size, seed=world_size)
    output, steps = distributed.simulate_ring(q, k, v, world_size, causal=causal, layout=layout)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(output, expected, rtol=0, atol=1e-13)
    assert [(s.step, s.rank) for s in steps] == [(t, r) for t in range(world_size) for r in range(world_size)]
    for s in steps:
        assert s.source == (s.rank - s.step) % world_size
        assert s.key_chunks == distributed.rank_chunks(s.source, world_size, layout)
        # The running state after the last step is the whole row's: m = max score, l = sum exp(score - m).
        if s.step == world_size - 1:
            scores = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5
            if causal:
                scores = scores.masked_fill(~torch.ones(scores.shape[-2:], dtype=torch.bool).tril(),
                                            float("-inf"))
            whole_m = distributed.shard_sequence(scores.amax(-1)[..., None], s.rank, world_size, layout)[..., 0]
            whole_l = torch.exp(scores - scores.amax(-1, keepdim=True)).sum(-1)[..., None]
            torch.testing.assert_close(s.running_m, whole_m)
            torch.testing.assert_close(
                s.running_l, distributed.shard_sequence(whole_l, s.rank, world_size, layout)[..., 0])
            torch.testing.assert_close(s.output, distributed.shard_sequence(expected, s.rank, world_size, layout))


def test_causal_pairs_in_the_future_are_skipped():
    _, steps = distributed.simulate_ring(*whole_sequence(8, 0)[:3], 2, causal=True, layout="contiguous")
    kinds = {(q_chunk, k_chunk): kind for s in steps for q_chunk, k_chunk, kind in s.pairs}
    assert kinds == {(0, 0): "diagonal", (0, 1): "skipped", (1, 0): "full", (1, 1): "diagonal"}
    skipped = next(s for s in steps if s.pairs == ((0, 1, "skipped"),))
    assert torch.isneginf(skipped.m).all() and (skipped.l == 0).all(), "a skipped step sees nothing"


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_work_balance(world_size):
    contiguous = distributed.work_per_rank(world_size, "contiguous", chunk=64)
    zigzag = distributed.work_per_rank(world_size, "zigzag", chunk=32)  # same positions per rank
    assert sum(contiguous) == sum(zigzag) == (64 * world_size) * (64 * world_size + 1) // 2  # the causal triangle
    assert max(zigzag) == min(zigzag)
    assert max(contiguous) / min(contiguous) == pytest.approx(2 * world_size - 1, rel=0.02)
    assert distributed.work_per_rank(world_size, "contiguous", causal=False, chunk=4) == [16 * world_size] * world_size


def test_merging_two_halves_by_log_sum_exp_gives_the_whole():
    q, k, v, _ = whole_sequence(12, seed=7)
    parts = [at.flash_attention(q, k[..., keys, :], v[..., keys, :], return_lse=True)
             for keys in (slice(0, 5), slice(5, 12))]
    output, lse = distributed.merge_by_lse(*parts[0], *parts[1])
    whole, whole_lse = at.flash_attention(q, k, v, return_lse=True)
    torch.testing.assert_close(output, whole, rtol=0, atol=1e-14)
    torch.testing.assert_close(lse, whole_lse, rtol=0, atol=1e-14)
    in_place = [x.clone() for x in parts[0]]
    distributed._merge_into(*in_place, *[x.clone() for x in parts[1]])
    torch.testing.assert_close(in_place[0], output, rtol=0, atol=1e-15)
    empty = (torch.zeros_like(output), torch.full_like(lse, float("-inf")))  # nothing seen yet: weight 0
    assert torch.equal(distributed.merge_by_lse(*empty, output, lse)[0], output)
    with pytest.raises(ValueError, match="the parts must have one shape"):
        distributed.merge_by_lse(output, lse, output[..., :3, :], lse[..., :3])
