"""FlashAttention on a CUDA GPU: attnlib's Triton kernel against every PyTorch attention backend.

Shapes follow the FlashAttention-2/3 papers: 16k tokens per batch (batch = 16384 / n) and a hidden size of 2048
(heads = 2048 / d), d in {64, 128}, n from 512 to 16384, causal off and on, forward and forward+backward.

Lines:
* ``attnlib triton``: ``attnlib.torch.flash_attention(..., backend="triton")`` (the autotuned kernel);
* ``sdpa <backend>``: ``torch.nn.functional.scaled_dot_product_attention`` with one backend forced through
  ``torch.nn.attention.sdpa_kernel`` (flash, efficient, cudnn, math); unavailable ones are recorded as such,
  and so is the backend SDPA picks by itself;
* ``naive torch``: scores, softmax, weighted sum as three separate operations (an n x n matrix in memory).

Then the variants that modern decoders use, causal at d = 128 (``variants`` in the results, one row per variant,
line and pass): grouped-query attention (4 query heads per key/value head), multi-query attention (one key/value
head), sliding windows of 1024 and 4096 keys, and a window with grouped heads, each beside plain causal attention
of the same shape. The SDPA lines get ``enable_gqa=True`` and, for a window, the boolean banded mask (the window is
not one of SDPA's own options), first with the backend SDPA picks, then with each backend forced.

Speed is reported in TFLOP/s with the papers' convention: 4 * batch * heads * n^2 * d for the forward, halved when
causal, and 2.5 times that for the backward (so forward+backward counts 3.5 times the forward). A sliding window of
w keys counts the band's area instead of the triangle's: n * w - w^2 / 2 pairs (n^2 / 2 when w = n). Grouped
heads do the same arithmetic as ungrouped ones; they read fewer keys and values. In the same run a
large dense bfloat16 matmul is timed as the ceiling, and every line is also given as a fraction of it. Timing:
CUDA events, warm-up calls first (they also run the autotuner), then the median of repeated calls.

Writes ``benchmarks/results/flash_gpu_<device>.json`` with the device, driver, library versions and date.
Usage: ``python benchmarks/bench_flash_gpu.py [--quick] [--dtype float16|bfloat16]``. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy
from _machine import host_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

TOTAL_TOKENS = 16384  # batch * n, as in the FlashAttention-2/3 papers
HIDDEN = 2048  # heads * d
LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIMS = (64, 128)
PASSES = ("forward", "forward_backward")
BACKWARD_FLOP_RATIO = 2.5  # the backward does 2.5x the forward's matmul work (5 matmuls against 2)
SDPA_BACKENDS = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH")
MATMUL_SIZE = 8192  # the ceiling: one (8192 x 8192) @ (8192 x 8192) bfloat16 matmul
VARIANT_LENGTHS = (4096, 16384)
VARIANT_HEAD_DIM = 128  # 16 query heads of 128, as in Llama-style models
VARIANTS = (  # name, key/value heads out of 16 query heads, window
    ("causal", 16, None),
    ("gqa 4:1", 4, None),
    ("mqa", 1, None),
    ("window 1024", 16, 1024),
    ("window 4096", 16, 4096),
    ("gqa 4:1 + window 1024", 4, 1024),
)


# --------------------------------------------------------------------------------------------------------------
# Pure helpers (no GPU needed; unit-tested in tests/test_bench_gpu_helpers.py)
# --------------------------------------------------------------------------------------------------------------


def attention_flops(
    batch: int, heads: int, n: int, d: int, causal: bool, pass_name: str, window: int | None = None
) -> float:
    """Floating-point operations of attention, by the papers' convention.

    Forward: two matmuls (q k^T and p v) of 2 * n * n * d each per head -> 4 * batch * heads * n^2 * d; causal
    attention skips half of the scores; a causal ``window`` of w keys keeps the band's n * w - w^2 / 2 of the n^2
    (n^2 / 2 for w >= n, the causal count); the backward counts 2.5 times the forward. ``heads`` counts query heads.
    """
    if pass_name not in ("forward", "backward", "forward_backward"):
        raise ValueError(f"pass_name must be 'forward', 'backward' or 'forward_backward', got {pass_name!r}")
    if window is not None and not causal:
        raise ValueError(f"window={window} needs causal=True")
    forward = 4.0 * batch * heads * n * n * d
    if causal:
        w = n if window is None else min(window, n)
        forward *= (n * w - w * w / 2) / (n * n)
    ratio = {"forward": 1.0, "backward": BACKWARD_FLOP_RATIO, "forward_backward": 1.0 + BACKWARD_FLOP_RATIO}
    return ratio[pass_name] * forward


def matmul_flops(m: int, n: int, k: int) -> float:
    """An (m, k) @ (k, n) matmul: m * n dot products of length k, a multiply and an add each."""
    return 2.0 * m * n * k


def tflops(flops: float, milliseconds: float) -> float:
    return flops / (milliseconds * 1e-3) / 1e12


def benchmark_shapes(lengths=LENGTHS, head_dims=HEAD_DIMS, total_tokens=TOTAL_TOKENS, hidden=HIDDEN):
    """(batch, heads, n, d) for every n and d: batch * n = total_tokens and heads * d = hidden."""
    shapes = []
    for d in head_dims:
        if hidden % d:
            raise ValueError(f"head dim {d} does not divide the hidden size {hidden}")
        for n in lengths:
            if total_tokens % n:
                raise ValueError(f"sequence length {n} does not divide the {total_tokens} tokens per batch")
            shapes.append({"batch": total_tokens // n, "heads": hidden // d, "n": n, "d": d})
    return shapes


def variant_shapes(lengths=VARIANT_LENGTHS, d=VARIANT_HEAD_DIM, variants=VARIANTS, total_tokens=TOTAL_TOKENS,
                   hidden=HIDDEN):
    """(batch, heads, n_kv_heads, n, d, window, variant) for every n and variant: batch * n = total_tokens and
    heads * d = hidden, as in the main table."""
    shapes = []
    for shape in benchmark_shapes(lengths, (d,), total_tokens, hidden):
        for name, n_kv_heads, window in variants:
            if shape["heads"] % n_kv_heads:
                raise ValueError(f"variant {name!r}: {n_kv_heads} key/value heads do not divide {shape['heads']} heads")
            shapes.append({**shape, "n_kv_heads": n_kv_heads, "window": window, "variant": name})
    return shapes


def device_slug(name: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia_h100_80gb_hbm3', a file-name-safe device name."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    return slug or "unknown_device"


def results_path(device_name: str, directory: Path = RESULTS) -> Path:
    return Path(directory) / f"flash_gpu_{device_slug(device_name)}.json"


def median(values) -> float:
    values = list(values)
    if not values:
        raise ValueError("median of no timings")
    return float(statistics.median(values))


def require_cuda(torch) -> None:
    """Stop with a plain message (and no results file) when there is no CUDA device."""
    if not torch.cuda.is_available():
        raise SystemExit(
            "bench_flash_gpu.py needs a CUDA GPU and none is available here (torch.cuda.is_available() is False). "
            "Nothing was measured and no results file was written."
        )


# --------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------


def time_ms(torch, function, warmup: int, repeats: int, device: str = "cuda") -> float:
    """Median milliseconds of ``function()`` over ``repeats`` calls after ``warmup`` untimed ones.

    On the GPU the calls are timed with CUDA events (kernels run asynchronously, so a host clock would time the
    launch, not the work). The CPU branch exists only so that the tests can run this script's loop on a toy shape.
    """
    for _ in range(warmup):
        function()
    times = []
    if device != "cuda":
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append((time.perf_counter() - start) * 1e3)
        return median(times)
    torch.cuda.synchronize()
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return median(times)


def naive_attention(torch, q, k, v, causal_mask, scale):
    """Three separate operations with the (batch, heads, n, n) scores in memory, softmax in float32."""
    scores = (q @ k.transpose(-1, -2)) * scale  # (batch, heads, n, n)
    if causal_mask is not None:
        scores = scores.masked_fill(~causal_mask, float("-inf"))
    return torch.softmax(scores.float(), dim=-1).to(q.dtype) @ v


def make_lines(torch, causal: bool, scale: float, n: int, device):
    """name -> function(q, k, v) for every line of the plot."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnlib.torch import flash_attention

    def forced_sdpa(backend):
        def sdpa(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)

        return sdpa

    lines = {"attnlib triton": lambda q, k, v: flash_attention(q, k, v, causal=causal, scale=scale, backend="triton")}
    for backend in SDPA_BACKENDS:
        if hasattr(SDPBackend, backend):  # older PyTorch has no CUDNN_ATTENTION
            lines[f"sdpa {backend.lower()}"] = forced_sdpa(getattr(SDPBackend, backend))
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril() if causal else None  # n_q = n_k here
    lines["naive torch"] = lambda q, k, v: naive_attention(torch, q, k, v, mask, scale)
    return lines


def banded_mask(torch, n: int, window: int | None, device):
    """(n, n) boolean: causal, and with a window only the ``window`` most recent keys of each query (n_q = n_k)."""
    positions = torch.arange(n, device=device)
    offsets = positions[:, None] - positions[None, :]  # query position minus key position
    visible = offsets >= 0
    return visible if window is None else visible & (offsets < window)


def make_variant_lines(torch, scale: float, n: int, window: int | None, grouped: bool, device):
    """name -> function(q, k, v) for one variant (always causal): attnlib's kernel and SDPA with each backend."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from attnlib.torch import flash_attention

    # SDPA has no window option: a window is a boolean mask, and a mask rules out its FlashAttention backend.
    mask = None if window is None else banded_mask(torch, n, window, device)

    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale,
                                              enable_gqa=grouped)

    def forced(backend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return sdpa(q, k, v)

        return run

    lines = {
        "attnlib triton": lambda q, k, v: flash_attention(q, k, v, causal=True, window=window, scale=scale,
                                                          backend="triton"),
        "sdpa": sdpa,
    }
    for backend in SDPA_BACKENDS:
        if hasattr(SDPBackend, backend):
            lines[f"sdpa {backend.lower()}"] = forced(getattr(SDPBackend, backend))
    return lines


def run_variants(torch, shapes, dtype, warmup, repeats, *, device="cuda", ceiling=None, log=print) -> list:
    """Time every variant shape (see ``variant_shapes``): one row per (shape, line, pass)."""
    rows = []
    for shape in shapes:
        batch, heads, n_kv_heads, n, d = (shape[name] for name in ("batch", "heads", "n_kv_heads", "n", "d"))
        window, scale = shape["window"], 1.0 / math.sqrt(d)
        generator = torch.Generator(device=device).manual_seed(n + n_kv_heads + (window or 0))
        q, grad_output, k, v = (
            torch.randn(batch, heads_here, n, d, device=device, dtype=dtype, generator=generator)
            for heads_here in (heads, heads, n_kv_heads, n_kv_heads)
        )
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        lines = make_variant_lines(torch, scale, n, window, n_kv_heads != heads, q.device)
        with torch.no_grad():  # a sanity check on the very inputs being timed, not a substitute for the tests
            difference = (lines["attnlib triton"](q, k, v) - lines["sdpa"](q, k, v)).abs().max().item()
        for pass_name in PASSES:
            flops = attention_flops(batch, heads, n, d, True, pass_name, window)
            for name, function in lines.items():
                row = {"line": name, "pass": pass_name, **shape, "flops": flops, "max_abs_diff_vs_sdpa": difference}
                try:
                    milliseconds = measure_line(torch, function, q, k, v, grad_output, pass_name, warmup, repeats,
                                                device)
                except torch.cuda.OutOfMemoryError:
                    row.update(status="out of memory", ms=None, tflops=None)
                except Exception as error:  # noqa: BLE001 - e.g. a backend that refuses masks or grouped heads
                    row.update(status=failure(name, error), ms=None, tflops=None)
                else:
                    row.update(status="ok", ms=milliseconds, tflops=tflops(flops, milliseconds))
                measured = ceiling is not None and row["tflops"] is not None
                row["fraction_of_ceiling"] = row["tflops"] / ceiling["tflops"] if measured else None
                if device == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                shown = f"{row['tflops']:7.1f} TFLOP/s" if row["status"] == "ok" else row["status"][:60]
                log(f"n={n:5d} {shape['variant']:22s} {pass_name:16s} {name:26s} {shown}")
    return rows


def sdpa_default_backend(torch, q, k, v, causal: bool) -> str:
    """The backend SDPA would pick without being told (a private PyTorch helper; 'unknown' if it moved)."""
    try:
        from torch.nn.attention import SDPBackend

        choice = torch._fused_sdp_choice(q, k, v, None, 0.0, causal)
        return SDPBackend(choice).name
    except Exception as error:  # noqa: BLE001 - private API: record why it failed instead of stopping the run
        return f"unknown ({type(error).__name__})"


def measure_line(torch, function, q, k, v, grad_output, pass_name, warmup, repeats, device):
    if pass_name == "forward":
        def run():
            with torch.no_grad():
                function(q, k, v)
    else:
        def run():
            output = function(q, k, v)
            torch.autograd.grad(output, (q, k, v), grad_output)
    return time_ms(torch, run, warmup, repeats, device)


def matmul_ceiling(torch, warmup: int, repeats: int, device: str = "cuda", size: int = MATMUL_SIZE) -> dict:
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    milliseconds = time_ms(torch, lambda: a @ b, warmup, repeats, device)
    flops = matmul_flops(size, size, size)
    return {"shape": [size] * 3, "dtype": "bfloat16", "ms": milliseconds, "tflops": tflops(flops, milliseconds)}


def machine_info(torch) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    try:
        driver = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown (nvidia-smi not available)"
    properties = torch.cuda.get_device_properties(0)
    return host_info(
        device=torch.cuda.get_device_name(0),
        compute_capability=f"{properties.major}.{properties.minor}",
        gpu_memory_gib=round(properties.total_memory / 2**30, 1),
        multiprocessors=properties.multi_processor_count,
        driver=driver,
        cuda=torch.version.cuda,
        torch=torch.__version__,
        triton=triton_version,
        numpy=numpy.__version__,
    )


def run_benchmark(
    torch, shapes, dtype, warmup, repeats, *, device="cuda", matmul_size=MATMUL_SIZE, log=print
) -> dict:
    ceiling = matmul_ceiling(torch, warmup, repeats, device, matmul_size)
    log(f"matmul ceiling (bfloat16, {matmul_size}^3): {ceiling['tflops']:.1f} TFLOP/s")
    rows, defaults, checks = [], [], []
    for shape in shapes:
        batch, heads, n, d = shape["batch"], shape["heads"], shape["n"], shape["d"]
        scale = 1.0 / math.sqrt(d)
        generator = torch.Generator(device=device).manual_seed(n + d)
        q, k, v, grad_output = (
            torch.randn(batch, heads, n, d, device=device, dtype=dtype, generator=generator) for _ in range(4)
        )
        q, k, v = (x.requires_grad_() for x in (q, k, v))
        for causal in (False, True):
            lines = make_lines(torch, causal, scale, n, q.device)
            default = sdpa_default_backend(torch, q, k, v, causal)
            defaults.append({"n": n, "d": d, "causal": causal, "backend": default})
            with torch.no_grad():  # a sanity check on the very inputs being timed, not a substitute for the tests
                ours = lines["attnlib triton"](q, k, v)
                theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
                difference = (ours - theirs).abs().max().item()
                checks.append({"n": n, "d": d, "causal": causal, "max_abs_diff_vs_sdpa": difference})
                del ours, theirs
            for pass_name in PASSES:
                flops = attention_flops(batch, heads, n, d, causal, pass_name)
                for name, function in lines.items():
                    row = {"line": name, "pass": pass_name, "causal": causal, **shape, "flops": flops}
                    try:
                        milliseconds = measure_line(
                            torch, function, q, k, v, grad_output, pass_name, warmup, repeats, device
                        )
                    except torch.cuda.OutOfMemoryError:
                        row.update(status="out of memory", ms=None, tflops=None, fraction_of_ceiling=None)
                    except Exception as error:  # noqa: BLE001 - e.g. SDPA's "No available kernel"; record, go on
                        row.update(status=failure(name, error), ms=None, tflops=None, fraction_of_ceiling=None)
                    else:
                        speed = tflops(flops, milliseconds)
                        row.update(status="ok", ms=milliseconds, tflops=speed)
                        row["fraction_of_ceiling"] = speed / ceiling["tflops"]
                    torch.cuda.empty_cache()
                    rows.append(row)
                    shown = f"{row['tflops']:7.1f} TFLOP/s" if row["status"] == "ok" else row["status"][:60]
                    log(f"n={n:5d} d={d:3d} causal={causal!s:5} {pass_name:16s} {name:26s} {shown}")
    return {"matmul_ceiling": ceiling, "rows": rows, "sdpa_default": defaults, "checks": checks}


def failure(line: str, error: Exception) -> str:
    """A short status for a line that could not run: SDPA backends that refuse a shape are 'unavailable'."""
    text = str(error).strip()
    message = f"{type(error).__name__}: {text.splitlines()[0][:200]}" if text else type(error).__name__
    return f"unavailable: {message}" if line.startswith("sdpa") else f"failed: {message}"


def tuned_configs() -> dict:
    """The configuration the autotuner kept last for each kernel (for the record)."""
    from attnlib.torch import flash_triton

    return {name: str(getattr(kernel, "best_config", None)) for name, kernel in flash_triton._autotuned_kernels.items()}


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n in {1024, 4096, 16384} and fewer repeats")
    parser.add_argument("--dtype", choices=("float16", "bfloat16"), default="float16")
    parser.add_argument("--lengths", type=int, nargs="+", default=None)
    parser.add_argument("--head-dims", type=int, nargs="+", default=list(HEAD_DIMS))
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    parser.add_argument("--no-variants", action="store_true", help="skip the GQA/MQA/sliding-window table")
    args = parser.parse_args(argv)

    import torch

    require_cuda(torch)
    if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
        sys.path.insert(0, str(ROOT))
    import attnlib
    from attnlib.torch import flash_triton

    # Time the kernel, not attnlib's NaN/overflow scans of inputs and outputs (SDPA makes none): switch them off.
    attnlib.set_finite_checks(False)
    if not flash_triton.available():
        raise SystemExit("bench_flash_gpu.py needs triton, which failed to import; nothing was measured.")
    if flash_triton.interpreted():
        raise SystemExit("TRITON_INTERPRET is set: unset it to time the compiled kernel; nothing was measured.")

    lengths = args.lengths or ((1024, 4096, 16384) if args.quick else LENGTHS)
    warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    repeats = args.repeats if args.repeats is not None else (10 if args.quick else 30)
    dtype = getattr(torch, args.dtype)
    shapes = benchmark_shapes(lengths, args.head_dims)

    measured = run_benchmark(torch, shapes, dtype, warmup, repeats)
    variants = [] if args.no_variants else run_variants(
        torch, variant_shapes((16384,) if args.quick else VARIANT_LENGTHS), dtype, warmup, repeats,
        ceiling=measured["matmul_ceiling"],
    )
    results = {
        "benchmark": "flash_gpu",
        "machine": machine_info(torch),
        "dtype": args.dtype,
        "total_tokens": TOTAL_TOKENS,
        "hidden": HIDDEN,
        "flop_convention": "4*batch*heads*n^2*d forward, /2 causal, x2.5 backward (forward_backward = x3.5)",
        "warmup": warmup,
        "repeats": repeats,
        "statistic": "median",
        **measured,
        "variants": variants,
        "autotuned_configs": tuned_configs(),
    }
    path = args.out or results_path(results["machine"]["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
