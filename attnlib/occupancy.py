"""How a decoding step is cut into GPU programs, and how many of a GPU's multiprocessors they keep busy.

A GPU kernel runs as a grid of independent programs (thread blocks). The GPU hands them to its streaming
multiprocessors (SMs); an SM with no program to run does nothing for the whole launch. FlashAttention makes one
program per block of queries of each (batch, head) pair, which is plenty while a prompt of thousands of tokens is
processed. During decoding there is one new query per sequence, so a launch has only ``batch · n_heads`` programs:
one sequence with 32 heads makes 32 programs for the 132 SMs of an H100 SXM, and three quarters of the chip waits.

Split-KV decoding (Flash-Decoding) adds a grid axis along the keys: the ``n_k`` cached keys are cut into ``n_splits``
chunks and every chunk gets its own program, ``batch · n_heads · n_splits`` in all (``attnlib.numpy.split_kv``).
This module is that arithmetic, kept apart from any array library so the kernel, the NumPy reference and a chapter
can all use it:

* :func:`split_bounds` -- where the chunks start and end (the same cut the Triton decode kernel computes);
* :func:`decode_launch` -- programs, waves and idle SMs of one launch on a named GPU;
* :func:`splits_to_fill` -- the fewest splits that give every SM a program.

The SM counts are NVIDIA's: 132 SMs on the H100 SXM5 and 114 on the H100 PCIe (NVIDIA H100 Tensor Core GPU
Architecture whitepaper, 2022), 108 on the A100 (NVIDIA A100 Tensor Core GPU Architecture whitepaper, 2020).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from . import _checks

GPU_SM_COUNTS = {"H100 SXM": 132, "H100 PCIe": 114, "A100": 108}


def split_bounds(n_k: int, n_splits: int) -> list[tuple[int, int]]:
    """(start, end) of each of the ``n_splits`` chunks of ``n_k`` keys, in order; ``end`` is one past the last key.

    Chunk s starts at ``s * n_k // n_splits``, so the chunks differ in length by at most one key and none is
    empty; ``n_splits`` need not divide ``n_k``. ``n_splits`` must lie between 1 and ``n_k``.
    """
    n_k = _checks.positive_int("n_k", n_k)
    n_splits = _checks.positive_int("n_splits", n_splits)
    if n_splits > n_k:
        raise ValueError(
            f"n_splits must be at most n_k = {n_k}, the number of keys (every split needs at least one key), "
            f"got n_splits={n_splits}"
        )
    starts = [split * n_k // n_splits for split in range(n_splits + 1)]
    return list(zip(starts[:-1], starts[1:], strict=True))


def decode_programs(batch: int, n_heads: int, n_splits: int = 1) -> int:
    """Programs in one decoding launch: one per (sequence, head, chunk of keys), ``batch · n_heads · n_splits``."""
    batch = _checks.positive_int("batch", batch)
    n_heads = _checks.positive_int("n_heads", n_heads)
    n_splits = _checks.positive_int("n_splits", n_splits)
    return batch * n_heads * n_splits


def sm_count(gpu) -> int:
    """The number of streaming multiprocessors of ``gpu``: a name in ``GPU_SM_COUNTS`` or a count given directly."""
    if isinstance(gpu, numbers.Integral) and not isinstance(gpu, bool):
        return _checks.positive_int("gpu", gpu)
    if not isinstance(gpu, str) or gpu not in GPU_SM_COUNTS:
        raise ValueError(
            f"gpu must be one of {sorted(GPU_SM_COUNTS)} or a number of SMs, got {gpu!r}"
        )
    return GPU_SM_COUNTS[gpu]


@dataclass(frozen=True)
class DecodeLaunch:
    """The grid of one decoding launch against the SMs of one GPU.

    ``programs``: batch · n_heads · n_splits. ``sms``: the GPU's SM count. ``waves``: how many rounds of one
    program per SM the grid needs, ``ceil(programs / sms)``. ``idle_sms``: SMs without a program in the first
    round. ``sm_utilisation``: programs / (waves · sms), the share of SM-rounds that do work when every program
    takes as long as every other.

    The model is deliberately simple: an SM can hold several programs at once when registers and shared memory
    allow, and real programs differ in length. What it does capture is the first-order fact of decoding: an SM
    that gets no program contributes nothing.
    """

    programs: int
    sms: int

    @property
    def waves(self) -> int:
        """Rounds of one program per SM the grid needs."""
        return math.ceil(self.programs / self.sms)

    @property
    def idle_sms(self) -> int:
        """SMs that get no program in the first round (0 once the grid covers the GPU)."""
        return max(self.sms - self.programs, 0)

    @property
    def sm_utilisation(self) -> float:
        """programs / (waves · sms): the share of SM-rounds that do work."""
        return self.programs / (self.waves * self.sms)


def decode_launch(batch: int, n_heads: int, n_splits: int = 1, *, gpu="H100 SXM") -> DecodeLaunch:
    """The programs of a decoding launch on ``gpu`` (a name in ``GPU_SM_COUNTS`` or an SM count)."""
    return DecodeLaunch(programs=decode_programs(batch, n_heads, n_splits), sms=sm_count(gpu))


def splits_to_fill(batch: int, n_heads: int, n_k: int, *, gpu="H100 SXM") -> int:
    """The fewest splits of the keys that give every SM of ``gpu`` at least one program (never more than n_k).

    ``ceil(sms / (batch · n_heads))``: 1 when the batch and heads already fill the GPU, 5 for one sequence with
    32 heads on an H100 SXM (160 programs for 132 SMs).
    """
    programs = decode_programs(batch, n_heads)
    n_k = _checks.positive_int("n_k", n_k)
    return min(math.ceil(sm_count(gpu) / programs), n_k)
