"""The roofline model: how long a computation must take, at least, given its FLOPs and its HBM bytes.

A GPU has two roofs. Its tensor cores can do at most ``peak_flops`` floating-point operations per second, and its
HBM can move at most ``hbm_bandwidth`` bytes per second. A computation that does F operations and moves B bytes
therefore needs at least F / peak_flops seconds and at least B / hbm_bandwidth seconds; if the two overlap
perfectly, it needs the larger of the two. Which one is larger depends on the **arithmetic intensity** F / B
(FLOPs per byte): below the GPU's **ridge point** peak_flops / hbm_bandwidth the bytes set the time (memory-bound),
above it the arithmetic does (compute-bound). This is the roofline model of Williams, Waterman and Patterson
(2009).

It is a model, and a generous one. It assumes:

1. the published peaks: dense (no 2:4 sparsity) FP16/BF16 tensor-core throughput and HBM bandwidth from NVIDIA's
   datasheets, which real kernels approach but do not reach;
2. perfect overlap of arithmetic and memory traffic, so the time is the larger of the two, not their sum;
3. only the matrix products count as FLOPs (2 per multiply-add). The softmax's maxima, exponentials, sums and
   rescaling are left out: they are a few operations per score against 4 d for the products, but they run on
   slower, non-tensor-core units, which this model does not see (Shah et al. 2024 discuss what that costs on an
   H100);
4. the HBM bytes are the ones given, typically ``attnlib.traffic``'s count, which has its own assumptions (no
   L2 cache between HBM and the chip, every listed load reaches HBM);
5. enough parallel work to fill every streaming multiprocessor, and no launch overheads.

So a point on the roof is the fastest the computation could possibly run on that GPU, not a prediction of how
fast it does run. ``attnlib.traffic``'s docstring explains why, for FlashAttention, the two can be far apart.

The FLOP counts follow the algorithms ``attnlib.traffic`` walks (Dao et al. 2022; Dao 2023), per
(batch, head) pair, without causal masking (the traffic model has none either):

* standard attention, forward: S = Q K^T and O = P V, 2 n^2 d each: 4 n^2 d. Backward: dV = P^T dO,
  dP = dO V^T, dQ = dS K, dK = dS^T Q: 8 n^2 d, as P was kept in HBM;
* FlashAttention (-1 and -2), forward: the same 4 n^2 d. Backward: S = Q K^T is recomputed tile by tile from the
  saved statistics, then the same four products: 10 n^2 d. The FlashAttention papers count the backward as 2.5
  times the forward for this reason.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass

from . import _checks


@dataclass(frozen=True)
class GPU:
    """A GPU's published peaks: ``peak_flops`` (FLOP/s, dense FP16/BF16 on the tensor cores) and ``hbm_bandwidth``
    (bytes/s), with the ``source`` they come from."""

    name: str
    peak_flops: float
    hbm_bandwidth: float
    source: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        _checks.positive_float("peak_flops", self.peak_flops)
        _checks.positive_float("hbm_bandwidth", self.hbm_bandwidth)
        if not isinstance(self.source, str):
            raise TypeError(f"source must be a str, got {type(self.source).__name__}")

    @property
    def ridge_point(self) -> float:
        """FLOPs per byte at which the two roofs meet: below it the bytes set the time, above it the FLOPs."""
        return self.peak_flops / self.hbm_bandwidth


# The datasheets give the FP16 and BF16 tensor-core peaks of the H100 and H200 *with* 2:4 structured sparsity
# (1,979 TFLOPS); the dense peak, the one attention can use, is half of that. The A100's is given both ways.
GPUS = {
    gpu.name: gpu
    for gpu in (
        GPU("A100 SXM4 80GB", peak_flops=312e12, hbm_bandwidth=2.039e12,
            source="NVIDIA A100 Tensor Core GPU datasheet: FP16/BF16 tensor core 312 TFLOPS dense, "
                   "HBM2e 2,039 GB/s"),
        GPU("H100 SXM5", peak_flops=1979e12 / 2, hbm_bandwidth=3.35e12,
            source="NVIDIA H100 Tensor Core GPU datasheet: FP16/BF16 tensor core 1,979 TFLOPS with sparsity "
                   "(989.5 dense), HBM3 3.35 TB/s"),
        GPU("H200 SXM", peak_flops=1979e12 / 2, hbm_bandwidth=4.8e12,
            source="NVIDIA H200 Tensor Core GPU datasheet: FP16/BF16 tensor core 1,979 TFLOPS with sparsity "
                   "(989.5 dense), HBM3e 4.8 TB/s"),
    )
}

# How each GPU names itself (torch.cuda.get_device_name), e.g. "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3",
# "NVIDIA H200". The PCIe and NVL boards have other peaks, so they match none of these.
_DEVICE_NAMES = {
    "A100 SXM4 80GB": re.compile(r"\bA100\b.*\bSXM4?\b.*\b80GB\b", re.IGNORECASE),
    "H100 SXM5": re.compile(r"\bH100\b(?!.*\b(PCIe|NVL)\b).*\b(HBM3|SXM5?)\b", re.IGNORECASE),
    "H200 SXM": re.compile(r"\bH200\b(?!.*\b(PCIe|NVL)\b)", re.IGNORECASE),
}


def gpu(name) -> GPU:
    """The GPU called ``name`` in ``GPUS`` (a ``GPU`` passes through unchanged)."""
    if isinstance(name, GPU):
        return name
    if not isinstance(name, str):
        raise TypeError(f"gpu must be a GPU or one of the names {list(GPUS)}, got {type(name).__name__}")
    if name not in GPUS:
        raise ValueError(f"gpu must be one of {list(GPUS)}, got {name!r}")
    return GPUS[name]


def gpu_for_device(device_name: str) -> str | None:
    """The name in ``GPUS`` of the board a CUDA device name describes, or None if it is none of them."""
    if not isinstance(device_name, str):
        raise TypeError(f"device_name must be a str, got {type(device_name).__name__}")
    for name, pattern in _DEVICE_NAMES.items():
        if pattern.search(device_name):
            return name
    return None


def _count(name: str, value) -> float:
    """A FLOP or byte count: a finite, positive real number (an int of any size, or a float)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} of type {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value}")
    return value


def arithmetic_intensity(flops, hbm_bytes) -> float:
    """FLOPs per byte moved to or from HBM."""
    return _count("flops", flops) / _count("hbm_bytes", hbm_bytes)


def ridge_point(gpu_name) -> float:
    """The arithmetic intensity (FLOP/byte) at which ``gpu_name``'s memory roof meets its compute roof."""
    return gpu(gpu_name).ridge_point


def attainable_flops(intensity, gpu_name) -> float:
    """The roof at ``intensity`` FLOP/byte: min(peak_flops, intensity x hbm_bandwidth), in FLOP/s."""
    device = gpu(gpu_name)
    return min(device.peak_flops, _count("intensity", intensity) * device.hbm_bandwidth)


@dataclass(frozen=True)
class RooflinePoint:
    """A computation of ``flops`` FLOPs and ``hbm_bytes`` HBM bytes placed under the roofs of ``gpu``."""

    flops: float
    hbm_bytes: float
    gpu: GPU

    @property
    def intensity(self) -> float:
        """FLOPs per HBM byte: where the point sits on the roofline plot's horizontal axis."""
        return self.flops / self.hbm_bytes

    @property
    def compute_seconds(self) -> float:
        """The time the FLOPs alone need at the peak."""
        return self.flops / self.gpu.peak_flops

    @property
    def memory_seconds(self) -> float:
        """The time the bytes alone need at the full HBM bandwidth."""
        return self.hbm_bytes / self.gpu.hbm_bandwidth

    @property
    def seconds(self) -> float:
        """The time implied by the model: the larger of the two (arithmetic and traffic overlap perfectly)."""
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def bound(self) -> str:
        """"memory" if the bytes set the time (intensity below the ridge point), else "compute"."""
        return "memory" if self.memory_seconds > self.compute_seconds else "compute"

    @property
    def flops_per_second(self) -> float:
        """FLOPs / seconds: the height of the roof at this point's intensity."""
        return self.flops / self.seconds


def roofline_point(flops, hbm_bytes, gpu_name) -> RooflinePoint:
    """``flops`` FLOPs moving ``hbm_bytes`` bytes on the GPU ``gpu_name`` (a name in ``GPUS`` or a ``GPU``):
    the time the roofline model implies, which roof binds, and the arithmetic intensity."""
    return RooflinePoint(_count("flops", flops), _count("hbm_bytes", hbm_bytes), gpu(gpu_name))


def _shape(batch, heads, n, d) -> int:
    """batch x heads, with every argument checked; the FLOP counts below are per (batch, head) pair times this."""
    batch, heads = _checks.positive_int("batch", batch), _checks.positive_int("heads", heads)
    _checks.positive_int("n", n)
    _checks.positive_int("d", d)
    return batch * heads


def standard_attention_flops(batch: int, heads: int, n: int, d: int, *, backward: bool = True) -> int:
    """Matrix-product FLOPs of standard attention (the algorithm of ``traffic.standard_attention_traffic``).

    Forward: S = Q K^T and O = P V, 2 n^2 d each. Backward: dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q,
    2 n^2 d each (P is read back from HBM, not recomputed). Softmax and elementwise work are not counted.
    """
    pairs = _shape(batch, heads, n, d)
    backward = _checks.flag("backward", backward)
    products = 2 + (4 if backward else 0)
    return pairs * products * 2 * n * n * d


def flash_attention_flops(batch: int, heads: int, n: int, d: int, *, backward: bool = True) -> int:
    """Matrix-product FLOPs of FlashAttention-1 and -2 (``traffic.flash_attention_traffic`` and
    ``traffic.flash2_attention_traffic``).

    Forward: the same two products as standard attention, 4 n^2 d. Backward: S = Q K^T is recomputed tile by tile
    (P never went to HBM), then the four gradient products: 5 x 2 n^2 d, 2.5 times the forward. (attnlib's Triton
    kernel splits the backward in two passes and recomputes S and dP once more; that is the kernel's choice, not
    the algorithm's, and is not counted here.)
    """
    pairs = _shape(batch, heads, n, d)
    backward = _checks.flag("backward", backward)
    products = 2 + (5 if backward else 0)
    return pairs * products * 2 * n * n * d
