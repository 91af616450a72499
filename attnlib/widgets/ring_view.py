"""Ring attention, step by step: P ranks, each holding a shard of the sequence, pass key/value shards around a ring.

Python runs ``attnlib.torch.distributed.simulate_ring`` -- the schedule of ``ring_attention``, computed by the same
code in one process -- on a small q, k, v and records, for every step and every rank, which key/value shard it
holds, which (query chunk, key chunk) pairs it computes or skips, that step's online-softmax state (m, l) of each of
its query rows, the state after merging, and how far its output still is from the final one. The browser steps
through it: the shards move one rank along the ring per step, and the merged state converges on the whole row's.
"""

from __future__ import annotations

import numpy as np
import torch
import traitlets

from .. import _checks
from ..torch import attention, distributed
from . import _validate
from ._base import Figure, esm, to_json_array

MAX_RANKS = 8  # ranks drawn around the ring and as cards
MAX_POSITIONS = 64  # positions of the whole sequence
MAX_DIM = 64


def _work(kind: str, chunk: int) -> int:
    """Score entries one pair costs: chunk² for a full pair, the visible triangle on the diagonal, 0 if skipped."""
    return {distributed.FULL: chunk * chunk, distributed.DIAGONAL: chunk * (chunk + 1) // 2}.get(kind, 0)


def record_ring(q, k, v, world_size: int, *, causal: bool, layout: str) -> dict:
    """Run the ring's schedule in one process on q, k, v (n, d) and return the figure's data (plain lists)."""
    q, k, v = (torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in (q, k, v))
    output, steps = distributed.simulate_ring(q, k, v, world_size, causal=causal, layout=layout)
    direct, _ = attention(q, k, v, causal=causal)
    per_rank = distributed.chunks_per_rank(layout)
    chunk = q.shape[-2] // (world_size * per_rank)
    final = {s.rank: s.output for s in steps if s.step == world_size - 1}
    recorded = []
    for step in range(world_size):
        ranks = []
        for s in steps[step * world_size:(step + 1) * world_size]:
            ranks.append({
                "source": s.source, "key_chunks": list(s.key_chunks),
                "pairs": [[q_chunk, k_chunk, kind] for q_chunk, k_chunk, kind in s.pairs],
                "work": sum(_work(kind, chunk) for _, _, kind in s.pairs),
                "m": to_json_array(s.m), "l": to_json_array(s.l), "running_m": to_json_array(s.running_m),
                "running_l": to_json_array(s.running_l),
                "output_gap": float((s.output - final[s.rank]).abs().max()),
            })
        recorded.append(ranks)
    return {"n": int(q.shape[-2]), "chunk": chunk,
            "holds": [list(distributed.rank_chunks(r, world_size, layout)) for r in range(world_size)],
            "steps": recorded, "max_abs_error": float((output - direct).abs().max())}


class RingView(Figure):
    """Ring attention over ``world_size`` ranks, one step at a time, computed from q, k, v (n, d).

    ``RingView(q, k, v, world_size=4, causal=True, layout="zigzag")``: n must cut into ``world_size`` chunks
    (contiguous) or 2 x ``world_size`` (zigzag); at most 8 ranks and 64 positions are drawn. ``world_size``,
    ``causal`` and ``shard_layout`` (the ``layout`` given) recompute when changed (in a live notebook); ``step`` is
    the ring step on screen.
    """

    _esm = esm("ring_view.js")
    _input_names = ("world_size", "causal", "shard_layout")

    world_size = traitlets.Int(2).tag(sync=True)
    causal = traitlets.Bool(True).tag(sync=True)
    # Not named "layout": ipywidgets' DOMWidget.layout is the widget's CSS layout model.
    shard_layout = traitlets.Unicode("zigzag").tag(sync=True)
    n = traitlets.Int(1).tag(sync=True)
    chunk = traitlets.Int(1).tag(sync=True)  # positions per chunk
    holds = traitlets.List().tag(sync=True)  # per rank, the chunks of the sequence it holds (its queries)
    steps = traitlets.List().tag(sync=True)  # per step, per rank: what it held, computed and merged
    max_abs_error = traitlets.Float(0.0).tag(sync=True)  # gathered ring output vs attention on the whole sequence
    step = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, q, k, v, *, world_size: int = 2, causal: bool = True, layout: str = "zigzag", step: int = 0,
                 title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._qkv = None  # no recompute while the constructor sets the inputs
        qkv = self._arrays(q, k, v)
        data = self._data(qkv, world_size, causal, layout)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.step, self.title = step, str(title)
        self._qkv = qkv

    @staticmethod
    def _arrays(q, k, v):
        def check_shape(name):
            def check(shape):
                if len(shape) != 2:
                    raise ValueError(f"{name} must have shape (n, d) (one sequence, one head), got {shape}")
                if shape[0] > MAX_POSITIONS or shape[1] > MAX_DIM:
                    raise ValueError(f"{name} has shape {shape}; the figure draws at most {MAX_POSITIONS} positions "
                                     f"of at most {MAX_DIM} features")
            return check

        q, k, v = (_validate.as_numpy(name, x, check_shape=check_shape(name)) for name, x in (("q", q), ("k", k),
                                                                                          ("v", v)))
        if q.shape != k.shape or k.shape[0] != v.shape[0]:
            raise ValueError(f"q, k and v must be one sequence: q and k of one shape (n, d), v (n, d_v), got q "
                             f"{q.shape}, k {k.shape}, v {v.shape}")
        return q, k, v

    @staticmethod
    def _data(qkv, world_size, causal, layout) -> dict:
        world_size = _validate.at_most("world_size", world_size, MAX_RANKS, why="ranks drawn around the ring")
        causal = _checks.flag("causal", causal)
        if not isinstance(layout, str) or layout not in distributed.LAYOUTS:
            raise ValueError(f"layout must be one of {distributed.LAYOUTS}, got {layout!r}")
        n_chunks = world_size * distributed.chunks_per_rank(layout)
        n = qkv[0].shape[0]
        if n % n_chunks:
            raise ValueError(f"n = {n} positions do not cut into {n_chunks} equal chunks (world_size = "
                             f"{world_size}, layout={layout!r})")
        data = record_ring(*qkv, world_size, causal=causal, layout=layout)
        return {**data, "world_size": world_size, "causal": causal, "shard_layout": layout}

    @classmethod
    def from_seed(cls, n: int = 16, d: int = 4, *, seed: int = 0, **options) -> RingView:
        """A random q, k, v (n, d) drawn from ``seed`` (standard normal, float64)."""
        n = _validate.at_most("n", n, MAX_POSITIONS, why="positions drawn")
        d = _validate.at_most("d", d, MAX_DIM, why="features per position")
        generator = np.random.default_rng(_validate.seed(seed))
        q, k, v = (generator.standard_normal((n, d)) for _ in range(3))
        return cls(q, k, v, **options)

    @traitlets.validate("step")
    def _check_step(self, proposal):
        return _validate.index("step", proposal["value"], max(1, len(self.steps)), what="ring steps")

    def _recompute(self):
        if self._qkv is None:
            return None
        data = self._data(self._qkv, self.world_size, self.causal, self.shard_layout)
        data["step"] = 0
        return data
