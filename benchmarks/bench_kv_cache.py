"""KV-cache speed-up of the shipped ``tiny-lm`` when generating 512 tokens greedily, on 1 and on 2 threads.

    .venv/bin/python benchmarks/bench_kv_cache.py            # writes benchmarks/results/kv_cache.json
    .venv/bin/python benchmarks/bench_kv_cache.py --quick    # 64 tokens, 1 repeat, to try it out (prints only)

Both runs call ``TransformerLM.generate(prompt, 512, use_kv_cache=...)``: with the cache each step feeds one
new token and attends to the cached keys and values; without it each step runs the whole sequence again. The
two must produce the same tokens (checked). Time = median wall-clock seconds over the repeats, after one warm-up
call of each, the two methods taking turns. Each thread count (``torch.set_num_threads``) is measured in turn: more
threads speed up the large products of the uncached steps, hardly the small ones of a cached step, so the speed-up
of the cache shrinks as threads are added unless a cached step has little besides arithmetic. The top-level
``seconds``/``speedup`` fields repeat the 1-thread run; ``by_threads`` holds both.
"""

from __future__ import annotations

import os

THREAD_COUNTS = (1, 2)
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(max(THREAD_COUNTS))  # the pools' size; torch.set_num_threads picks per run

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _machine import host_info, take_turns  # noqa: E402

import attnlib  # noqa: E402
from attnlib import pretrained  # noqa: E402

PROMPT = "the apple fell on the ground because it was ripe ."
RESULTS = Path(__file__).resolve().parent / "results" / "kv_cache.json"
GOAL = 10.0  # the speed-up the cache should reach at 512 tokens, on every thread count measured


def machine(threads: int) -> dict:
    return host_info(torch=torch.__version__, attnlib=attnlib.__version__, torch_threads=threads)


def measure(model, prompt, n_new: int, repeats: int, threads: int) -> dict:
    """Time generate() with and without the cache on ``threads`` threads; the medians, every run and the ratio."""
    torch.set_num_threads(threads)
    runs = {
        "with_cache": lambda: model.generate(prompt, n_new, use_kv_cache=True),
        "without_cache": lambda: model.generate(prompt, n_new, use_kv_cache=False),
    }
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs to compare
    if not torch.equal(outputs["with_cache"], outputs["without_cache"]):
        raise RuntimeError("generation with and without the KV cache gave different tokens")
    times = take_turns(runs, repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "threads": threads,
        "seconds": {name: round(value, 4) for name, value in median.items()},
        "all_seconds": {name: [round(value, 4) for value in values] for name, values in times.items()},
        "tokens_per_second": {name: round(n_new / value, 1) for name, value in median.items()},
        "milliseconds_per_cached_token": round(1e3 * median["with_cache"] / n_new, 3),
        "speedup": round(median["without_cache"] / median["with_cache"], 2),
        "same_tokens": True,
        "machine": machine(threads),
    }, outputs["with_cache"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 tokens, 1 repeat, print only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    n_new, repeats = (64, 1) if args.quick else (512, args.repeats)

    model, tokenizer = pretrained.load("tiny-lm")
    prompt = torch.tensor([tokenizer.encode(PROMPT)])  # (1, n_prompt)
    by_threads, generated = {}, None
    for threads in THREAD_COUNTS:
        by_threads[str(threads)], generated = measure(model, prompt, n_new, repeats, threads)
    first = by_threads[str(THREAD_COUNTS[0])]
    result = {
        "description": "Greedy generation with tiny-lm (attnlib.pretrained), batch 1, CPU, float32; "
                       "time = median wall-clock seconds of one generate() call; measured on 1 and on 2 threads "
                       "(by_threads), the top-level fields repeat the 1-thread run.",
        "prompt": PROMPT,
        "prompt_tokens": prompt.shape[-1],
        "generated_tokens": n_new,
        "repeats": repeats,
        "seconds": first["seconds"],
        "all_seconds": first["all_seconds"],
        "tokens_per_second": first["tokens_per_second"],
        "speedup": first["speedup"],
        "same_tokens": True,
        "cache_bytes_at_end": _cache_bytes(model, generated),
        "by_threads": by_threads,
        "goal": {"speedup_at_least": GOAL,
                 "met_on_every_thread_count": all(run["speedup"] >= GOAL for run in by_threads.values())},
        "machine": first["machine"],
    }
    print(json.dumps({threads: {key: run[key] for key in ("seconds", "speedup", "milliseconds_per_cached_token")}
                      for threads, run in by_threads.items()}, indent=1))
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {RESULTS}")


def _cache_bytes(model, ids) -> int:
    """Size of the keys and values cached for the whole generated sequence (what the cache trades for speed)."""
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, kv_cache=cache)
    return cache.nbytes


if __name__ == "__main__":
    main()
