"""KV-cache speed-up of the shipped ``tiny-lm`` when generating 512 tokens greedily.

    .venv/bin/python benchmarks/bench_kv_cache.py            # writes benchmarks/results/kv_cache.json
    .venv/bin/python benchmarks/bench_kv_cache.py --quick    # 64 tokens, 1 repeat, to try it out (prints only)

Both runs call ``TransformerLM.generate(prompt, 512, use_kv_cache=...)``: with the cache each step feeds one
new token and attends to the cached keys and values; without it each step runs the whole sequence again. The
two must produce the same tokens (checked). Time = median wall-clock seconds over the repeats, after one warm-up
call of each, the two methods taking turns. Threads: ``ATTNLIB_BENCH_THREADS`` (default 1), as in the other
CPU benchmarks, because on a small shared machine multi-threaded runs swing a lot.
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
from attnlib import pretrained  # noqa: E402

PROMPT = "the apple fell on the ground because it was ripe ."
RESULTS = Path(__file__).resolve().parent / "results" / "kv_cache.json"


def machine() -> dict:
    return host_info(torch=torch.__version__, attnlib=attnlib.__version__, torch_threads=torch.get_num_threads())


def timed(function) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 tokens, 1 repeat, print only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(THREADS))
    n_new, repeats = (64, 1) if args.quick else (512, args.repeats)

    model, tokenizer = pretrained.load("tiny-lm")
    prompt = torch.tensor([tokenizer.encode(PROMPT)])  # (1, n_prompt)
    runs = {
        "with_cache": lambda: model.generate(prompt, n_new, use_kv_cache=True),
        "without_cache": lambda: model.generate(prompt, n_new, use_kv_cache=False),
    }
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the outputs to compare
    if not torch.equal(outputs["with_cache"], outputs["without_cache"]):
        raise RuntimeError("generation with and without the KV cache gave different tokens")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():  # take turns, so a burst of load hits both
            seconds, _ = timed(run)
            times[name].append(seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    result = {
        "description": "Greedy generation with tiny-lm (attnlib.pretrained), batch 1, CPU, float32; "
                       "time = median wall-clock seconds of one generate() call.",
        "prompt": PROMPT,
        "prompt_tokens": prompt.shape[-1],
        "generated_tokens": n_new,
        "repeats": repeats,
        "seconds": {name: round(value, 4) for name, value in median.items()},
        "all_seconds": {name: [round(value, 4) for value in values] for name, values in times.items()},
        "tokens_per_second": {name: round(n_new / value, 1) for name, value in median.items()},
        "speedup": round(median["without_cache"] / median["with_cache"], 2),
        "same_tokens": True,
        "cache_bytes_at_end": _cache_bytes(model, outputs["with_cache"]),
        "machine": machine(),
    }
    print(json.dumps({key: result[key] for key in ("seconds", "speedup", "tokens_per_second")}, indent=1))
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
