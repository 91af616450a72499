"""How many bytes standard attention and FlashAttention move between slow and fast memory.

A GPU has a large, slow memory (HBM, tens of GB at ~2 TB/s) and a small, fast on-chip memory (SRAM, ~100-200 KB
per streaming multiprocessor at ~20 TB/s). Standard attention writes n x n matrices to HBM and reads them back in
passes that do little arithmetic per byte, so for it the bytes moved predict the running time well (Dao et al.
2022, Fig. 2). For FlashAttention they do not: FlashAttention-2 and -3 have the IO complexity of FlashAttention-1,
Theta(N^2 d^2 / M), yet run about 2x and then another 1.5-2x faster, through better work partitioning (Dao 2023)
and asynchrony (Shah et al. 2024, whose abstract puts FlashAttention-2 at 35% utilisation of an H100). Once the
n x n matrices stay on chip, arithmetic and scheduling set the time, and these counts say how much traffic is
left, not how fast a kernel runs. This module counts the bytes by walking each algorithm's steps and loops --
every "load" and "write" of the algorithm adds the size of the block it moves -- rather than by evaluating a
closed formula, so ragged last blocks and loop counts come out exactly.

The algorithms:

* standard attention: Algorithm 0 (forward) and Algorithm 3 (backward) of Dao et al. 2022, "FlashAttention:
  Fast and Memory-Efficient Exact Attention with IO-Awareness", optionally with the dropout pass that real
  training code runs as a separate kernel (``standard_attention_traffic``);
* FlashAttention-1: Algorithm 1 (forward) and Algorithm 4 (backward) of the same paper, key/value blocks in the
  outer loop, with the paper's block sizes ``B_c = ceil(M / 4d)`` and ``B_r = min(B_c, d)`` for an on-chip
  memory of M elements (``flash_attention_traffic``). This is the algorithm whose traffic the paper measured;
* FlashAttention-2: Algorithm 1 (forward, query blocks in the outer loop) and Algorithm 2 (backward) of Dao 2023,
  "FlashAttention-2: Faster Attention with Better Parallelism and Work Partitioning"
  (``flash2_attention_traffic``). That paper tunes its block sizes rather than deriving them from M; by default
  this model gives the block held through the inner loop the large size ``ceil(M / 4d)``, as FlashAttention-1 does.

Assumptions, stated once (each function repeats the ones it uses):

1. Every (batch, head) pair runs the same loops on its own, so one pair is counted and multiplied.
2. A matrix product reads each operand once and writes its result once (the paper's accounting: the operand
   re-reads of a real GEMM are served from on-chip caches).
3. Every element costs ``bytes_per_element`` (2 for float16), including FlashAttention's row statistics
   (``l`` and ``m``; FlashAttention-2's ``L`` and ``D``); a dropout keep-mask costs 1 byte per element (a bool
   tensor).
4. FlashAttention's dropout mask is regenerated from the random seed, so it costs no traffic.
5. "Initialize ... in HBM" steps of the algorithms are writes and are counted.
6. Apart from assumption 2, nothing is served from a cache between HBM and the on-chip memory (a GPU's L2):
   every load the algorithm lists reaches HBM, counted as the algorithm lists it, even one it does not need.
   On a real GPU, programs that read the same K and V blocks at the same time are partly served by L2, so the
   re-reads here are an upper bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import _checks

A100_SRAM_BYTES = 192 * 1024  # on-chip memory (shared memory + L1) of one A100 streaming multiprocessor
GPT2_MEDIUM = {"batch": 64, "heads": 16, "n": 1024, "d": 64}  # the attention shape of the paper's Fig. 2
PAPER_FIG2_GB = {"standard": 40.3, "flash": 4.4}  # HBM reads + writes, forward + backward, GPT-2 medium, A100
MASK_BYTES_PER_ELEMENT = 1  # a dropout keep-mask stored as bool
MAX_TILES = 2**20  # (query block, key block) pairs walked one by one: about a second of Python


@dataclass
class Traffic:
    """Bytes read from and written to slow memory, in total and per named step (in the order first seen)."""

    reads: int = 0
    writes: int = 0
    steps: dict[str, list[int]] = field(default_factory=dict)  # step name -> [bytes read, bytes written]

    def read(self, step: str, n_bytes: int) -> None:
        self.reads += n_bytes
        self.steps.setdefault(step, [0, 0])[0] += n_bytes

    def write(self, step: str, n_bytes: int) -> None:
        self.writes += n_bytes
        self.steps.setdefault(step, [0, 0])[1] += n_bytes

    @property
    def total(self) -> int:
        return self.reads + self.writes

    @property
    def gigabytes(self) -> float:
        """Reads + writes in GB (10^9 bytes, as the paper reports them)."""
        return self.total / 1e9

    def scaled(self, factor: int) -> Traffic:
        """The traffic of ``factor`` identical copies (e.g. every (batch, head) pair)."""
        factor = _checks.positive_int("factor", factor)
        steps = {name: [r * factor, w * factor] for name, (r, w) in self.steps.items()}
        return Traffic(self.reads * factor, self.writes * factor, steps)

    def __add__(self, other: Traffic) -> Traffic:
        if not isinstance(other, Traffic):
            return NotImplemented
        result = Traffic(self.reads, self.writes, {name: list(rw) for name, rw in self.steps.items()})
        for name, (r, w) in other.steps.items():
            result.read(name, r)
            result.write(name, w)
        return result


def _blocks(n: int, block: int):
    """(start, end) of consecutive blocks of ``block`` rows; the last block may be shorter."""
    return [(start, min(start + block, n)) for start in range(0, n, block)]


def _shape_args(batch, heads, n, d, bytes_per_element):
    return (
        _checks.positive_int("batch", batch),
        _checks.positive_int("heads", heads),
        _checks.positive_int("n", n),
        _checks.positive_int("d", d),
        _checks.positive_int("bytes_per_element", bytes_per_element),
    )


def _on_chip_elements(block_r: int, block_c: int, d: int) -> int:
    """Elements FlashAttention holds on chip at once: Q_i and O_i (B_r x d each), K_j and V_j (B_c x d each) and
    the score tile S_ij (B_r x B_c)."""
    return 2 * d * (block_r + block_c) + block_r * block_c


def _fits(block_r: int, block_c: int, d: int, sram_bytes: int, bytes_per_element: int, *, what: str) -> None:
    need, have = _on_chip_elements(block_r, block_c, d), sram_bytes // bytes_per_element
    if need > have:
        raise ValueError(
            f"{what} (B_r, B_c) = ({block_r}, {block_c}) with d = {d} need {need} elements on chip (Q_i, O_i: B_r x d "
            f"each; K_j, V_j: B_c x d each; S_ij: B_r x B_c), but sram_bytes = {sram_bytes} holds only {have} "
            f"elements of bytes_per_element = {bytes_per_element}"
        )


def _flash_blocks(n: int, d: int, e: int, sram_bytes, block_sizes) -> tuple[int, int]:
    """(B_r, B_c) for flash_attention_traffic, every argument checked before any loop runs: the blocks given
    (or the paper's for this SRAM) must fit on chip, and the tiles to walk must be at most ``MAX_TILES``."""
    sram_bytes = _checks.positive_int("sram_bytes", sram_bytes)
    if block_sizes is None:
        _fits(1, 1, d, sram_bytes, e, what="even the smallest blocks")
        block_r, block_c = paper_block_sizes(d, sram_bytes // e)
    else:
        if not isinstance(block_sizes, tuple | list) or len(block_sizes) != 2:
            raise ValueError(f"block_sizes must be a pair (B_r, B_c), got {block_sizes!r:.60}")
        block_r = _checks.positive_int("block_sizes[0] (B_r)", block_sizes[0])
        block_c = _checks.positive_int("block_sizes[1] (B_c)", block_sizes[1])
        _fits(block_r, block_c, d, sram_bytes, e, what="block_sizes")
    tiles = math.ceil(n / block_r) * math.ceil(n / block_c)
    if tiles > MAX_TILES:
        raise ValueError(f"n = {n} with blocks (B_r, B_c) = ({block_r}, {block_c}) makes {tiles} tiles; this model "
                         f"walks each one, at most {MAX_TILES}: use larger blocks or a shorter sequence")
    return block_r, block_c


def paper_block_sizes(d: int, sram_elements: int) -> tuple[int, int]:
    """FlashAttention's Algorithm 1 block sizes (B_r, B_c) for an on-chip memory of M = ``sram_elements``.

    B_c = ceil(M / 4d) so that the K and V blocks (B_c x d each) and the Q and O blocks (B_r x d each, with
    B_r <= B_c) fit in M together; B_r = min(B_c, d) keeps the B_r x B_c score tile within M too.
    """
    d = _checks.positive_int("d", d)
    sram_elements = _checks.positive_int("sram_elements", sram_elements)
    block_c = math.ceil(sram_elements / (4 * d))
    return min(block_c, d), block_c


def standard_attention_traffic(
    batch: int, heads: int, n: int, d: int, *, bytes_per_element: int = 2, backward: bool = True, dropout: bool = False
) -> Traffic:
    """HBM traffic of standard attention, which writes S and P (n x n) to HBM and reads them back.

    Forward, Algorithm 0: S = Q K^T (read Q, K; write S); P = softmax(S) (read S; write P); O = P V (read P, V;
    write O). Backward, Algorithm 3: dV = P^T dO; dP = dO V^T; dS = P * (dP - rowsum(P * dP)) (read P, dP;
    write dS); dQ = dS K; dK = dS^T Q. With ``dropout`` (GPT-2 trains with attention dropout), a separate
    kernel reads P and writes the dropped-out P plus a 1-byte keep-mask, O = P_dropped V reads that instead,
    and the backward pass has a matching kernel turning dP_dropped into dP. Scaling and causal masking are
    assumed fused into the softmax kernel, as in optimised training code, so they add no pass of their own (an
    unfused implementation runs each as one more read and write of the n x n matrix, forward and backward).
    Assumptions 1-3 of the module docstring apply.
    """
    batch, heads, n, d, e = _shape_args(batch, heads, n, d, bytes_per_element)
    backward, dropout = _checks.flag("backward", backward), _checks.flag("dropout", dropout)
    square, thin, mask = n * n * e, n * d * e, n * n * MASK_BYTES_PER_ELEMENT  # one n x n, one n x d, the mask
    t = Traffic()

    def kernel(step: str, reads: list[int], writes: list[int]) -> None:
        """One pass of standard attention: it streams its inputs from HBM and its outputs back to HBM."""
        for n_bytes in reads:
            t.read(step, n_bytes)
        for n_bytes in writes:
            t.write(step, n_bytes)

    kernel("S = Q K^T", reads=[thin, thin], writes=[square])
    kernel("P = softmax(S)", reads=[square], writes=[square])
    if dropout:
        kernel("P = dropout(P)", reads=[square], writes=[square, mask])
    kernel("O = P V", reads=[square, thin], writes=[thin])
    if backward:
        kernel("dV = P^T dO", reads=[square, thin], writes=[thin])
        kernel("dP = dO V^T", reads=[thin, thin], writes=[square])
        if dropout:
            kernel("dP = dropout backward", reads=[square, mask], writes=[square])
        kernel("dS = P * (dP - rowsum(P * dP))", reads=[square, square], writes=[square])
        kernel("dQ = dS K", reads=[square, thin], writes=[thin])
        kernel("dK = dS^T Q", reads=[square, thin], writes=[thin])
    return t.scaled(batch * heads)


def flash_attention_traffic(
    batch: int,
    heads: int,
    n: int,
    d: int,
    *,
    sram_bytes: int = A100_SRAM_BYTES,
    bytes_per_element: int = 2,
    backward: bool = True,
    block_sizes: tuple[int, int] | None = None,
) -> Traffic:
    """HBM traffic of FlashAttention-1 (Algorithms 1 and 4 of Dao et al. 2022), loop by loop.

    Block sizes (B_r, B_c) come from the on-chip memory, M = sram_bytes / bytes_per_element elements, as
    ``paper_block_sizes`` (or pass ``block_sizes`` explicitly). Forward: initialise O, l, m in HBM; for each
    key/value block j (outer loop) load K_j, V_j; for each query block i (inner loop) load Q_i, O_i, l_i, m_i
    and write O_i, l_i, m_i back. Backward: initialise dQ, dK, dV; for each j load K_j, V_j; for each i load
    Q_i, O_i, dO_i, dQ_i, l_i, m_i and write dQ_i; after the inner loop write dK_j, dV_j. The S and P tiles live
    only on chip. Keys and values sit in the outer loop, so Q, O, l and m are re-read, and O, l and m re-written,
    once per key block; ``flash2_attention_traffic`` counts FlashAttention-2's order, with the queries outside.
    Assumptions 1, 3, 4, 5 and 6 of the module docstring apply.

    Explicit ``block_sizes`` must fit in the SRAM (Q_i, O_i, K_j, V_j and the score tile S_ij together; the
    paper's own sizes are taken as they are), and the loops walk at most ``MAX_TILES`` tiles.
    """
    batch, heads, n, d, e = _shape_args(batch, heads, n, d, bytes_per_element)
    backward = _checks.flag("backward", backward)
    block_r, block_c = _flash_blocks(n, d, e, sram_bytes, block_sizes)
    row_blocks, col_blocks = _blocks(n, block_r), _blocks(n, block_c)
    t = Traffic()

    # The inner loops add up their bytes locally and book them once per outer iteration (same totals, less Python).
    t.write("initialise O, l, m", (n * d + 2 * n) * e)
    for k_start, k_end in col_blocks:
        cols = k_end - k_start
        t.read("load K_j, V_j", 2 * cols * d * e)
        loaded = written = 0
        for q_start, q_end in row_blocks:
            rows = q_end - q_start
            loaded += (2 * rows * d + 2 * rows) * e  # load Q_i, O_i, l_i, m_i
            written += (rows * d + 2 * rows) * e  # write O_i, l_i, m_i
        t.read("load Q_i, O_i, l_i, m_i", loaded)
        t.write("write O_i, l_i, m_i", written)

    if backward:
        t.write("initialise dQ, dK, dV", 3 * n * d * e)
        for k_start, k_end in col_blocks:
            cols = k_end - k_start
            t.read("load K_j, V_j (backward)", 2 * cols * d * e)
            loaded = written = 0
            for q_start, q_end in row_blocks:
                rows = q_end - q_start
                loaded += (4 * rows * d + 2 * rows) * e  # load Q_i, O_i, dO_i, dQ_i, l_i, m_i
                written += rows * d * e  # write dQ_i
            t.read("load Q_i, O_i, dO_i, dQ_i, l_i, m_i", loaded)
            t.write("write dQ_i", written)
            t.write("write dK_j, dV_j", 2 * cols * d * e)
    return t.scaled(batch * heads)


def flash2_attention_traffic(
    batch: int,
    heads: int,
    n: int,
    d: int,
    *,
    sram_bytes: int = A100_SRAM_BYTES,
    bytes_per_element: int = 2,
    backward: bool = True,
    block_sizes: tuple[int, int] | None = None,
) -> Traffic:
    """HBM traffic of FlashAttention-2 (Algorithms 1 and 2 of Dao 2023), loop by loop.

    Forward: for each query block i (outer loop) load Q_i; m, l and the output accumulate on chip while, for each
    key/value block j (inner loop), K_j and V_j are loaded; then write O_i and the logsumexp L_i = m + log l once.
    Backward: initialise dQ in HBM; D = rowsum(dO * O) reads dO and O and writes D; for each key/value block j
    (outer loop) load K_j, V_j; for each query block i load Q_i, O_i, dO_i, dQ_i, L_i, D_i and write dQ_i back;
    after the inner loop write dK_j, dV_j. So the forward re-reads K and V once per query block, where
    FlashAttention-1 re-reads Q and O once per key block; the backward keeps FlashAttention-1's order.

    Block sizes: ``block_sizes`` = (B_r, B_c) is used for both passes. By default the block that stays on chip
    through the inner loop gets the large size ceil(M / 4d) and the streamed one min(ceil(M / 4d), d), as in
    FlashAttention-1 (``paper_block_sizes``): forward (B_r, B_c) = (ceil(M / 4d), min(ceil(M / 4d), d)),
    backward the other way round. Assumptions 1, 3, 4, 5 and 6 of the module docstring apply.
    """
    batch, heads, n, d, e = _shape_args(batch, heads, n, d, bytes_per_element)
    backward = _checks.flag("backward", backward)
    block_r, block_c = _flash_blocks(n, d, e, sram_bytes, block_sizes)  # FlashAttention-1's sizes by default
    # The forward holds a query block through its inner loop: by default it gets the large size.
    forward_r, forward_c = (block_c, block_r) if block_sizes is None else (block_r, block_c)
    t = Traffic()

    # The inner loops add up their bytes locally and book them once per outer iteration (same totals, less Python).
    forward_cols = _blocks(n, forward_c)
    for q_start, q_end in _blocks(n, forward_r):
        rows = q_end - q_start
        t.read("load Q_i", rows * d * e)
        loaded = 0
        for k_start, k_end in forward_cols:
            loaded += 2 * (k_end - k_start) * d * e  # load K_j, V_j
        t.read("load K_j, V_j", loaded)
        t.write("write O_i, L_i", (rows * d + rows) * e)

    if backward:
        t.write("initialise dQ", n * d * e)
        t.read("D = rowsum(dO * O)", 2 * n * d * e)
        t.write("D = rowsum(dO * O)", n * e)
        backward_rows = _blocks(n, block_r)
        for k_start, k_end in _blocks(n, block_c):
            cols = k_end - k_start
            t.read("load K_j, V_j (backward)", 2 * cols * d * e)
            loaded = written = 0
            for q_start, q_end in backward_rows:
                rows = q_end - q_start
                loaded += (4 * rows * d + 2 * rows) * e  # load Q_i, O_i, dO_i, dQ_i, L_i, D_i
                written += rows * d * e  # write dQ_i
            t.read("load Q_i, O_i, dO_i, dQ_i, L_i, D_i", loaded)
            t.write("write dQ_i", written)
            t.write("write dK_j, dV_j", 2 * cols * d * e)
    return t.scaled(batch * heads)


def gpt2_medium_comparison(*, sram_bytes: int = A100_SRAM_BYTES, dropout: bool = True) -> dict:
    """The paper's Fig. 2 case (GPT-2 medium attention, forward + backward, float16, A100) under this model.

    The flash count is FlashAttention-1's (``flash_attention_traffic``), the algorithm the paper measured.
    Returns the modelled gigabytes of both algorithms, their ratio, the paper's measured numbers and ratio,
    and the block sizes used. GPT-2 trains with attention dropout, which a standard implementation runs as a
    pass of its own, hence ``dropout=True`` by default for the standard algorithm (``False``: bare Algorithm 0).
    """
    sram_bytes, dropout = _checks.positive_int("sram_bytes", sram_bytes), _checks.flag("dropout", dropout)
    shape = GPT2_MEDIUM
    standard = standard_attention_traffic(**shape, dropout=dropout)
    flash = flash_attention_traffic(**shape, sram_bytes=sram_bytes)
    block_r, block_c = paper_block_sizes(shape["d"], sram_bytes // 2)
    return {
        "standard_gb": standard.gigabytes,
        "flash_gb": flash.gigabytes,
        "ratio": standard.total / flash.total,
        "paper_standard_gb": PAPER_FIG2_GB["standard"],
        "paper_flash_gb": PAPER_FIG2_GB["flash"],
        "paper_ratio": PAPER_FIG2_GB["standard"] / PAPER_FIG2_GB["flash"],
        "block_r": block_r,
        "block_c": block_c,
    }
