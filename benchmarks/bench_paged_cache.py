"""Paged vs contiguous KV cache: how much of the reserved memory holds tokens, and what paging costs in decode time.

    .venv/bin/python benchmarks/bench_paged_cache.py            # writes benchmarks/results/paged_cache.json
    .venv/bin/python benchmarks/bench_paged_cache.py --quick    # 32 requests, 64 tokens, 1 repeat (prints only)

1. Memory. A simulated workload of 256 requests is served by ``attnlib.numpy.serve`` (continuous batching over a
   ``PagedKVCache``). Lengths are drawn with a fixed seed: prompt lengths uniform on 16..256 tokens, output lengths
   1 + a geometric count with mean 64 (at most 256), arrivals a Poisson process of one request per 2 steps on
   average. After every step the trace gives the positions stored and the blocks in use. Utilisation = positions
   stored / positions allocated, summed over all steps (a time average of the memory in use), for

   * the paged cache: allocated = blocks in use x block_size (16 positions);
   * a contiguous cache that preallocates the maximum length (the model's ``max_len``, 512) for every running
     sequence, as serving systems before paging did;
   * a contiguous cache that knows each sequence's final length in advance and reserves exactly that (an oracle
     no real server has; its memory still sits empty until the tokens are generated).

   The lengths decide these numbers, not the weights, so the model is a small random one (1 layer) to keep the
   256 requests fast. The anchor is the vLLM paper (Kwon et al. 2023, arXiv 2309.06180), which measured 20.4-38.2 %
   of the KV-cache memory holding tokens in earlier systems and about 96 % with paging.

2. Time. The shipped ``tiny-lm`` generates 512 tokens after the same prompt as ``bench_kv_cache.py``, once through
   ``TransformerLM.generate`` (contiguous ``KVCache``) and once through ``attnlib.torch.serve`` with that one request
   (paged cache, keys and values read back through the block table every step); the tokens must be equal. Time =
   median wall-clock seconds over the repeats after a warm-up, the two taking turns, on 1 thread.
"""

from __future__ import annotations

import os

THREADS = os.environ.setdefault("ATTNLIB_BENCH_THREADS", "1")
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _machine import host_info, take_turns  # noqa: E402

import attnlib  # noqa: E402
import attnlib.numpy as anp  # noqa: E402
import attnlib.torch as at  # noqa: E402
from attnlib import pretrained  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "paged_cache.json"
PROMPT = "the apple fell on the ground because it was ripe ."
SEED = 2309  # the workload's lengths and arrivals
WORKLOAD = {"requests": 256, "prompt_tokens_uniform": [16, 256], "output_tokens_mean": 64, "output_tokens_max": 256,
            "arrivals_per_step": 0.5}
MAX_LEN, BLOCK_SIZE, N_BLOCKS = 512, 16, 512  # the simulated model's context; the paged pool: 8192 positions
GOALS = {"paged_utilisation_at_least": 0.95, "paged_over_contiguous_time_at_most": 1.25}
PAPER = {"source": "Kwon et al. 2023, Efficient Memory Management for Large Language Model Serving with "
                   "PagedAttention, arXiv 2309.06180",
         "earlier_systems_kv_memory_used": [0.204, 0.382], "vllm_kv_memory_used": 0.96}


def machine() -> dict:
    return host_info(torch=torch.__version__, numpy=np.__version__, attnlib=attnlib.__version__,
                     torch_threads=torch.get_num_threads())


def draw_workload(n_requests: int, rng) -> list[tuple[int, int, int]]:
    """(prompt length, output length, arrival step) per request, from the distribution in the module docstring."""
    low, high = WORKLOAD["prompt_tokens_uniform"]
    prompts = rng.integers(low, high + 1, n_requests)
    mean = WORKLOAD["output_tokens_mean"]
    outputs = np.minimum(1 + rng.geometric(1 / (mean - 1), n_requests) - 1, WORKLOAD["output_tokens_max"])
    arrivals = np.floor(np.cumsum(rng.exponential(1 / WORKLOAD["arrivals_per_step"], n_requests))).astype(int)
    return [(int(p), int(o), int(a)) for p, o, a in zip(prompts, outputs, arrivals, strict=True)]


def memory_utilisation(n_requests: int) -> dict:
    """Serve the simulated workload; utilisation of the paged cache and of two contiguous reservations."""
    rng = np.random.default_rng(SEED)
    work = draw_workload(n_requests, rng)
    model = anp.TransformerLM(64, 16, 2, 32, 1, MAX_LEN, seed=0)
    requests = [anp.Request(rng.integers(0, 64, prompt), n_new, arrival) for prompt, n_new, arrival in work]
    start = time.perf_counter()
    trace = anp.serve(model, requests, n_blocks=N_BLOCKS, block_size=BLOCK_SIZE)
    seconds = time.perf_counter() - start
    for tokens, (prompt, n_new, _) in zip(trace.tokens, work, strict=True):  # every request ran to its length
        if tokens.shape[-1] != prompt + n_new:
            raise RuntimeError(f"a request of {prompt} + {n_new} tokens came back with {tokens.shape[-1]}")
    stored = np.array(trace.stored_positions)  # per step, after the sequences that finished in it have left
    still_running = np.array([sum(trace.finished[r] > step for r in running) for step, running
                              in enumerate(trace.running)])
    allocated = {
        "paged": BLOCK_SIZE * np.array(trace.blocks_in_use),
        "contiguous_max_length": MAX_LEN * still_running,
        "contiguous_exact_length": np.array(trace.reserved_positions),
    }
    utilisation = {name: round(float(stored.sum() / held.sum()), 4) for name, held in allocated.items()}
    lengths = np.array([[p, o] for p, o, _ in work])
    return {
        "requests": n_requests,
        "seed": SEED,
        "distribution": WORKLOAD,
        "drawn": {"prompt_tokens_mean": round(float(lengths[:, 0].mean()), 1),
                  "output_tokens_mean": round(float(lengths[:, 1].mean()), 1),
                  "output_tokens_max": int(lengths[:, 1].max()), "last_arrival_step": work[-1][2]},
        "model": {"vocab_size": 64, "d_model": 16, "n_heads": 2, "d_ff": 32, "n_layers": 1, "max_len": MAX_LEN},
        "block_size": BLOCK_SIZE,
        "n_blocks": N_BLOCKS,
        "steps": trace.n_steps,
        "most_sequences_running": int(max(len(running) for running in trace.running)),
        "mean_sequences_running": round(float(np.mean([len(running) for running in trace.running])), 1),
        "utilisation": utilisation,
        "peak_positions_allocated": {name: int(held.max()) for name, held in allocated.items()},
        "peak_positions_stored": int(stored.max()),
        "serving_seconds": round(seconds, 2),
    }


def decode_times(n_new: int, repeats: int) -> dict:
    """tiny-lm, n_new tokens: contiguous cache (generate) vs paged cache (serve, one request)."""
    model, tokenizer = pretrained.load("tiny-lm")
    prompt = torch.tensor(tokenizer.encode(PROMPT))  # (n_prompt,)
    n_blocks = math.ceil((prompt.shape[-1] + n_new) / BLOCK_SIZE)
    runs = {
        "contiguous": lambda: model.generate(prompt[None], n_new)[0],
        "paged": lambda: at.serve(model, [at.Request(prompt, n_new)], n_blocks=n_blocks,
                                  block_size=BLOCK_SIZE).tokens[0],
    }
    outputs = {name: run() for name, run in runs.items()}  # warm-up, and the tokens to compare
    if not torch.equal(outputs["contiguous"], outputs["paged"]):
        raise RuntimeError("the paged and the contiguous cache generated different tokens")
    times = take_turns(runs, repeats)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "model": "tiny-lm",
        "prompt": PROMPT,
        "prompt_tokens": int(prompt.shape[-1]),
        "generated_tokens": n_new,
        "block_size": BLOCK_SIZE,
        "repeats": repeats,
        "seconds": {name: round(value, 4) for name, value in median.items()},
        "all_seconds": {name: [round(value, 4) for value in values] for name, values in times.items()},
        "ratio_paged_over_contiguous": round(median["paged"] / median["contiguous"], 3),
        "same_tokens": True,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 requests, 64 tokens, 1 repeat; print only")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(int(THREADS))
    memory = memory_utilisation(32 if args.quick else WORKLOAD["requests"])
    print(json.dumps({key: memory[key] for key in ("utilisation", "steps", "mean_sequences_running")}, indent=1))
    timing = decode_times(64 if args.quick else 512, 1 if args.quick else args.repeats)
    print(json.dumps({key: timing[key] for key in ("seconds", "ratio_paged_over_contiguous")}, indent=1))
    result = {
        "description": "Memory utilisation of the paged KV cache against contiguous preallocation on a simulated "
                       "continuous-batching workload, and tiny-lm's decode time with the paged vs the contiguous "
                       "cache (CPU, float32, median wall-clock seconds).",
        "memory": memory,
        "decode": timing,
        "paper": PAPER,
        "goals": {
            **GOALS,
            "paged_utilisation_met": memory["utilisation"]["paged"] >= GOALS["paged_utilisation_at_least"],
            "time_met": timing["ratio_paged_over_contiguous"] <= GOALS["paged_over_contiguous_time_at_most"],
        },
        "machine": machine(),
    }
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
