"""Serving many sequences at once: continuous batching over a paged KV cache, written once for both namespaces.

A server does not wait for a whole batch of sequences to finish before it starts the next. It schedules one decoding
step at a time (Orca's *iteration-level scheduling*, usually called continuous batching): at every step, requests
that have arrived join if the cache can hold them, every running sequence advances by one token, and a sequence
that is done leaves at once and gives its blocks back, so a waiting request can take them at the next step.

The paged cache is what makes this cheap: a joining sequence takes blocks from the free list, wherever they are, and
a leaving one returns them, with no copying and no per-sequence maximum reserved in one piece.

This loop is a teaching model, with two simplifications that change no token:

* admission is conservative: a request joins only when the blocks for its whole prompt and all its new tokens are
  free, counting what every running sequence may still take, so no sequence ever runs out of blocks half-way
  (real servers admit more eagerly and pre-empt a sequence when memory runs out);
* each running sequence is one model call per step (a whole prompt the step it joins, then one token). A production
  server packs all of them into one call over ragged lengths; the block tables already allow that.

Each sequence's tokens equal what ``model.generate`` gives it alone with the contiguous cache: greedy decoding, the
same keys and values, read back in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import _checks, _doors


@dataclass(frozen=True)
class Request:
    """One sequence to serve: its prompt (1-D token ids), how many tokens to generate, and the step it arrives at."""

    prompt_ids: object
    n_new: int
    arrival: int = 0


@dataclass
class ServingTrace:
    """What a serving run did, request by request and step by step.

    ``tokens[r]``: request r's prompt followed by its generated tokens. ``joined[r]`` / ``finished[r]``: the step
    it joined at (it may wait past its arrival for blocks) and the step its last token came out at.

    Per step, ``running`` lists the requests that advanced. The rest describe the cache after the step, once the
    sequences that finished in it have left: ``blocks_in_use``, ``utilisation`` (stored positions / the positions
    those blocks hold), ``stored_positions``, and ``reserved_positions``, what a cache that reserves each running
    sequence's whole length (prompt + n_new) up front, in one piece, would set aside for the same sequences.
    """

    tokens: list = field(default_factory=list)
    joined: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    running: list[list[int]] = field(default_factory=list)
    blocks_in_use: list[int] = field(default_factory=list)
    utilisation: list[float] = field(default_factory=list)
    stored_positions: list[int] = field(default_factory=list)
    reserved_positions: list[int] = field(default_factory=list)

    @property
    def n_steps(self) -> int:
        """Steps the run took, from step 0 to the step of the last token."""
        return len(self.running)


class _PagedLayer:
    """One layer's view of one sequence in a paged cache, shaped like a contiguous ``LayerCache`` for attention.

    The positions were reserved (for every layer) before the model call; ``_append`` writes this layer's keys and
    values there and returns every position of the sequence, read through its block table. ``position`` is the
    absolute position of the call's first new token, as a ``LayerCache`` reports it (RoPE turns by it).
    """

    def __init__(self, cache, seq: int, layer: int, start: int):
        self.cache, self.seq, self.layer, self.start = cache, seq, layer, start
        self.position = start

    def _append(self, k, v):
        # k, v: (1, n_kv_heads, n_new, d_head) for the one sequence of this call
        self.cache._write(self.seq, self.start, k[0], v[0], self.layer)
        keys, values = self.cache._gather(self.seq, self.layer)  # (n_kv_heads, length, d_head)
        return keys[None], values[None]  # (1, n_kv_heads, length, d_head)


def _blocks_for(request_positions: int, block_size: int) -> int:
    """Blocks that hold ``request_positions`` positions."""
    return math.ceil(request_positions / block_size)


def serve(model, requests, *, n_blocks: int, block_size: int, namespace):
    """Run ``requests`` through ``model`` with continuous batching over a paged cache; return a ServingTrace.

    ``namespace`` supplies what differs between NumPy and torch: ``as_array``, ``cache_class``, ``trace_class``,
    ``device`` (the
    cache's device argument), ``on_model`` (ids -> on the model's device), ``argmax_last`` (logits -> the next id
    as a 1-element array), ``concatenate`` and ``no_grad`` (a context manager).
    """
    n_blocks = _checks.positive_int("n_blocks", n_blocks)
    block_size = _checks.positive_int("block_size", block_size)
    if isinstance(requests, Request) or not hasattr(requests, "__len__"):
        raise TypeError(f"requests must be a list of Request, got {type(requests).__name__}")
    checked = []
    for index, request in enumerate(requests):
        if not isinstance(request, Request):
            raise TypeError(f"requests[{index}] must be a Request, got {type(request).__name__}")
        prompt = namespace.as_array(f"requests[{index}].prompt_ids", request.prompt_ids)
        if prompt.ndim != 1:
            raise ValueError(
                f"requests[{index}].prompt_ids must be one sequence (1-D), got shape {tuple(prompt.shape)}"
            )
        prompt, n_new = _doors.generate_call(model, prompt, request.n_new, as_array=namespace.as_array)
        prompt = namespace.on_model(model, prompt)
        arrival = _checks.non_negative_int(f"requests[{index}].arrival", request.arrival)
        needed = _blocks_for(prompt.shape[-1] + n_new, block_size) if n_new else 0  # n_new = 0: nothing to run
        if needed > n_blocks:
            raise ValueError(
                f"requests[{index}] needs {needed} blocks of {block_size} positions for its {prompt.shape[-1]} prompt "
                f"tokens and {n_new} new ones, but the cache has {n_blocks}: it could never run"
            )
        checked.append((prompt, n_new, arrival, needed))

    attention = model.blocks[0].attention
    cache = namespace.cache_class(
        n_blocks, getattr(attention, "n_kv_heads", attention.n_heads), attention.d_head, block_size=block_size,
        n_layers=model.n_layers, dtype=model.dtype, **namespace.device(model),
    )
    trace = namespace.trace_class(tokens=[prompt for prompt, *_ in checked], joined=[-1] * len(checked),
                         finished=[-1] * len(checked))
    # First come, first served: a request never overtakes one that arrived before it, even a smaller one.
    waiting = sorted(range(len(checked)), key=lambda r: (checked[r][2], r))
    running: dict[int, int] = {}  # request -> its sequence in the cache
    promised = 0  # blocks the running sequences may take in all: admission never lets them run out
    step = 0
    with namespace.no_grad():
        while waiting or running:
            # 1. Admit: arrived requests, in order, while the blocks for their whole length can be promised.
            while waiting and checked[waiting[0]][2] <= step and promised + checked[waiting[0]][3] <= n_blocks:
                request = waiting.pop(0)
                promised += checked[request][3]
                trace.joined[request] = step
                if checked[request][1] == 0:  # nothing to generate: done on arrival, no block taken
                    trace.finished[request] = step
                    continue
                running[request] = cache.add_sequence()
            # 2. Every running sequence advances one token (its whole prompt on the step it joins).
            advanced = list(running)
            for request in advanced:
                seq, tokens = running[request], trace.tokens[request]
                fed = tokens if cache.length(seq) == 0 else tokens[-1:]  # prompt, or the last token generated
                logits = _step(model, cache, seq, fed)
                trace.tokens[request] = namespace.concatenate(tokens, namespace.argmax_last(logits))
                # 3. Done: leave now and give the blocks back for the next step's admissions.
                if trace.tokens[request].shape[-1] == checked[request][0].shape[-1] + checked[request][1]:
                    trace.finished[request] = step
                    cache.free(running.pop(request))
                    promised -= checked[request][3]
            trace.running.append(advanced)
            trace.blocks_in_use.append(n_blocks - cache.n_free_blocks)
            trace.utilisation.append(cache.utilisation)
            trace.stored_positions.append(cache.stored_positions)
            trace.reserved_positions.append(sum(checked[r][0].shape[-1] + checked[r][1] for r in running))
            step += 1
    return trace


def _step(model, cache, seq: int, ids):
    """One model call for one sequence: reserve its new positions, run every layer through the paged cache.

    All or nothing, as a contiguous-cache call is: if the model fails part-way the reservation is undone.
    """
    snapshot = cache.snapshot()
    try:
        start = cache._reserve(seq, ids.shape[-1])
        layers = [_PagedLayer(cache, seq, layer, start) for layer in range(model.n_layers)]
        logits = model._forward(ids[None], start, True, None, None, layers)  # (1, n, vocab_size)
        return _checks.finite_result("logits", logits, producer="TransformerLM")
    except BaseException:
        cache.restore(snapshot)
        raise
