"""The roofline model: hand arithmetic, agreement with attnlib.traffic's byte counts, and refusals."""

import math

import pytest

from attnlib import roofline, traffic

A100, H100, H200 = "A100 SXM4 80GB", "H100 SXM5", "H200 SXM"


def test_published_peaks_and_ridge_points_by_hand():
    """Datasheets: A100 312 TFLOP/s dense and 2.039 TB/s; H100 and H200 1979 / 2 TFLOP/s dense, 3.35 and 4.8 TB/s."""
    assert set(roofline.GPUS) == {A100, H100, H200}
    assert roofline.ridge_point(A100) == pytest.approx(312 / 2.039, rel=1e-12)  # 153.0 FLOP/byte
    assert roofline.ridge_point(H100) == pytest.approx(989.5 / 3.35, rel=1e-12)  # 295.4
    assert roofline.ridge_point(H200) == pytest.approx(989.5 / 4.8, rel=1e-12)  # 206.1
    for name, device in roofline.GPUS.items():
        assert device.name == name and "datasheet" in device.source
        assert roofline.gpu(device) is device and roofline.gpu(name) is device


def test_a_compute_bound_and_a_memory_bound_point_by_hand():
    # 1e12 FLOPs moving 1e9 bytes on an A100: 1000 FLOP/byte, above the ridge at 153: 1e12 / 312e12 s.
    point = roofline.roofline_point(10**12, 10**9, A100)
    assert point.intensity == 1000
    assert point.bound == "compute"
    assert point.seconds == pytest.approx(1 / 312, rel=1e-12)
    assert point.memory_seconds == pytest.approx(1e9 / 2.039e12, rel=1e-12)
    assert point.flops_per_second == pytest.approx(312e12, rel=1e-12)
    # 1e12 FLOPs moving 1e11 bytes on an H200: 10 FLOP/byte, below the ridge: 1e11 / 4.8e12 s, 48 TFLOP/s.
    point = roofline.roofline_point(1e12, 1e11, H200)
    assert point.bound == "memory"
    assert point.seconds == pytest.approx(1e11 / 4.8e12, rel=1e-12)
    assert point.flops_per_second == pytest.approx(10 * 4.8e12, rel=1e-12)
    assert roofline.attainable_flops(10, H200) == pytest.approx(48e12, rel=1e-12)
    assert roofline.attainable_flops(1000, H200) == pytest.approx(989.5e12, rel=1e-12)
    assert roofline.arithmetic_intensity(6, 4) == 1.5


def test_attention_flops_by_hand():
    """Per (batch, head): forward 2 products of 2 n^2 d; backward 4 (standard) or 5 (flash, S recomputed)."""
    batch, heads, n, d = 2, 3, 100, 16
    one_product = 2 * n * n * d
    assert roofline.standard_attention_flops(batch, heads, n, d, backward=False) == 6 * 2 * one_product
    assert roofline.flash_attention_flops(batch, heads, n, d, backward=False) == 6 * 2 * one_product
    assert roofline.standard_attention_flops(batch, heads, n, d) == 6 * 6 * one_product
    assert roofline.flash_attention_flops(batch, heads, n, d) == 6 * 7 * one_product
    # The FlashAttention papers' convention: the backward is 2.5 times the forward.
    forward = roofline.flash_attention_flops(1, 1, n, d, backward=False)
    assert roofline.flash_attention_flops(1, 1, n, d) - forward == 2.5 * forward


def test_standard_attention_forward_on_an_a100_by_hand():
    """n = 1024, d = 64, float16, one (batch, head): Algorithm 0 moves 4 n x n matrices and 4 n x d ones.

    Bytes: Q, K read and S written; S read, P written; P, V read and O written: 4 * 2 n^2 + 4 * 2 n d.
    FLOPs 4 n^2 d, so the intensity is 4 n^2 d / (8 n^2 + 8 n d) = 30.1 FLOP/byte: far below the A100's 153.
    """
    n, d = 1024, 64
    hbm_bytes = 4 * 2 * n * n + 4 * 2 * n * d
    counted = traffic.standard_attention_traffic(1, 1, n, d, backward=False).total
    assert counted == hbm_bytes
    flops = roofline.standard_attention_flops(1, 1, n, d, backward=False)
    point = roofline.roofline_point(flops, counted, A100)
    assert point.intensity == pytest.approx(4 * n * n * d / hbm_bytes, rel=1e-12)
    assert 30 < point.intensity < 30.2
    assert point.bound == "memory"
    assert point.seconds == pytest.approx(hbm_bytes / 2.039e12, rel=1e-12)


def test_flash2_forward_intensity_approaches_the_query_block_by_hand():
    """FlashAttention-2 forward, float16: Q read once, K and V once per query block, O and L written once.

    Bytes 2 (n d + 2 n d (n / B_r) + n d + n); FLOPs 4 n^2 d. For large n the K, V re-reads dominate and the
    intensity tends to 4 n^2 d / (4 n^2 d / B_r) = B_r FLOP/byte.
    """
    n, d, block_q = 16384, 64, 128
    hbm_bytes = 2 * (n * d + 2 * n * d * (n // block_q) + n * d + n)
    counted = traffic.flash2_attention_traffic(1, 1, n, d, backward=False, block_sizes=(block_q, 64)).total
    assert counted == hbm_bytes
    intensity = roofline.arithmetic_intensity(roofline.flash_attention_flops(1, 1, n, d, backward=False), counted)
    assert intensity == pytest.approx(4 * n * n * d / hbm_bytes, rel=1e-12)
    assert 0.99 * block_q < intensity < block_q
    # 127 FLOP/byte is below all three ridge points (153, 206, 295); with half the bytes it passes the A100's.
    assert all(roofline.roofline_point(4 * n * n * d, counted, name).bound == "memory" for name in roofline.GPUS)
    assert roofline.roofline_point(4 * n * n * d, counted // 2, A100).bound == "compute"


@pytest.mark.parametrize("backward", [False, True])
def test_flash_moves_the_point_right_by_the_traffic_ratio_times_the_flop_ratio(backward):
    """Same shape, same GPU: intensity_flash / intensity_standard = (bytes_standard / bytes_flash) x
    (flops_flash / flops_standard); the FLOP ratio is 1 for the forward and 14 / 12 for forward + backward."""
    shape = {"batch": 4, "heads": 8, "n": 2048, "d": 64}
    standard = traffic.standard_attention_traffic(**shape, backward=backward)
    for flash in (traffic.flash_attention_traffic(**shape, backward=backward),
                  traffic.flash2_attention_traffic(**shape, backward=backward)):
        flops_standard = roofline.standard_attention_flops(**shape, backward=backward)
        flops_flash = roofline.flash_attention_flops(**shape, backward=backward)
        assert flops_flash / flops_standard == (14 / 12 if backward else 1)
        standard_point = roofline.roofline_point(flops_standard, standard.total, H100)
        flash_point = roofline.roofline_point(flops_flash, flash.total, H100)
        assert flash_point.intensity / standard_point.intensity == pytest.approx(
            standard.total / flash.total * flops_flash / flops_standard, rel=1e-12)
        assert flash_point.intensity > 5 * standard_point.intensity
        assert standard_point.bound == "memory"
        assert flash_point.seconds < standard_point.seconds


def test_gpt2_medium_case_is_memory_bound_standard_and_much_faster_flash_on_the_a100():
    """The paper's Fig. 2 shape (forward + backward): the bytes traffic.gpt2_medium_comparison reports."""
    comparison = traffic.gpt2_medium_comparison(dropout=False)
    shape = traffic.GPT2_MEDIUM
    standard_flops, flash_flops = roofline.standard_attention_flops(**shape), roofline.flash_attention_flops(**shape)
    standard = roofline.roofline_point(standard_flops, comparison["standard_gb"] * 1e9, A100)
    flash = roofline.roofline_point(flash_flops, comparison["flash_gb"] * 1e9, A100)
    # Standard: 33 FLOP/byte, the bytes set the time. Flash: 209 FLOP/byte, past the ridge: the FLOPs set it.
    assert (standard.bound, flash.bound) == ("memory", "compute")
    assert standard.seconds == pytest.approx(comparison["standard_gb"] * 1e9 / 2.039e12, rel=1e-12)
    assert flash.seconds == pytest.approx(flash_flops / 312e12, rel=1e-12)
    assert standard.seconds / flash.seconds > 2


@pytest.mark.parametrize("device_name, expected", [
    ("NVIDIA A100-SXM4-80GB", A100),
    ("NVIDIA A100-SXM4-40GB", None),  # other memory, other bandwidth
    ("NVIDIA A100 80GB PCIe", None),
    ("NVIDIA H100 80GB HBM3", H100),
    ("NVIDIA H100 PCIe", None),
    ("NVIDIA H100 NVL", None),
    ("NVIDIA H200", H200),
    ("NVIDIA H200 NVL", None),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_cuda_device_names_map_to_the_boards_whose_peaks_they_have(device_name, expected):
    assert roofline.gpu_for_device(device_name) == expected


@pytest.mark.parametrize("call, error, match", [
    (lambda: roofline.roofline_point(0, 1, A100), ValueError, "flops must be a finite positive number, got 0"),
    (lambda: roofline.roofline_point(1, -5, A100), ValueError, "hbm_bytes must be a finite positive number, got -5"),
    (lambda: roofline.roofline_point(math.nan, 1, A100), ValueError, "flops must be a finite positive"),
    (lambda: roofline.roofline_point(True, 1, A100), TypeError, "flops must be a positive number, got True"),
    (lambda: roofline.roofline_point("1e9", 1, A100), TypeError, "flops must be a positive number, got '1e9'"),
    (lambda: roofline.roofline_point(1, 1, "V100"), ValueError, r"gpu must be one of \['A100 SXM4 80GB'"),
    (lambda: roofline.roofline_point(1, 1, 100), TypeError, "gpu must be a GPU or one of the names"),
    (lambda: roofline.arithmetic_intensity(1, 0), ValueError, "hbm_bytes must be a finite positive number, got 0"),
    (lambda: roofline.attainable_flops(-1, H100), ValueError, "intensity must be a finite positive number, got -1"),
    (lambda: roofline.GPU("mine", peak_flops=0, hbm_bandwidth=1e12), ValueError, "peak_flops must be a finite"),
    (lambda: roofline.GPU("mine", peak_flops=1e14, hbm_bandwidth=math.inf), ValueError, "hbm_bandwidth must be"),
    (lambda: roofline.GPU("", peak_flops=1e14, hbm_bandwidth=1e12), TypeError, "name must be a non-empty str"),
    (lambda: roofline.standard_attention_flops(1, 1, 0, 64), ValueError, "n must be a positive integer, got 0"),
    (lambda: roofline.flash_attention_flops(1, 2.5, 8, 64), TypeError, "heads must be a positive integer, got 2.5"),
    (lambda: roofline.flash_attention_flops(1, 1, 8, 64, backward="no"), TypeError, "backward must be True or False"),
    (lambda: roofline.gpu_for_device(None), TypeError, "device_name must be a str"),
])
def test_bad_input_is_refused_naming_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_a_gpu_of_ones_own_works_like_a_named_one():
    mine = roofline.GPU("test board", peak_flops=100e12, hbm_bandwidth=1e12)
    assert mine.ridge_point == 100
    point = roofline.roofline_point(1e12, 1e11, mine)  # 10 FLOP/byte: memory-bound, 0.1 s
    assert (point.bound, point.seconds, point.gpu) == ("memory", pytest.approx(0.1), mine)
