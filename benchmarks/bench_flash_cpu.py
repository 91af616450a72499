"""FlashAttention on the CPU: NumPy flash vs naive NumPy vs torch's scaled_dot_product_attention.

    .venv/bin/python benchmarks/bench_flash_cpu.py            # writes benchmarks/results/flash_cpu.json
    .venv/bin/python benchmarks/bench_flash_cpu.py --quick    # small sizes only, to try it out (prints, no file)

One head, float32, d = 64, sequence lengths N = 512 .. 16384, no mask. Measured:

* time: median wall-clock seconds over several calls after one warm-up call (fewer calls at large N), the
  methods taking turns call by call;
* peak extra memory, each (method, N) in a fresh child process so nothing earlier in the run is counted:
  - ``rss``: the growth of the resident set during one call. Linux's peak-RSS counter (VmHWM) is reset through
    /proc/self/clear_refs just before the call, and the child runs with MALLOC_MMAP_THRESHOLD_=65536 so every
    large array is its own mapping, returned to the system when freed (otherwise the C allocator keeps freed
    memory and later calls look free). Works the same for NumPy and torch.
  - ``tracemalloc`` (NumPy methods only): Python's allocation tracer, which sees every NumPy array.
  Inputs exist before the measurement starts; the output is part of what is measured.

Methods: ``flash_numpy`` (attnlib.numpy.flash_attention, default blocks), ``naive_numpy`` (the textbook
version materialising the N x N scores once, updated in place: the leanest naive code), ``torch_sdpa``
(torch.nn.functional.scaled_dot_product_attention on CPU tensors) and ``flash_torch`` (attnlib.torch's tiled
backend). Everything runs on ``ATTNLIB_BENCH_THREADS`` threads (default 1). Speed is a property of this machine
at the time of the run; the JSON records the machine, the library versions and the load average.
"""

from __future__ import annotations

import os

# Threads are fixed before NumPy and torch load their thread pools. One thread by default: on a small machine
# shared with other jobs, multi-threaded BLAS threads wait on each other and times swing by 10x from run to run.
THREADS = os.environ.setdefault("ATTNLIB_BENCH_THREADS", "1")
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _machine import host_info  # noqa: E402

import attnlib  # noqa: E402
from attnlib.numpy import flash_attention  # noqa: E402
from attnlib.numpy.flash_attention import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q  # noqa: E402
from attnlib.torch import flash_attention as torch_flash_attention  # noqa: E402

D = 64
SIZES = [512, 1024, 2048, 4096, 8192, 16384]
QUICK_SIZES = [512, 1024, 4096]
METHODS = ["flash_numpy", "naive_numpy", "torch_sdpa", "flash_torch"]
RESULTS = Path(__file__).resolve().parent / "results" / "flash_cpu.json"


def naive_numpy(q, k, v, scale):
    """softmax(q k^T * scale) v with the N x N score matrix built once and normalised in place."""
    scores = q @ k.T  # (N, N): the array FlashAttention avoids
    scores *= scale
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    return scores @ v


def make_inputs(n: int):
    rng = np.random.default_rng(n)
    q, k, v = (rng.standard_normal((n, D), dtype=np.float32) for _ in range(3))
    return q, k, v


def runner(method: str, q, k, v):
    """A zero-argument callable running ``method`` on these inputs (torch ones get (1, 1, N, d) tensors)."""
    scale = 1.0 / np.sqrt(D)
    if method == "flash_numpy":
        return lambda: flash_attention(q, k, v)
    if method == "naive_numpy":
        return lambda: naive_numpy(q, k, v, scale)
    qt, kt, vt = (torch.from_numpy(x)[None, None] for x in (q, k, v))  # (1, 1, N, d), sharing NumPy's memory
    if method == "torch_sdpa":
        return lambda: torch.nn.functional.scaled_dot_product_attention(qt, kt, vt)
    if method == "flash_torch":
        return lambda: torch_flash_attention(qt, kt, vt, backend="torch")
    raise ValueError(f"unknown method {method!r}")


def repeats_for(n: int) -> int:
    return 15 if n <= 1024 else 9 if n <= 2048 else 7 if n <= 4096 else 5 if n <= 8192 else 3


def time_methods(n: int, inputs) -> dict:
    """Median and minimum seconds per method. The methods take turns within each repeat, so a burst of load
    from other processes hits all of them alike instead of spoiling one method's numbers."""
    calls = {method: runner(method, *inputs) for method in METHODS}
    seconds = {method: [] for method in METHODS}
    with torch.no_grad():
        for call in calls.values():
            call()  # warm-up: thread pools, first-touch page faults
        for _ in range(repeats_for(n)):
            for method, call in calls.items():
                start = time.perf_counter()
                call()
                seconds[method].append(time.perf_counter() - start)
    return {
        method: {"median_s": statistics.median(times), "min_s": min(times), "all_s": times}
        for method, times in seconds.items()
    }


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def memory_child(method: str, n: int) -> dict:
    """Runs in a fresh process: peak extra memory of one call, by peak RSS and (NumPy) by tracemalloc."""
    inputs = make_inputs(n)
    call = runner(method, *inputs)
    with torch.no_grad():
        call()  # warm-up, so one-off start-up allocations (thread pools, libraries) are not counted
        rss_before = _proc_status_bytes("VmRSS")
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak-RSS counter VmHWM to the current RSS
        call()
        result = {"rss_peak_extra_bytes": _proc_status_bytes("VmHWM") - rss_before}
        if method.endswith("_numpy"):
            tracemalloc.start()
            call()
            result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return result


def measure_memory(method: str, n: int) -> dict:
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    completed = subprocess.run(
        [sys.executable, __file__, "--memory-child", method, str(n)],
        env=environment, capture_output=True, text=True, check=True,
    )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def max_abs_difference(n: int, inputs) -> dict:
    """How far each method's output is from the naive one (all float32): a sanity check, not a benchmark."""
    with torch.no_grad():
        outputs = {method: np.asarray(runner(method, *inputs)()).reshape(n, D) for method in METHODS}
    return {method: float(np.abs(out - outputs["naive_numpy"]).max()) for method, out in outputs.items()}


def machine_info() -> dict:
    blas = np.show_config(mode="dicts").get("Build Dependencies", {}).get("blas", {})
    return host_info(numpy=np.__version__, numpy_blas=f"{blas.get('name', '?')} {blas.get('version', '')}".strip(),
                     torch=torch.__version__, threads=int(THREADS), torch_threads=torch.get_num_threads(),
                     attnlib=attnlib.__version__)


def evaluate_goals(results: list[dict]) -> dict:
    """The two targets: flash time <= 1.3x naive at N = 4096; flash memory <= 5% of naive's from N = 4096 on."""
    by_n = {row["n"]: row for row in results}
    goals = {}
    if 4096 in by_n:
        row = by_n[4096]
        ratio = row["time"]["flash_numpy"]["median_s"] / row["time"]["naive_numpy"]["median_s"]
        goals["time_ratio_flash_over_naive_at_4096"] = ratio
        goals["time_goal_met"] = ratio <= 1.3
    memory_ratios = {}
    for n, row in by_n.items():
        if n >= 4096:
            flash, naive = row["memory"]["flash_numpy"], row["memory"]["naive_numpy"]
            memory_ratios[str(n)] = {
                kind: flash[kind] / naive[kind] for kind in ("tracemalloc_peak_bytes", "rss_peak_extra_bytes")
            }
    if memory_ratios:
        goals["memory_ratio_flash_over_naive"] = memory_ratios
        goals["memory_goal_met"] = all(r["tracemalloc_peak_bytes"] <= 0.05 for r in memory_ratios.values())
    return goals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes only; writes a file only if --out is given")
    parser.add_argument("--out", type=Path, default=None, help=f"where to write the JSON (default {RESULTS})")
    parser.add_argument("--memory-child", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        method, n = args.memory_child
        print(json.dumps(memory_child(method, int(n))))
        return

    torch.set_num_threads(int(THREADS))
    started = time.perf_counter()
    info = machine_info()
    results = []
    for n in QUICK_SIZES if args.quick else SIZES:
        inputs = make_inputs(n)
        row = {"n": n, "repeats": repeats_for(n), "time": time_methods(n, inputs), "memory": {}}
        for method in METHODS:
            row["memory"][method] = measure_memory(method, n)
        row["max_abs_difference_vs_naive"] = max_abs_difference(n, inputs)
        results.append(row)
        summary = ", ".join(f"{m} {row['time'][m]['median_s'] * 1e3:.1f} ms" for m in METHODS)
        print(f"N={n}: {summary}", flush=True)
        del inputs

    info["load_average_at_end"] = list(os.getloadavg())
    info["total_runtime_s"] = time.perf_counter() - started
    report = {
        "description": "One attention head, float32, no mask; time = median wall-clock seconds; memory = peak "
                       "extra bytes of one call (RSS growth in a fresh process, and tracemalloc for NumPy).",
        "d": D,
        "dtype": "float32",
        "flash_block_q": DEFAULT_BLOCK_Q,
        "flash_block_k": DEFAULT_BLOCK_K,
        "methods": METHODS,
        "machine": info,
        "results": results,
        "goals": evaluate_goals(results),
    }
    if args.quick and args.out is None:
        print(json.dumps(report["goals"], indent=1))
        return
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} in {info['total_runtime_s']:.0f} s; goals: {json.dumps(report['goals'])}")


if __name__ == "__main__":
    main()
