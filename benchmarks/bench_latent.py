"""Decoding with multi-head latent attention: one step on the absorbed path against the materialised one.

    .venv/bin/python benchmarks/bench_latent.py            # writes benchmarks/results/latent.json
    .venv/bin/python benchmarks/bench_latent.py --quick    # N = 256 only, 1 repeat, to try it out (prints only)

One ``attnlib.torch.MultiHeadLatentAttention`` layer with DeepSeek-V2's ratios, scaled down: d_model 1024, 16 heads
of d_head 64, d_latent = 4 d_head = 256 and d_rope = d_head / 2 = 32; float32, batch 1, CPU, no gradients. For each
cached length N the latent cache is filled with N positions (c_kv and k_rope of random inputs), then one decoding
step -- one new token attending to the N cached positions and itself -- is timed on each path, the cache put back
after every step so that both always see the same N. The two paths' outputs must agree (checked). Time = median
wall-clock seconds over the repeats, after one warm-up step each, the paths taking turns.

The materialised path rebuilds every head's keys and values from the N latents at every step; the absorbed path
attends straight against the latents. Cache bytes are recorded beside the times: ``LatentCache.nbytes`` and what
multi-head attention with the same heads would cache (``attnlib.sizes``), which is also the size of the keys and
values the materialised path rebuilds at each step. Threads: ``ATTNLIB_BENCH_THREADS`` (default 1), as in the
other CPU benchmarks.
"""

from __future__ import annotations

import os

THREADS = os.environ.setdefault("ATTNLIB_BENCH_THREADS", "1")
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _machine import host_info  # noqa: E402

import attnlib  # noqa: E402
import attnlib.torch as at  # noqa: E402
from attnlib import sizes  # noqa: E402

SHAPE = {"d_model": 1024, "n_heads": 16, "d_latent": 256, "d_rope": 32}  # d_head = 1024 / 16 = 64
LENGTHS = (256, 1024, 4096)
RESULTS = Path(__file__).resolve().parent / "results" / "latent.json"


def filled_cache(layer, n_cached: int):
    """A latent cache holding n_cached positions of random inputs, as a prefill would have left it."""
    x = torch.randn(1, n_cached, layer.d_model)  # (1, N, d_model)
    positions = torch.arange(n_cached)
    cache = layer.new_cache()
    cache.append(x @ layer.w_dkv, at.apply_rope(x @ layer.w_kr, positions, base=layer.rope_base))
    return cache


def one_step(layer, cache, x_new, absorbed: bool):
    """One decoding step; the cache is put back afterwards, so every step sees the same cached positions."""
    snapshot = cache.snapshot()
    start = time.perf_counter()
    output = layer(x_new, kv_cache=cache, absorbed=absorbed)
    seconds = time.perf_counter() - start
    cache.restore(snapshot)
    return seconds, output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N = 256 only, 1 repeat, print only")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(THREADS))
    lengths, repeats = ((256,), 1) if args.quick else (LENGTHS, args.repeats)

    torch.manual_seed(0)
    layer = at.MultiHeadLatentAttention(**SHAPE).eval()
    as_multi_head = sizes.AttentionLayout("the same heads as MHA", n_layers=1, n_heads=layer.n_heads,
                                          d_head=layer.d_head)
    rows = []
    with torch.no_grad():
        for n_cached in lengths:
            cache = filled_cache(layer, n_cached)
            x_new = torch.randn(1, 1, layer.d_model)  # (1, 1, d_model): the token being decoded
            _, materialised = one_step(layer, cache, x_new, absorbed=False)  # warm-up, and the outputs to compare
            _, absorbed = one_step(layer, cache, x_new, absorbed=True)
            difference = float((absorbed - materialised).abs().max())
            if difference > 1e-4 * float(materialised.abs().max()):
                raise RuntimeError(f"the absorbed and materialised paths differ by {difference} at N={n_cached}")
            times: dict[str, list[float]] = {"materialised": [], "absorbed": []}
            for _ in range(repeats):
                for name in times:  # take turns, so a burst of load hits both
                    seconds, _ = one_step(layer, cache, x_new, absorbed=name == "absorbed")
                    times[name].append(seconds)
            median = {name: statistics.median(values) for name, values in times.items()}
            rows.append({
                "cached_positions": n_cached,
                "seconds_per_step": {name: round(value, 6) for name, value in median.items()},
                "all_seconds": {name: [round(value, 6) for value in values] for name, values in times.items()},
                "speedup_absorbed": round(median["materialised"] / median["absorbed"], 2),
                "max_abs_difference": difference,
                "latent_cache_bytes": cache.nbytes,
                "multi_head_cache_bytes": sizes.layout_kv_cache_bytes(as_multi_head, n_cached, bytes_per_number=4),
            })
            print(f"N = {n_cached:5d}: materialised {median['materialised'] * 1e3:8.2f} ms, absorbed "
                  f"{median['absorbed'] * 1e3:8.2f} ms ({rows[-1]['speedup_absorbed']}x); cache "
                  f"{cache.nbytes / 2**10:,.0f} KiB, as MHA {rows[-1]['multi_head_cache_bytes'] / 2**10:,.0f} KiB; "
                  f"max |difference| {difference:.1e}")
    result = {
        "description": "One decoding step of attnlib.torch.MultiHeadLatentAttention (d_model 1024, 16 heads of 64, "
                       "d_latent 256, d_rope 32), batch 1, CPU, float32, no gradients; time = median wall-clock "
                       "seconds of one call with N cached positions.",
        "shape": {**SHAPE, "d_head": layer.d_head},
        "repeats": repeats,
        "rows": rows,
        "machine": host_info(torch=torch.__version__, attnlib=attnlib.__version__,
                             torch_threads=torch.get_num_threads()),
    }
    if args.quick:
        return
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
