"""Ring attention on ``torch.distributed``: a sequence longer than one device, cut into shards, one per rank.

Every rank of a process group holds one shard of q, k and v, shaped (..., n / P, d). The key/value shards travel
around the ring (rank r sends to r + 1 and receives from r - 1), so after P steps every rank has seen every key
once; at each step the rank attends its own queries to the keys and values it holds and merges that partial result
into its running one by log-sum-exp, the merge of the online softmax (``attnlib.torch.online_softmax``). The next
shard is already on its way while the current one is used: the send and receive are posted before the computation
and waited for after it.

Two layouts say which positions a rank holds. ``"contiguous"``: the sequence is cut into P chunks and rank r holds
chunk r. ``"zigzag"``: it is cut into 2P chunks and rank r holds chunks r and 2P - 1 - r, one early and one late,
so that with causal attention every rank has the same amount of work.

Each (query chunk, key chunk) pair is computed by the tiled FlashAttention core of ``attnlib.torch.flash_attention``
(no n x n matrix anywhere); causal masks come from the chunks' global positions, and a pair wholly in the future is
skipped. The backward pass runs the ring again: keys and values travel as before, together with the gradients
accumulated for them, which arrive back at their owner after the last step.

Nothing here depends on the device: ``gloo`` on CPUs and ``nccl`` on GPUs run the same code. ``run_ring_demo``
spawns a small gloo ring on 127.0.0.1 (for the book and for trying it out), and ``simulate_ring`` runs the very
same schedule in one process, recording what every rank holds and computes at every step.
"""

from __future__ import annotations

import datetime
import io
import math
import multiprocessing
import os
import queue
import socket
import traceback
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .. import _checks
from .flash_attention import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, _compute_dtype, backward_tiled, forward_tiled

LAYOUTS = ("contiguous", "zigzag")
FULL, DIAGONAL, SKIPPED = "full", "diagonal", "skipped"


# --------------------------------------------------------------------------------------------------------------
# Layouts: which chunks of the sequence each rank holds
# --------------------------------------------------------------------------------------------------------------


def _layout(value) -> str:
    if not isinstance(value, str) or value not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {value!r}")
    return value


def chunks_per_rank(layout: str) -> int:
    """How many chunks of the sequence one rank holds: 1 (contiguous) or 2 (zigzag)."""
    return 1 if _layout(layout) == "contiguous" else 2


def rank_chunks(rank: int, world_size: int, layout: str) -> tuple[int, ...]:
    """The global indices of the chunks rank ``rank`` holds, in the order they are concatenated in its shard.

    contiguous: (rank,) of P chunks; zigzag: (rank, 2P - 1 - rank) of 2P chunks.
    """
    world_size = _checks.positive_int("world_size", world_size)
    rank = _checks.non_negative_int("rank", rank)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size) = [0, {world_size}), got {rank}")
    if _layout(layout) == "contiguous":
        return (rank,)
    return (rank, 2 * world_size - 1 - rank)


def pair_kind(query_chunk: int, key_chunk: int, causal: bool) -> str:
    """How a (query chunk, key chunk) pair is computed: every key visible, causal within the chunk, or skipped.

    Chunks have equal lengths, so the causal rule on global positions reduces to comparing chunk indices.
    """
    if not causal or key_chunk < query_chunk:
        return FULL
    return DIAGONAL if key_chunk == query_chunk else SKIPPED


def shard_sequence(x, rank: int, world_size: int, layout: str = "contiguous"):
    """Rank ``rank``'s shard of a whole sequence ``x`` (..., n, d): its chunks along dim -2, concatenated.

    n must divide into P chunks (contiguous) or 2P chunks (zigzag) of equal length.
    """
    x = _checks.torch_tensor("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (..., n, d), got shape {tuple(x.shape)}")
    chunks = rank_chunks(rank, world_size, layout)
    n_chunks = world_size * chunks_per_rank(layout)
    n = x.shape[-2]
    if n % n_chunks:
        raise ValueError(f"x has n = {n} positions (shape {tuple(x.shape)}), which layout={layout!r} cannot cut into "
                         f"{n_chunks} equal chunks for world_size = {world_size}")
    chunk = n // n_chunks
    return torch.cat([x[..., g * chunk:(g + 1) * chunk, :] for g in chunks], dim=-2)  # (..., n / P, d)


def unshard_sequence(shards, layout: str = "contiguous"):
    """The whole sequence (..., n, d) from the list of every rank's shard, in rank order (inverse of shard_sequence)."""
    layout = _layout(layout)
    if isinstance(shards, torch.Tensor) or not isinstance(shards, list | tuple) or not shards:
        raise TypeError(f"shards must be a non-empty list of tensors, one per rank, got {type(shards).__name__}")
    shards = [_checks.torch_tensor(f"shards[{r}]", s) for r, s in enumerate(shards)]
    shapes = {tuple(s.shape) for s in shards}
    if len(shapes) > 1 or shards[0].ndim < 2:
        raise ValueError(f"shards must all have one shape (..., n / P, d), got {sorted(shapes)}")
    world_size, per_rank = len(shards), chunks_per_rank(layout)
    n_local = shards[0].shape[-2]
    if n_local % per_rank:
        raise ValueError(f"layout='zigzag' shards hold two chunks each: their length must be even, got {n_local}")
    chunk = n_local // per_rank
    ordered = [None] * (world_size * per_rank)
    for rank, shard in enumerate(shards):
        for i, g in enumerate(rank_chunks(rank, world_size, layout)):
            ordered[g] = shard[..., i * chunk:(i + 1) * chunk, :]
    return torch.cat(ordered, dim=-2)  # (..., n, d)


# --------------------------------------------------------------------------------------------------------------
# One step of the ring, written once for the distributed pass and the one-process simulation
# --------------------------------------------------------------------------------------------------------------


def _blocks(chunk: int) -> tuple[int, int]:
    """Tile sizes of the FlashAttention core inside one chunk pair."""
    return min(DEFAULT_BLOCK_Q, chunk), min(DEFAULT_BLOCK_K, chunk)


def _pieces(x, count: int) -> list:
    """A shard cut back into its chunks along dim -2 (views, no copies)."""
    return list(torch.chunk(x, count, dim=-2))


def merge_by_lse(output, lse, partial_output, partial_lse):
    """Merge two partial attention results of the same query rows by log-sum-exp -> (output, lse).

    Each part attended to its own keys: ``output`` (..., rows, d_v) is its normalised output and ``lse`` (..., rows)
    the log of its softmax denominator, log(sum(exp(scores))) over its keys. Together the denominator is
    exp(lse_a) + exp(lse_b), so lse = log(exp(lse_a) + exp(lse_b)), and each part's output counts with its share
    of it, exp(lse_part - lse). A row that has seen nothing yet has lse = -inf and weight 0 (``torch.logaddexp``
    keeps that exact). The same merge as chapter 9's ``merge`` of online-softmax states and split-KV's
    ``merge_partials`` of (m, l, acc) states, written for what a FlashAttention pass returns: (output, lse).
    """
    for name, x in (("output", output), ("lse", lse), ("partial_output", partial_output),
                    ("partial_lse", partial_lse)):
        _checks.torch_tensor(name, x)
    if output.shape != partial_output.shape or lse.shape != partial_lse.shape or lse.shape != output.shape[:-1]:
        raise ValueError(f"the parts must have one shape, output (..., rows, d_v) and lse (..., rows), got output "
                         f"{tuple(output.shape)}, lse {tuple(lse.shape)}, partial_output "
                         f"{tuple(partial_output.shape)}, partial_lse {tuple(partial_lse.shape)}")
    new_lse = torch.logaddexp(lse, partial_lse)
    old_weight = torch.exp(lse - new_lse)[..., None]  # (..., rows, 1)
    new_weight = torch.exp(partial_lse - new_lse)[..., None]
    return output * old_weight + partial_output * new_weight, new_lse


def _merge_into(output, lse, partial_output, partial_lse) -> None:
    """``merge_by_lse`` in place, into ``output`` and ``lse`` (and scaling ``partial_output``, which is spent).

    The ring merges once per chunk pair; written in place, a merge allocates only per-row vectors, not three more
    outputs' worth of memory.
    """
    new_lse = torch.logaddexp(lse, partial_lse)
    output.mul_(torch.exp(lse - new_lse)[..., None])
    output.add_(partial_output.mul_(torch.exp(partial_lse - new_lse)[..., None]))
    lse.copy_(new_lse)


def _forward_step(q_chunks, q_ids, k, v, k_ids, output, lse, causal: bool, scale: float, record=None):
    """Fold the key/value shard (chunks ``k_ids``) into the running (output, lse) of the query chunks ``q_ids``.

    ``output`` (..., n_local, d_v) and ``lse`` (..., n_local) are updated in place, chunk by chunk.
    ``record(i, j, kind, partial_output, partial_lse)`` is told about every pair (for the simulation).
    """
    chunk = q_chunks[0].shape[-2]
    block_q, block_k = _blocks(chunk)
    for j, (k_chunk, v_chunk) in enumerate(zip(_pieces(k, len(k_ids)), _pieces(v, len(k_ids)), strict=True)):
        for i, q_chunk in enumerate(q_chunks):
            kind = pair_kind(q_ids[i], k_ids[j], causal)
            if record is not None:
                record(i, j, kind, None, None)
            if kind == SKIPPED:
                continue  # every key of this chunk lies in the future of every query: nothing to compute
            partial_output, partial_lse = forward_tiled(q_chunk, k_chunk, v_chunk, kind == DIAGONAL, scale,
                                                        block_q, block_k)
            rows = slice(i * chunk, (i + 1) * chunk)
            _merge_into(output[..., rows, :], lse[..., rows], partial_output, partial_lse)


def _backward_step(q_chunks, q_ids, k, v, k_ids, out_chunks, lse_chunks, grad_chunks, dq, dk, dv, causal: bool,
                   scale: float):
    """Add this shard pair's share to dq (the local queries) and to dk, dv (the visiting keys and values), in place."""
    chunk = q_chunks[0].shape[-2]
    block_q, block_k = _blocks(chunk)
    k_pieces, v_pieces = _pieces(k, len(k_ids)), _pieces(v, len(k_ids))
    for j in range(len(k_ids)):
        keys = slice(j * chunk, (j + 1) * chunk)
        for i, q_chunk in enumerate(q_chunks):
            kind = pair_kind(q_ids[i], k_ids[j], causal)
            if kind == SKIPPED:
                continue
            # The saved lse and output are those of the whole row, so exp(scores - lse) is the true probability.
            dq_pair, dk_pair, dv_pair = backward_tiled(q_chunk, k_pieces[j], v_pieces[j], out_chunks[i],
                                                       lse_chunks[i], grad_chunks[i], kind == DIAGONAL, scale,
                                                       block_q, block_k)
            dq[..., i * chunk:(i + 1) * chunk, :] += dq_pair
            dk[..., keys, :] += dk_pair
            dv[..., keys, :] += dv_pair


# --------------------------------------------------------------------------------------------------------------
# The distributed pass
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ring:
    """Where this rank sits: its rank in the group, the group's size, and its neighbours' global ranks."""

    group: object
    rank: int
    world_size: int
    next_rank: int  # global rank that this rank sends to
    previous_rank: int  # global rank that this rank receives from

    @classmethod
    def of(cls, group) -> _Ring:
        rank, world_size = dist.get_rank(group), dist.get_world_size(group)

        def global_rank(group_rank):
            return group_rank if group is None else dist.get_global_rank(group, group_rank)

        return cls(group, rank, world_size, global_rank((rank + 1) % world_size),
                   global_rank((rank - 1) % world_size))

    def source(self, step: int) -> int:
        """The rank whose key/value shard this rank holds at ``step`` (its own at step 0)."""
        return (self.rank - step) % self.world_size

    def pass_on(self, tensors):
        """Post the sends of ``tensors`` to the next rank and the receives of as many from the previous one.

        Returns (received buffers, pending requests); the buffers are valid once every request has been waited on.
        """
        if self.world_size == 1:
            return list(tensors), []
        received = [torch.empty_like(t) for t in tensors]
        operations = [dist.P2POp(dist.isend, t, self.next_rank, self.group) for t in tensors]
        operations += [dist.P2POp(dist.irecv, r, self.previous_rank, self.group) for r in received]
        return received, dist.batch_isend_irecv(operations)


def _wait(requests) -> None:
    for request in requests:
        request.wait()


def _ring_forward(q, k, v, causal: bool, layout: str, scale: float, ring: _Ring):
    """-> (output (..., n_local, d_v) in the compute dtype, lse (..., n_local)). Inputs already validated."""
    dtype = _compute_dtype(q.dtype)  # the merge runs in float32 at least; k and v travel in their own dtype
    k, v = k.contiguous(), v.contiguous()
    per_rank = chunks_per_rank(layout)
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    output = torch.zeros(batch_shape + (q.shape[-2], v.shape[-1]), dtype=dtype, device=q.device)
    lse = torch.full(batch_shape + (q.shape[-2],), float("-inf"), dtype=dtype, device=q.device)
    q_chunks, q_ids = _pieces(q, per_rank), rank_chunks(ring.rank, ring.world_size, layout)
    for step in range(ring.world_size):
        # Start moving this shard on before using it: the transfer overlaps the computation below.
        last = step == ring.world_size - 1
        (next_k, next_v), requests = ((k, v), []) if last else ring.pass_on((k, v))
        k_ids = rank_chunks(ring.source(step), ring.world_size, layout)
        _forward_step(q_chunks, q_ids, k, v, k_ids, output, lse, causal, scale)
        _wait(requests)
        # A finished send still refers to the shard it sent: let that shard go now.
        requests = None
        k, v = next_k, next_v
    return output, lse


def _ring_backward(q, k, v, output, lse, grad_output, causal: bool, layout: str, scale: float, ring: _Ring):
    """-> (dq, dk, dv) of this rank's shard. dk and dv travel with their keys and values, and one last hop home."""
    dtype = output.dtype  # the compute dtype of the forward pass: gradients accumulate in it
    k, v = k.contiguous(), v.contiguous()
    per_rank = chunks_per_rank(layout)
    q_ids = rank_chunks(ring.rank, ring.world_size, layout)
    q_chunks, out_chunks = _pieces(q, per_rank), _pieces(output, per_rank)
    lse_chunks = list(torch.chunk(lse, per_rank, dim=-1))  # (..., chunk) each
    grad_chunks = _pieces(grad_output.to(dtype), per_rank)
    dq = torch.zeros(q.shape, dtype=dtype, device=q.device)
    dk = torch.zeros(k.shape, dtype=dtype, device=k.device)
    dv = torch.zeros(v.shape, dtype=dtype, device=v.device)
    for step in range(ring.world_size):
        last = step == ring.world_size - 1
        (next_k, next_v), requests = ((k, v), []) if last else ring.pass_on((k, v))
        k_ids = rank_chunks(ring.source(step), ring.world_size, layout)
        _backward_step(q_chunks, q_ids, k, v, k_ids, out_chunks, lse_chunks, grad_chunks, dq, dk, dv, causal, scale)
        # This rank's share of the visiting shard's dk, dv is in: pass them on, after the shard. At the last step the
        # visiting shard is that of rank r + 1, so this hop takes every shard's finished gradients home.
        (dk, dv), grad_requests = ring.pass_on((dk, dv))
        _wait(requests + grad_requests)
        requests = grad_requests = None  # finished sends still refer to what they sent: let it go now
        k, v = next_k, next_v
    return dq, dk, dv


class _RingAttention(torch.autograd.Function):
    """The ring as one autograd operation: forward saves the row log-sum-exp, backward runs the ring again."""

    @staticmethod
    def forward(ctx, q, k, v, causal, layout, scale, ring):
        """This rank's output shard; saves q, k, v, the output and lse (..., n_local) for the backward ring."""
        output, lse = _ring_forward(q, k, v, causal, layout, scale, ring)
        ctx.save_for_backward(q, k, v, output, lse)
        ctx.settings = (causal, layout, scale, ring)
        return output.to(q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        """(dq, dk, dv) of this rank's shard; collective, like the forward pass."""
        q, k, v, output, lse = ctx.saved_tensors
        causal, layout, scale, ring = ctx.settings
        dq, dk, dv = _ring_backward(q, k, v, output, lse, grad_output, causal, layout, scale, ring)
        grads = [g.sum_to_size(x.shape).to(x.dtype) for g, x in zip((dq, dk, dv), (q, k, v), strict=True)]
        return (*grads, None, None, None, None)


_DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2, torch.float32: 3, torch.float64: 4}


def _check_ranks_agree(q, k, v, ring: _Ring) -> None:
    """One small all_gather: every rank's shard length, head sizes, batch size and dtype must be the same.

    All ranks gather the same table, so a mismatch makes every rank raise the same error instead of some ranks
    waiting forever for a shard that will never come.
    """
    if ring.world_size == 1:
        return
    mine = torch.tensor([q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1], math.prod(q.shape[:-2]),
                         math.prod(k.shape[:-2]), _DTYPE_CODES.get(q.dtype, 0)], dtype=torch.int64, device=q.device)
    gathered = [torch.empty_like(mine) for _ in range(ring.world_size)]
    dist.all_gather(gathered, mine, group=ring.group)
    table = torch.stack(gathered).tolist()
    names = ("shard length of q", "shard length of k", "d_k", "d_v", "batch size of q", "batch size of k",
             "dtype code")
    for column, name in enumerate(names):
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            raise ValueError(f"ring_attention needs the same {name} on every rank, got {values} on ranks "
                             f"0..{ring.world_size - 1} (shard lengths must all be n / world_size)")


def ring_attention(q, k, v, *, causal=False, layout="contiguous", group=None, scale=None):
    """Attention over a sequence sharded across the ranks of ``group``; call it on every rank with its own shard.

    q (..., n / P, d_k), k (..., n / P, d_k), v (..., n / P, d_v) are this rank's shard of the whole sequence in
    ``layout`` ("contiguous" or "zigzag", see ``shard_sequence``); the output (..., n / P, d_v) is this rank's
    shard of attention over the whole sequence, in the same layout. ``causal`` uses global positions. ``group``:
    a ``torch.distributed`` process group (None: the default one). Differentiable: the backward pass runs the ring
    again and is collective too (every rank must call it). Works with ``gloo`` (CPU) and ``nccl`` (CUDA) alike.
    """
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    causal = _checks.flag("causal", causal)
    layout = _layout(layout)
    scale = _checks.scale(scale)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"q and k must be shards of the same sequence (same length along dim -2), got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}")
    if layout == "zigzag" and q.shape[-2] % 2:
        raise ValueError(f"layout='zigzag' needs an even shard length (two chunks per rank), got q {tuple(q.shape)}")
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("ring_attention needs torch.distributed: call torch.distributed.init_process_group "
                           "first (or use run_ring_demo to try it on one machine)")
    backend = str(dist.get_backend(group))
    if backend == "nccl" and q.device.type != "cuda":
        raise ValueError(f"the process group's backend is nccl, which needs CUDA tensors; q is on {q.device}")
    ring = _Ring.of(group)
    _check_ranks_agree(q, k, v, ring)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _RingAttention.apply(q, k, v, causal, layout, scale, ring)


# --------------------------------------------------------------------------------------------------------------
# The same schedule in one process, step by step
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RingStep:
    """What rank ``rank`` did at ``step``: the key/value shard it held and what merging it changed.

    ``pairs`` lists (query chunk, key chunk, kind) for every pair it looked at. ``m``/``l`` are this step's own
    online-softmax state per query row (maximum score, sum of exp(score - m); -inf and 0 for rows that saw
    nothing this step); ``running_m``/``running_l`` the state after merging, ``lse`` = running_m + log(running_l);
    ``output`` the merged output after this step, (..., n_local, d_v).
    """

    step: int
    rank: int
    source: int
    key_chunks: tuple[int, ...]
    pairs: tuple[tuple[int, int, str], ...]
    m: torch.Tensor
    l: torch.Tensor
    running_m: torch.Tensor
    running_l: torch.Tensor
    output: torch.Tensor


def simulate_ring(q, k, v, world_size: int, *, causal=False, layout="contiguous", scale=None):
    """Run ring attention's schedule on the whole q, k, v (..., n, d) in one process -> (output, steps).

    The shards are cut with ``shard_sequence`` and every rank's step is computed by the same code as the
    distributed forward pass, so ``output`` (..., n, d_v) equals what the ranks compute together; ``steps`` holds
    one ``RingStep`` per step and rank, in that order.
    """
    q, k, v = (_checks.torch_tensor(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
    _checks.qkv(q, k, v)
    causal, layout, scale = _checks.flag("causal", causal), _layout(layout), _checks.scale(scale)
    world_size = _checks.positive_int("world_size", world_size)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"q and k must be the same sequence, got q {tuple(q.shape)}, k {tuple(k.shape)}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    per_rank = chunks_per_rank(layout)
    dtype = _compute_dtype(q.dtype)
    shards = [[shard_sequence(x.to(dtype), r, world_size, layout) for x in (q, k, v)] for r in range(world_size)]
    batch_shape = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    n_local = q.shape[-2] // world_size
    outputs = [torch.zeros(batch_shape + (n_local, v.shape[-1]), dtype=dtype) for _ in range(world_size)]
    lses = [torch.full(batch_shape + (n_local,), float("-inf"), dtype=dtype) for _ in range(world_size)]
    running_m = [torch.full_like(lse, float("-inf")) for lse in lses]
    steps = []
    for step in range(world_size):
        for rank in range(world_size):
            source = (rank - step) % world_size
            q_shard, (_, k_shard, v_shard) = shards[rank][0], shards[source]
            q_ids, k_ids = rank_chunks(rank, world_size, layout), rank_chunks(source, world_size, layout)
            pairs = []
            _forward_step(_pieces(q_shard, per_rank), q_ids, k_shard, v_shard, k_ids, outputs[rank],
                          lses[rank], causal, scale,
                          record=lambda i, j, kind, *_, q_ids=q_ids, k_ids=k_ids, pairs=pairs: pairs.append(
                              (q_ids[i], k_ids[j], kind)))
            m, l = _step_state(q_shard, k_shard, q_ids, k_ids, causal, scale, per_rank)
            running_m[rank] = torch.maximum(running_m[rank], m)
            shift = torch.where(torch.isneginf(running_m[rank]), torch.zeros_like(m), running_m[rank])
            steps.append(RingStep(step, rank, source, k_ids, tuple(pairs), m, l, running_m[rank].clone(),
                                  torch.exp(lses[rank] - shift), outputs[rank].clone()))
    output = unshard_sequence(outputs, layout).to(q.dtype)
    return output, steps


def _step_state(q_shard, k_shard, q_ids, k_ids, causal, scale, per_rank):
    """Chapter 9's (m, l) of the scores one rank sees at one step, per query row (a small, explicit score matrix)."""
    chunk = q_shard.shape[-2] // per_rank
    scores = (q_shard * scale) @ k_shard.transpose(-1, -2)  # (..., n_local, n_local)
    visible = torch.zeros(scores.shape[-2:], dtype=torch.bool)
    for i, q_id in enumerate(q_ids):
        for j, k_id in enumerate(k_ids):
            kind = pair_kind(q_id, k_id, causal)
            block = torch.ones(chunk, chunk, dtype=torch.bool)
            if kind == DIAGONAL:
                block = torch.tril(block)
            elif kind == SKIPPED:
                block = torch.zeros_like(block)
            visible[i * chunk:(i + 1) * chunk, j * chunk:(j + 1) * chunk] = block
    scores = torch.where(visible, scores, float("-inf"))
    m = scores.amax(dim=-1)
    shift = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    return m, torch.exp(scores - shift[..., None]).sum(dim=-1)


def work_per_rank(world_size: int, layout: str, *, causal: bool = True, chunk: int = 1) -> list[int]:
    """Score entries (query, key) each rank computes over the whole ring, read off the schedule the ring runs.

    A full pair costs chunk², a diagonal pair chunk (chunk + 1) / 2 (the visible triangle), a skipped one 0.
    """
    work = []
    for rank in range(world_size):
        total = 0
        for step in range(world_size):
            for q_id in rank_chunks(rank, world_size, layout):
                for k_id in rank_chunks((rank - step) % world_size, world_size, layout):
                    kind = pair_kind(q_id, k_id, causal)
                    total += {FULL: chunk * chunk, DIAGONAL: chunk * (chunk + 1) // 2, SKIPPED: 0}[kind]
        work.append(total)
    return work


# --------------------------------------------------------------------------------------------------------------
# Spawning a small ring on this machine
# --------------------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (the operating system picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank, world_size, port, timeout, function, args, results):
    """One spawned rank: join the gloo group on 127.0.0.1, run ``function(rank, world_size, *args)``, report."""
    try:
        torch.set_num_threads(1)  # P ranks on a few cores: one thread each, or they fight over the cores
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo" if os.path.exists("/sys/class/net/lo") else "lo0")
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout))
        try:
            # As bytes: a tensor put on a queue as it is would be shared through a file descriptor that dies with
            # this process, which may end before the parent reads it.
            buffer = io.BytesIO()
            torch.save(function(rank, world_size, *args), buffer)
            results.put((rank, "ok", buffer.getvalue()))
        finally:
            dist.destroy_process_group()
    except BaseException:  # report every failure to the parent, which raises it
        results.put((rank, "error", traceback.format_exc()))


def _process_context():
    """How ranks are started: from a fork server where the platform has one, else by spawning fresh interpreters.

    The fork server is a clean process that imports torch once; every rank after that is a fork of it, ready in
    milliseconds instead of re-importing torch (seconds each). Neither way forks the caller itself, whose threads
    (a notebook's, torch's own) a forked child could not safely inherit.
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        # torch.broadcast_shapes imports sympy on first use (seconds): let the server pay for it once, too.
        context.set_forkserver_preload(["torch", "torch.distributed", "torch.fx.experimental.symbolic_shapes",
                                        __name__])
        return context
    return multiprocessing.get_context("spawn")


def spawn_ring(world_size: int, function, *args, timeout: float = 120.0) -> list:
    """Run ``function(rank, world_size, *args)`` on ``world_size`` fresh processes joined in a gloo group.

    Returns the list of what each rank returned, in rank order. ``function`` must be importable (defined at the
    top level of a module) and return tensors, numbers, strings, or lists and dicts of them. If the ranks have not
    all finished after ``timeout`` seconds, they are killed and ``TimeoutError`` is raised; an exception in a rank
    is raised again here.
    """
    world_size = _checks.positive_int("world_size", world_size)
    timeout = _checks.positive_float("timeout", timeout)
    context = _process_context()
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=_worker, args=(rank, world_size, port, timeout, function, args, results),
                                 daemon=True) for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=timeout)
    answers, errors, finished = {}, [], False
    try:
        while len(answers) + len(errors) < world_size:
            left = (deadline - datetime.datetime.now()).total_seconds()
            if left <= 0:
                raise TimeoutError(f"the ring of {world_size} processes did not finish within {timeout:g} s "
                                   f"(ranks done: {sorted(answers)}); they were stopped")
            try:
                rank, status, value = results.get(timeout=min(left, 1.0))
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in processes) and not errors:
                    dead = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0)]
                    raise RuntimeError(f"rank(s) {dead} of the ring died without reporting (exit codes "
                                       f"{[processes[r].exitcode for r in dead]})") from None
                continue
            if status == "ok":
                answers[rank] = torch.load(io.BytesIO(value), weights_only=True)
            else:
                errors.append((rank, value))
                break  # the other ranks may now wait forever on the failed one
        if errors:
            errors += _later_errors(results, processes, len(answers) + len(errors))
            rank, message = min(errors, key=lambda error: (_hears_of_a_peer(error[1]), error[0]))
            others = sorted(r for r, _ in errors if r != rank)
            also = f" (rank(s) {others} failed after it, losing their connection)" if others else ""
            raise RuntimeError(f"rank {rank} of the ring failed{also}:\n{message}")
        finished = True
        return [answers[rank] for rank in range(world_size)]
    finally:
        for process in processes:  # after a failure the others may wait forever on the failed rank: stop them
            process.join(timeout=2 if finished else 0)
            if process.is_alive():
                process.kill()
                process.join()


def _hears_of_a_peer(message: str) -> bool:
    """Whether a rank's traceback is gloo reporting that a peer went away, the echo of a failure elsewhere."""
    return "gloo" in message and ("Connection reset" in message or "Connection closed" in message)


def _later_errors(results, processes, reported: int, grace: float = 5.0) -> list:
    """The failures other ranks report within ``grace`` seconds of the first one.

    When one rank raises, its peers soon fail too, on a broken connection; which report arrives first is a race.
    Waiting a moment for theirs lets the caller name the rank that failed first on its own account.
    """
    errors, deadline = [], datetime.datetime.now() + datetime.timedelta(seconds=grace)
    while reported + len(errors) < len(processes):
        left = (deadline - datetime.datetime.now()).total_seconds()
        if left <= 0:
            break
        try:
            rank, status, value = results.get(timeout=min(left, 0.5))
        except queue.Empty:
            if all(p.exitcode is not None for p in processes):
                break  # everyone has gone and nothing more is on its way
            continue
        if status == "error":
            errors.append((rank, value))
    return errors


def _demo_rank(rank, world_size, n, d, causal, layout, seed, backward):
    """One rank of ``run_ring_demo``: build the same q, k, v everywhere, attend to its shard, return its results."""
    generator = torch.Generator().manual_seed(seed)
    # The whole q, k, v and output gradient, (n, d) each: the same on every rank.
    whole = [torch.randn(n, d, generator=generator, dtype=torch.float64) for _ in range(4)]
    q, k, v, grad = (shard_sequence(x, rank, world_size, layout) for x in whole)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    output = ring_attention(q, k, v, causal=causal, layout=layout)
    result = {"output": output.detach()}
    if backward:
        (output * grad).sum().backward()
        result.update(dq=q.grad, dk=k.grad, dv=v.grad)
    return result


def run_ring_demo(world_size: int, *, n: int = 64, d: int = 16, causal: bool = True, layout: str = "zigzag",
                  seed: int = 0, backward: bool = True, timeout: float = 120.0) -> dict:
    """Spawn ``world_size`` gloo ranks on 127.0.0.1, run ``ring_attention`` on a random sequence, gather the result.

    Every rank draws the same q, k, v (n, d) in float64 from ``seed`` and attends to its own shard. Returns the
    whole sequence's "q", "k", "v", the gathered "output" (n, d) and, with ``backward``, the gradients "dq", "dk",
    "dv" of sum(output * g) for a random g drawn after them (the ranks' shards put back together).
    """
    world_size = _checks.positive_int("world_size", world_size)
    n, d, seed = _checks.positive_int("n", n), _checks.positive_int("d", d), _checks.non_negative_int("seed", seed)
    causal, layout = _checks.flag("causal", causal), _layout(layout)
    backward = _checks.flag("backward", backward)
    if n % (world_size * chunks_per_rank(layout)):
        raise ValueError(f"n = {n} must divide into {world_size * chunks_per_rank(layout)} equal chunks for "
                         f"world_size = {world_size} and layout={layout!r}")
    per_rank = spawn_ring(world_size, _demo_rank, n, d, causal, layout, seed, backward, timeout=timeout)
    generator = torch.Generator().manual_seed(seed)
    q, k, v, grad = (torch.randn(n, d, generator=generator, dtype=torch.float64) for _ in range(4))
    result = {"q": q, "k": k, "v": v, "grad_output": grad}
    for name in per_rank[0]:
        result[name] = unshard_sequence([answer[name] for answer in per_rank], layout)
    return result
