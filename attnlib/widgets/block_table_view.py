"""Serving many sequences over a paged KV cache, step by step: block tables, the pool, blocks freed and reused.

Python takes a real ``ServingTrace`` (from ``attnlib.numpy.serve`` or ``attnlib.torch.serve``) and replays its
schedule on an ``attnlib.numpy.PagedKVCache`` of the same size: at every step, each running sequence stores its new
positions (its whole prompt on the step it joins, then one token) and a sequence that finishes frees its blocks at
once, in the order the serving loop ran them. The replay's stored positions, blocks in use and utilisation must equal
the trace's at every step, or the figure is refused. The browser steps through the run: each running sequence's
block table (logical block -> physical block), the pool coloured by the sequence that owns each block, the blocks
taken, freed and reused in this step, and the utilisation beside it.
"""

from __future__ import annotations

import numbers

import numpy as np
import traitlets

from .. import _checks
from ._base import Figure, esm

MAX_BLOCKS = 96  # physical blocks drawn in the pool
MAX_STEPS = 400  # steps one slider walks through
MAX_REQUESTS = 24  # sequences with a colour and a row of their own
STEP_KEYS = ("running", "tables", "lengths", "finished", "owner", "taken", "freed", "reused", "stored",
             "reserved", "utilisation")


def replay(trace, *, n_blocks: int, block_size: int) -> list[dict]:
    """Each step of ``trace`` as the figure draws it, replayed on a real paged cache (see the module docstring).

    Per step: ``running`` (requests that advanced, in order), ``tables`` (each one's block table after it stored
    this step's positions), ``lengths`` (its stored positions then), ``finished`` (those that left), ``owner``
    (for each physical block after the step, the request holding it or -1), ``taken`` / ``freed`` (blocks
    allocated / given back in the step), ``reused`` (taken blocks that an earlier request had held), ``stored``,
    ``reserved`` and ``utilisation`` (after the step, as in the trace).
    """
    from ..numpy.paged_cache import PagedKVCache  # the figure draws numbers only; a torch run is replayed the same

    n_blocks = _checks.positive_int("n_blocks", n_blocks)
    block_size = _checks.positive_int("block_size", block_size)
    fields = ("tokens", "joined", "finished", "running", "blocks_in_use", "utilisation", "stored_positions",
              "reserved_positions")
    missing = [name for name in fields if not hasattr(trace, name)]
    if missing:
        raise TypeError(f"trace must be a ServingTrace (from serve), got {type(trace).__name__} without {missing}")
    n_requests, n_steps = len(trace.tokens), len(trace.running)
    if n_requests > MAX_REQUESTS:
        raise ValueError(f"trace has {n_requests} requests; the figure colours at most {MAX_REQUESTS}")
    if n_steps > MAX_STEPS:
        raise ValueError(f"trace has {n_steps} steps; the figure walks through at most {MAX_STEPS}")
    if n_blocks > MAX_BLOCKS:
        raise ValueError(f"n_blocks = {n_blocks}; the figure draws a pool of at most {MAX_BLOCKS} blocks")
    cache = PagedKVCache(n_blocks, 1, 1, block_size=block_size, n_layers=1)
    sequence: dict[int, int] = {}
    ever_held: set[int] = set()
    steps = []
    for step, running in enumerate(trace.running):
        taken, reused, freed, finished, tables, lengths = [], [], [], [], [], []
        for request in running:
            if request not in sequence:  # its first step: the whole prompt
                sequence[request] = cache.add_sequence()
                new = len(trace.tokens[request]) - (trace.finished[request] - trace.joined[request] + 1)
            else:
                new = 1
            old_table = set(cache.block_table(sequence[request]))
            cache.append(sequence[request], np.zeros((1, 1, new, 1)), np.zeros((1, 1, new, 1)))
            table = list(cache.block_table(sequence[request]))
            new_blocks = [block for block in table if block not in old_table]
            reused += [block for block in new_blocks if block in ever_held]  # held before by a finished request
            ever_held.update(new_blocks)
            taken += new_blocks
            tables.append(table)
            lengths.append(cache.length(sequence[request]))
            if trace.finished[request] == step:  # done: its blocks go back at once, for the next in line
                finished.append(request)
                freed += table
                cache.free(sequence.pop(request))
        owner = _owners(cache, sequence, n_blocks)
        record = {"running": list(running), "tables": tables, "lengths": lengths, "finished": finished,
                  "owner": owner, "taken": taken, "freed": freed, "reused": sorted(set(reused)),
                  "stored": cache.stored_positions, "reserved": int(trace.reserved_positions[step]),
                  "utilisation": float(cache.utilisation)}
        expected = (trace.stored_positions[step], trace.blocks_in_use[step], float(trace.utilisation[step]))
        if (record["stored"], n_blocks - cache.n_free_blocks, record["utilisation"]) != expected:
            raise ValueError(f"trace step {step} does not match a paged cache of {n_blocks} blocks of {block_size}: "
                             f"the replay stores {record['stored']} positions in {n_blocks - cache.n_free_blocks} "
                             f"blocks, the trace says {expected[0]} in {expected[1]} (pass the serve call's n_blocks "
                             "and block_size)")
        steps.append(record)
    return steps


def _owners(cache, sequence: dict[int, int], n_blocks: int) -> list[int]:
    owner = [-1] * n_blocks
    for request, seq in sequence.items():
        for block in cache.block_table(seq):
            owner[block] = request
    return owner


def _int_list(name: str, values, *, low: int, high: int) -> list[int]:
    """A list of integers in [low, high)."""
    if isinstance(values, str | bytes) or not isinstance(values, list | tuple):
        raise TypeError(f"{name} must be a list of integers, got {type(values).__name__}")
    checked = []
    for index, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}[{index}] must be an integer, got {value!r}")
        if not low <= value < high:
            raise ValueError(f"{name}[{index}] must be in [{low}, {high}), got {value}")
        checked.append(int(value))
    return checked


def _check_steps(steps, n_blocks: int, block_size: int, n_requests: int) -> list[dict]:
    """``steps`` as ``replay`` returns them, consistent with a pool of n_blocks blocks of block_size positions."""
    if isinstance(steps, str | bytes) or not isinstance(steps, list | tuple) or not steps:
        raise ValueError(f"steps must be a non-empty list of dicts (as replay returns), got {steps!r:.80}")
    if len(steps) > MAX_STEPS:
        raise ValueError(f"steps has {len(steps)} entries; the figure walks through at most {MAX_STEPS}")
    checked = []
    for s, step in enumerate(steps):
        if not isinstance(step, dict) or set(step) != set(STEP_KEYS):
            raise ValueError(f"steps[{s}] must be a dict with the keys {list(STEP_KEYS)}, got {step!r:.120}")
        running = _int_list(f"steps[{s}]['running']", step["running"], low=0, high=n_requests)
        owner = _int_list(f"steps[{s}]['owner']", step["owner"], low=-1, high=n_requests)
        if len(owner) != n_blocks:
            raise ValueError(f"steps[{s}]['owner'] must hold one entry per physical block ({n_blocks}), got "
                             f"{len(owner)}")
        tables, lengths = step["tables"], step["lengths"]
        if not isinstance(tables, list | tuple) or len(tables) != len(running):
            raise ValueError(f"steps[{s}]['tables'] must hold one block table per running request "
                             f"({len(running)}), got {tables!r:.80}")
        lengths = _int_list(f"steps[{s}]['lengths']", lengths, low=1, high=n_blocks * block_size + 1)
        if len(lengths) != len(running):
            raise ValueError(f"steps[{s}]['lengths'] must hold one length per running request ({len(running)})")
        finished = _int_list(f"steps[{s}]['finished']", step["finished"], low=0, high=n_requests)
        checked_tables = []
        for i, (request, table, length) in enumerate(zip(running, tables, lengths, strict=True)):
            table = _int_list(f"steps[{s}]['tables'][{i}]", table, low=0, high=n_blocks)
            if len(table) != -(-length // block_size):
                raise ValueError(f"steps[{s}]['tables'][{i}] has {len(table)} blocks for {length} positions of "
                                 f"{block_size} per block: it needs {-(-length // block_size)}")
            if request not in finished and any(owner[block] != request for block in table):
                raise ValueError(f"steps[{s}]: request {request}'s blocks {table} are not all owned by it in "
                                 f"owner {owner}")
            checked_tables.append(table)
        taken = _int_list(f"steps[{s}]['taken']", step["taken"], low=0, high=n_blocks)
        freed = _int_list(f"steps[{s}]['freed']", step["freed"], low=0, high=n_blocks)
        reused = _int_list(f"steps[{s}]['reused']", step["reused"], low=0, high=n_blocks)
        if not set(reused) <= set(taken):
            raise ValueError(f"steps[{s}]['reused'] {reused} must be blocks taken in that step {taken}")
        stored = _checks.non_negative_int(f"steps[{s}]['stored']", step["stored"])
        reserved = _checks.non_negative_int(f"steps[{s}]['reserved']", step["reserved"])
        in_use = sum(block != -1 for block in owner)
        utilisation = step["utilisation"]
        if isinstance(utilisation, bool) or not isinstance(utilisation, numbers.Real):
            raise TypeError(f"steps[{s}]['utilisation'] must be a number, got {utilisation!r}")
        expected = 1.0 if in_use == 0 else stored / (in_use * block_size)
        if abs(utilisation - expected) > 1e-9:
            raise ValueError(f"steps[{s}]['utilisation'] = {utilisation} but {stored} stored positions in {in_use} "
                             f"blocks of {block_size} make {expected}")
        checked.append({"running": running, "tables": checked_tables, "lengths": lengths, "finished": finished,
                        "owner": owner, "taken": taken, "freed": freed, "reused": reused, "stored": stored,
                        "reserved": reserved, "utilisation": float(utilisation)})
    return checked


class BlockTableView(Figure):
    """Continuous batching over a paged KV cache, one step at a time.

    ``BlockTableView.from_trace(trace, n_blocks=..., block_size=...)`` replays a ``ServingTrace`` (``serve``'s
    result, with the pool size it ran with); the plain-data form ``BlockTableView(steps, n_blocks=...,
    block_size=..., n_requests=...)`` takes ``steps`` as :func:`replay` returns them and checks them.
    """

    _esm = esm("block_table_view.js")

    steps = traitlets.List().tag(sync=True)  # one dict per serving step (see replay)
    n_blocks = traitlets.Int(1).tag(sync=True)
    block_size = traitlets.Int(1).tag(sync=True)
    n_requests = traitlets.Int(1).tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)  # the serving step on screen
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, steps, *, n_blocks: int, block_size: int, n_requests: int, step: int = 0, title: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        n_blocks = _checks.positive_int("n_blocks", n_blocks)
        if n_blocks > MAX_BLOCKS:
            raise ValueError(f"n_blocks = {n_blocks}; the figure draws a pool of at most {MAX_BLOCKS} blocks")
        block_size = _checks.positive_int("block_size", block_size)
        n_requests = _checks.positive_int("n_requests", n_requests)
        if n_requests > MAX_REQUESTS:
            raise ValueError(f"n_requests = {n_requests}; the figure colours at most {MAX_REQUESTS} requests")
        checked = _check_steps(steps, n_blocks, block_size, n_requests)
        with self.hold_sync():
            self.n_blocks, self.block_size, self.n_requests = n_blocks, block_size, n_requests
            self.steps = checked
            self.step, self.title = step, str(title)

    @traitlets.validate("step")
    def _check_step(self, proposal):
        from . import _validate

        return _validate.index("step", proposal["value"], max(len(self.steps), 1), what="steps")

    @classmethod
    def from_trace(cls, trace, *, n_blocks: int, block_size: int, **options) -> BlockTableView:
        """The figure of a real serving run: ``trace`` from ``serve(model, requests, n_blocks=..., block_size=...)``
        with the same ``n_blocks`` and ``block_size``."""
        steps = replay(trace, n_blocks=n_blocks, block_size=block_size)
        return cls(steps, n_blocks=n_blocks, block_size=block_size, n_requests=len(trace.tokens), **options)
