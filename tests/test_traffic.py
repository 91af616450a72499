"""The HBM traffic model: hand counts, the paper's GPT-2 comparison, and the Theta(N^2 d^2 / M) trend."""

import numpy as np
import pytest

from attnlib import traffic


def test_flash_forward_and_backward_match_a_hand_count():
    """n = 4, d = 2, B_r = B_c = 2, one byte per element: two key blocks (outer) x two query blocks (inner).

    Forward: initialise O (8) + l (4) + m (4) = 16 written. Per key block: K_j, V_j = 2 * 2 * 2 = 8 read.
    Per (j, i): Q_i, O_i (2 * 2 * 2 = 8) + l_i, m_i (2 + 2) = 12 read; O_i (4) + l_i, m_i (4) = 8 written.
    Reads 2 * 8 + 4 * 12 = 64; writes 16 + 4 * 8 = 48.
    Backward: initialise dQ, dK, dV = 3 * 8 = 24 written. Per j: K_j, V_j 8 read, then dK_j, dV_j 8 written.
    Per (j, i): Q_i, O_i, dO_i, dQ_i (4 * 4 = 16) + l_i, m_i (4) = 20 read; dQ_i 4 written.
    Reads 2 * 8 + 4 * 20 = 96; writes 24 + 2 * 8 + 4 * 4 = 56.
    """
    forward = traffic.flash_attention_traffic(1, 1, 4, 2, bytes_per_element=1, backward=False, block_sizes=(2, 2))
    assert (forward.reads, forward.writes) == (64, 48)
    both = traffic.flash_attention_traffic(1, 1, 4, 2, bytes_per_element=1, block_sizes=(2, 2))
    assert (both.reads - forward.reads, both.writes - forward.writes) == (96, 56)
    assert both.steps["load Q_i, O_i, l_i, m_i"] == [48, 0]
    assert both.steps["write dK_j, dV_j"] == [0, 16]


def test_flash_ragged_blocks_hand_count():
    """n = 5, d = 2, B_r = 2, B_c = 3: key blocks of 3 and 2 rows, query blocks of 2, 2 and 1 rows.

    Initialise: O (10) + l, m (10) = 20 written. K, V blocks: 2 * 3 * 2 + 2 * 2 * 2 = 20 read in all.
    Per key block, the query blocks read 2 * rows * 2 + 2 * rows = 6 * rows = 12 + 12 + 6 = 30 and write
    rows * 2 + 2 * rows = 4 * rows = 8 + 8 + 4 = 20. Reads 20 + 2 * 30 = 80; writes 20 + 2 * 20 = 60.
    """
    forward = traffic.flash_attention_traffic(1, 1, 5, 2, bytes_per_element=1, backward=False, block_sizes=(2, 3))
    assert (forward.reads, forward.writes) == (80, 60)


def test_flash2_forward_and_backward_match_a_hand_count():
    """FlashAttention-2, n = 4, d = 2, B_r = B_c = 2, one byte per element: query blocks outside in the forward.

    Forward: per query block, Q_i = 4 read; per (i, j), K_j, V_j = 2 * 2 * 2 = 8 read; per query block O_i (4) and
    L_i (2) written once. Reads 2 * 4 + 4 * 8 = 40; writes 2 * 6 = 12 (nothing initialised in HBM).
    Backward: initialise dQ = 8 written; D = rowsum(dO * O) reads dO, O (16) and writes D (4). Per key block:
    K_j, V_j 8 read, then dK_j, dV_j 8 written. Per (j, i): Q_i, O_i, dO_i, dQ_i (16) + L_i, D_i (4) = 20 read;
    dQ_i 4 written. Reads 16 + 2 * 8 + 4 * 20 = 112; writes 8 + 4 + 2 * 8 + 4 * 4 = 44.
    """
    forward = traffic.flash2_attention_traffic(1, 1, 4, 2, bytes_per_element=1, backward=False, block_sizes=(2, 2))
    assert (forward.reads, forward.writes) == (40, 12)
    both = traffic.flash2_attention_traffic(1, 1, 4, 2, bytes_per_element=1, block_sizes=(2, 2))
    assert (both.reads - forward.reads, both.writes - forward.writes) == (112, 44)
    assert both.steps["load K_j, V_j"] == [32, 0] and both.steps["write O_i, L_i"] == [0, 12]


def test_flash2_ragged_blocks_and_default_block_sizes():
    """n = 5, d = 2, (B_r, B_c) = (2, 3): query blocks of 2, 2, 1 rows outside, key blocks of 3 and 2 inside.

    Forward reads Q once (10) and K, V once per query block (3 * 20 = 60); writes O and L once (10 + 5).
    """
    forward = traffic.flash2_attention_traffic(1, 1, 5, 2, bytes_per_element=1, backward=False, block_sizes=(2, 3))
    assert (forward.reads, forward.writes) == (70, 15)
    # Default blocks: the forward holds the large block of queries (FlashAttention-1's B_c), the backward of keys.
    # A100, d = 64, float16: (B_r, B_c) = (64, 384) for FlashAttention-1, so n = 1024 makes 3 large blocks.
    n, d = 1024, 64
    flash2 = traffic.flash2_attention_traffic(1, 1, n, d, backward=False)
    assert flash2.steps["load K_j, V_j"][0] == 3 * 2 * n * d * 2  # K and V read once per query block of 384
    flash1 = traffic.flash_attention_traffic(1, 1, n, d, backward=False)
    assert flash1.steps["load Q_i, O_i, l_i, m_i"][0] == 3 * (2 * n * d + 2 * n) * 2  # Q, O, l, m once per key block
    backward2 = traffic.flash2_attention_traffic(1, 1, n, d)
    backward1 = traffic.flash_attention_traffic(1, 1, n, d)
    # The backward keeps FlashAttention-1's order: the same sweeps, with L and D in place of l and m.
    sweep2, sweep1 = "load Q_i, O_i, dO_i, dQ_i, L_i, D_i", "load Q_i, O_i, dO_i, dQ_i, l_i, m_i"
    assert backward2.steps[sweep2] == backward1.steps[sweep1]


def test_flash2_traffic_falls_like_one_over_m_and_stays_near_flash1():
    """Same IO complexity as FlashAttention-1: Theta(N^2 d^2 / M) for either loop order."""
    n, d = 4096, 64
    sram_sizes = np.array([2**p for p in range(12, 18)])
    totals = np.array([traffic.flash2_attention_traffic(1, 1, n, d, sram_bytes=int(s)).total for s in sram_sizes])
    slope = np.polyfit(np.log(sram_sizes), np.log(totals), 1)[0]
    assert -1.05 < slope < -0.9, slope
    flash1 = np.array([traffic.flash_attention_traffic(1, 1, n, d, sram_bytes=int(s)).total for s in sram_sizes])
    assert np.all((totals / flash1 > 0.7) & (totals / flash1 < 1.0)), totals / flash1


def test_standard_attention_matches_a_hand_count():
    """n = 4, d = 2, one byte per element: an n x n matrix is 16 bytes, an n x d one 8.

    Forward: S = QK^T reads 8 + 8, writes 16; softmax reads 16, writes 16; O = PV reads 16 + 8, writes 8:
    reads 56, writes 40. Backward: dV reads 16 + 8, writes 8; dP reads 8 + 8, writes 16; dS reads 32, writes 16;
    dQ and dK each read 16 + 8 and write 8: reads 120, writes 56.
    Dropout adds a pass reading P (16) and writing P and the 1-byte mask (16 + 16), and a backward pass reading
    dP and the mask (16 + 16) and writing dP (16).
    """
    forward = traffic.standard_attention_traffic(1, 1, 4, 2, bytes_per_element=1, backward=False)
    assert (forward.reads, forward.writes) == (56, 40)
    both = traffic.standard_attention_traffic(1, 1, 4, 2, bytes_per_element=1)
    assert (both.reads, both.writes) == (56 + 120, 40 + 56)
    dropout = traffic.standard_attention_traffic(1, 1, 4, 2, bytes_per_element=1, dropout=True)
    assert (dropout.reads - both.reads, dropout.writes - both.writes) == (16 + 32, 32 + 16)


def test_batch_and_heads_multiply():
    one = traffic.flash_attention_traffic(1, 1, 100, 16, sram_bytes=4096)
    many = traffic.flash_attention_traffic(3, 5, 100, 16, sram_bytes=4096)
    assert many.total == 15 * one.total and many.steps["write dQ_i"][1] == 15 * one.steps["write dQ_i"][1]
    assert traffic.standard_attention_traffic(3, 5, 100, 16).total == 15 * traffic.standard_attention_traffic(
        1, 1, 100, 16
    ).total


def test_paper_block_sizes():
    assert traffic.paper_block_sizes(64, 192 * 1024 // 2) == (64, 384)  # A100, float16
    assert traffic.paper_block_sizes(64, 1000) == (4, 4)  # tiny memory: B_r = B_c = ceil(1000 / 256)


def test_reproduces_the_papers_gpt2_medium_ratio():
    """Dao et al. 2022, Fig. 2: 40.3 GB vs 4.4 GB, a ratio of 9.2; the model must land within 25%."""
    result = traffic.gpt2_medium_comparison()
    assert (result["block_r"], result["block_c"]) == (64, 384)
    assert result["paper_ratio"] == pytest.approx(40.3 / 4.4)
    assert abs(result["ratio"] / result["paper_ratio"] - 1) <= 0.25, result
    assert abs(result["flash_gb"] / 4.4 - 1) <= 0.25, result
    assert abs(result["standard_gb"] / 40.3 - 1) <= 0.25, result
    # Without the dropout pass (the bare Algorithm 0) standard attention moves fewer bytes than measured.
    assert traffic.gpt2_medium_comparison(dropout=False)["standard_gb"] < result["standard_gb"]


def test_flash_traffic_falls_like_one_over_m():
    """Theorem 2: Theta(N^2 d^2 / M) accesses while the blocks are smaller than the sequence."""
    n, d = 4096, 64
    sram_sizes = np.array([2**p for p in range(12, 18)])  # 4 KiB .. 128 KiB (B_c from 8 to 256 of 4096 rows)
    totals = np.array([traffic.flash_attention_traffic(1, 1, n, d, sram_bytes=int(s), backward=False).total
                       for s in sram_sizes])
    normalised = totals * (sram_sizes / 2) / (n * n * d * d)
    assert normalised.max() / normalised.min() < 1.15, normalised
    slope = np.polyfit(np.log(sram_sizes), np.log(totals), 1)[0]
    assert -1.05 < slope < -0.9, slope
    # And far more memory than the sequence needs gives no further saving: one pass over Q, K, V, O.
    huge = traffic.flash_attention_traffic(1, 1, n, d, sram_bytes=2**30, backward=False)
    assert huge.total == traffic.flash_attention_traffic(1, 1, n, d, sram_bytes=2**31, backward=False).total


def test_standard_traffic_grows_quadratically():
    small, large = (traffic.standard_attention_traffic(1, 1, n, 64).total for n in (4096, 8192))
    assert 3.8 < large / small < 4.0


@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: traffic.flash_attention_traffic(1, 1, 0, 64), ValueError, "n must be a positive integer"),
        (lambda: traffic.flash_attention_traffic(1, 1, 8, 64, sram_bytes=0), ValueError, "sram_bytes"),
        (lambda: traffic.flash_attention_traffic(1, 1, 8, 4, block_sizes=(2, 0)), ValueError, "B_c"),
        (lambda: traffic.flash_attention_traffic(1, 1, 8, 4, block_sizes=(2,)), ValueError, "pair"),
        (lambda: traffic.standard_attention_traffic(1, 2.5, 8, 4), TypeError, "heads"),
        (lambda: traffic.standard_attention_traffic(1, 1, 8, 4, bytes_per_element=0), ValueError, "bytes_per"),
        (lambda: traffic.paper_block_sizes(0, 100), ValueError, "d must"),
        (lambda: traffic.flash2_attention_traffic(1, 1, 0, 64), ValueError, "n must be a positive integer"),
        (lambda: traffic.flash2_attention_traffic(1, 1, 8, 64, sram_bytes=256), ValueError, "even the smallest"),
        (lambda: traffic.flash2_attention_traffic(1, 1, 8, 4, block_sizes=(2,)), ValueError, "pair"),
        (lambda: traffic.flash2_attention_traffic(1, 1, 8, 4, backward="no"), TypeError, "backward must be True"),
    ],
)
def test_bad_input_is_reported(call, error, words):
    with pytest.raises(error, match=words):
        call()
