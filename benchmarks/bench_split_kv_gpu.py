"""Split-KV decoding on a CUDA GPU: one decoding step of attention against a long KV cache, by the number of splits.

The shape is a decoding step of one sequence: batch 1, 32 heads of d = 128, one query per head, float16, and a cache
of n_k keys, n_k from 4096 to 65536. Without splitting, a launch has 32 programs for a GPU's 100+ multiprocessors
(``attnlib.occupancy``); with ``n_splits`` chunks it has 32 · n_splits.

Lines:
* ``split-kv triton, n_splits = s``: ``attnlib.torch.split_kv_attention(..., backend="triton")`` for s in powers of
  two up to 128, plus ``attnlib.occupancy.splits_to_fill`` for the device's SM count;
* ``flash_attention triton``: ``attnlib.torch.flash_attention(..., backend="triton")`` with n_q = 1, one program
  per head: the FlashAttention parallelism that split-KV decoding improves on;
* ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with the backend PyTorch picks.

Decoding reads the whole cache once per step and does two multiply-adds per element it reads, so it is limited by
memory bandwidth: each line is reported as its median time (CUDA events, after warm-up) and as the bandwidth it
achieves, the bytes of k and v divided by the time, next to a device-to-device copy measured in the same run.

Writes ``benchmarks/results/split_kv_gpu_<device>.json`` with the device, its SM count, library versions and date.
Usage: ``python benchmarks/bench_split_kv_gpu.py [--quick]``. Needs a CUDA device.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
from pathlib import Path

from _machine import host_info
from bench_flash_gpu import device_slug, time_ms

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # attnlib from this checkout

BATCH, HEADS, HEAD_DIM = 1, 32, 128
CACHE_LENGTHS = (4096, 16384, 65536)
QUICK_CACHE_LENGTHS = (4096, 16384)
COPY_BYTES = 2**30  # the bandwidth ceiling: one 1 GiB device-to-device copy


# --------------------------------------------------------------------------------------------------------------
# Pure helpers (no GPU needed; tested in tests/test_split_kv.py)
# --------------------------------------------------------------------------------------------------------------


def cache_bytes(batch: int, heads: int, n_k: int, d: int, bytes_per_element: int) -> int:
    """Bytes of keys and values one decoding step reads: 2 (k and v) · batch · heads · n_k · d · element size."""
    return 2 * batch * heads * n_k * d * bytes_per_element


def bandwidth_gb_per_s(n_bytes: float, milliseconds: float) -> float:
    return n_bytes / (milliseconds * 1e-3) / 1e9


def split_counts(batch: int, heads: int, n_k: int, sms: int, largest: int = 128) -> list[int]:
    """The split counts to time: 1, 2, 4, ... up to ``largest`` (and n_k), and the fewest that fill ``sms`` SMs."""
    from attnlib import occupancy

    counts = {2**power for power in range(int(math.log2(largest)) + 1)}
    counts.add(occupancy.splits_to_fill(batch, heads, n_k, gpu=sms))
    return sorted(count for count in counts if count <= n_k)


def results_path(device_name: str, directory: Path = RESULTS) -> Path:
    return Path(directory) / f"split_kv_gpu_{device_slug(device_name)}.json"


# --------------------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------------------


def lines(batch: int, heads: int, n_k: int, sms: int, largest_split: int):
    """(name, function(q, k, v), n_splits or None) for every line of the plot."""
    import torch.nn.functional as F

    from attnlib.torch import flash_attention, split_kv_attention

    found = [("flash_attention triton", lambda q, k, v: flash_attention(q, k, v, backend="triton"), None),
             ("sdpa", F.scaled_dot_product_attention, None)]
    for n_splits in split_counts(batch, heads, n_k, sms, largest_split):
        def split_kv(q, k, v, n_splits=n_splits):
            return split_kv_attention(q, k, v, n_splits=n_splits, backend="triton")

        found.append((f"split-kv triton, n_splits = {n_splits}", split_kv, n_splits))
    return found


def measure(torch, *, cache_lengths, batch, heads, d, dtype, sms, device, warmup, repeats, largest_split=128):
    """One row per (n_k, line): median milliseconds, achieved GB/s and, for split-KV, the programs launched.

    A line that raises gets a row with ``failed`` (the exception) instead, and the run goes on.
    """
    import torch.nn.functional as F

    from attnlib import occupancy

    rows = []
    generator = torch.Generator(device=device).manual_seed(0)
    for n_k in cache_lengths:
        q = torch.randn(batch, heads, 1, d, generator=generator, device=device, dtype=dtype)
        k = torch.randn(batch, heads, n_k, d, generator=generator, device=device, dtype=dtype)
        v = torch.randn(batch, heads, n_k, d, generator=generator, device=device, dtype=dtype)
        n_bytes = cache_bytes(batch, heads, n_k, d, k.element_size())
        reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
        for name, function, n_splits in lines(batch, heads, n_k, sms, largest_split):
            try:
                with torch.no_grad():
                    error = (function(q, k, v).float() - reference).abs().max().item()  # it computes attention
                    milliseconds = time_ms(torch, functools.partial(function, q, k, v), warmup, repeats, device)
            except Exception as failure:  # noqa: BLE001 - one line that cannot run must not lose the others
                rows.append({"n_k": n_k, "line": name, "failed": f"{type(failure).__name__}: {failure}"})
                print(f"n_k={n_k:6d}  {name:38s} failed: {rows[-1]['failed']}", flush=True)
                continue
            row = {"n_k": n_k, "line": name, "ms": milliseconds,
                   "gb_per_s": bandwidth_gb_per_s(n_bytes, milliseconds), "max_error": error}
            if n_splits is not None:
                launch = occupancy.decode_launch(batch, heads, n_splits, gpu=sms)
                row.update(n_splits=n_splits, programs=launch.programs, waves=launch.waves)
            rows.append(row)
            print(f"n_k={n_k:6d}  {name:38s} {milliseconds * 1e3:9.1f} us  {row['gb_per_s']:7.0f} GB/s", flush=True)
    return rows


def copy_bandwidth(torch, device, warmup: int, repeats: int) -> float:
    """GB/s of a device-to-device copy (it reads and writes every byte): the bandwidth a kernel can hope for."""
    source = torch.empty(COPY_BYTES, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)
    milliseconds = time_ms(torch, lambda: target.copy_(source), warmup, repeats, device)
    return bandwidth_gb_per_s(2 * COPY_BYTES, milliseconds)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n_k 4096 and 16384 only, fewer repeats")
    parser.add_argument("--out", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    arguments = parser.parse_args(argv)

    import torch
    import triton

    if not torch.cuda.is_available():
        raise SystemExit("bench_split_kv_gpu.py needs a CUDA GPU and none is available here: nothing was measured "
                         "and no results file was written.")
    properties = torch.cuda.get_device_properties(0)
    sms = properties.multi_processor_count
    warmup, repeats = (5, 20) if arguments.quick else (10, 50)
    rows = measure(torch, cache_lengths=QUICK_CACHE_LENGTHS if arguments.quick else CACHE_LENGTHS, batch=BATCH,
                   heads=HEADS, d=HEAD_DIM, dtype=torch.float16, sms=sms, device="cuda", warmup=warmup,
                   repeats=repeats)
    results = {
        "machine": host_info(device=properties.name, sms=sms, torch=torch.__version__, triton=triton.__version__,
                             cuda=torch.version.cuda),
        "shape": {"batch": BATCH, "heads": HEADS, "d": HEAD_DIM, "n_q": 1, "dtype": "float16"},
        "copy_gb_per_s": copy_bandwidth(torch, "cuda", warmup, repeats),
        "rows": rows,
    }
    out = arguments.out or results_path(properties.name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"copy: {results['copy_gb_per_s']:.0f} GB/s; wrote {out}")


if __name__ == "__main__":
    main()

