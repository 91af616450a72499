"""How long a figure takes to recompute after a Python-side input changes in a live notebook.

    .venv/bin/python benchmarks/bench_widgets.py            # writes benchmarks/results/widgets.json
    .venv/bin/python benchmarks/bench_widgets.py --quick    # fewer repeats, prints only

For each figure of ``attnlib.widgets`` and each size, one input trait is set again and again to alternating
values (so every assignment really recomputes), and the wall-clock time of the assignment is recorded: that is
the Python side of the round trip (compute with attnlib, round, update the synced traits). Reported: the median
(and min, max) over the repeats, after one warm-up assignment. Separately, ``serialise``: the time to turn the
whole widget state into the JSON text a kernel would send, and the size of that text. The goal is a recompute
under 100 ms for up to N = 64 tokens (the explorer's limit; the steppers stop at 32 positions, the KV cache
view at 32 tokens). Threads: ``ATTNLIB_BENCH_THREADS`` (default 1) for BLAS; the figures run torch on one
thread themselves. Speed is a property of this machine at the time of the run; the JSON records the machine,
the library versions and the load average.
"""

from __future__ import annotations

import os

# Fixed before NumPy and torch create their thread pools (see bench_flash_cpu.py for why one thread).
THREADS = os.environ.setdefault("ATTNLIB_BENCH_THREADS", "1")
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = THREADS

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import anywidget  # noqa: E402
import ipywidgets  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _machine import host_info  # noqa: E402

import attnlib  # noqa: E402
import attnlib.numpy as an  # noqa: E402
from attnlib import widgets  # noqa: E402

GOAL_MS = 100.0
RESULTS = Path(__file__).resolve().parent / "results" / "widgets.json"
WORDS = ("the cat sat on a mat while every dog in town ran after it because someone said there was food near "
         "the old red barn by the river where children played all summer long and nobody ever went home early "
         "as the sun set slowly over hills far away").split()


def sentence(n_words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n_words))


def cases(quick: bool):
    """(figure name, input name, size label N, the figure, the two values the input alternates between)."""
    sizes = [8, 32] if quick else [8, 16, 32, 64]
    for n in sizes:
        explorer = widgets.AttentionExplorer.from_sentence(sentence(n), seed=0)
        yield "AttentionExplorer", "seed", n, explorer, (1, 2)
        yield "AttentionExplorer", "sentence", n, explorer, (sentence(n), " ".join(reversed(sentence(n).split())))
    for n in [8, 32] if quick else [8, 16, 32]:
        stepper = widgets.TileStepper.random(n_q=n, n_k=n, d=4, seed=0, block_q=4, block_k=4)
        yield "TileStepper", "block_k", n, stepper, (8, 4)
    for n in [30, 60]:
        grader = widgets.ExamGrader(np.random.default_rng(0).integers(40, 100, n).astype(float), batch_size=10)
        yield "ExamGrader", "batch_size", n, grader, (7, 10)
    model = an.TransformerLM(vocab_size=50, d_model=32, n_heads=4, d_ff=128, n_layers=2, max_len=32, seed=0)
    for n in [16, 32]:
        view = widgets.KVCacheView.from_model(model, [1, 2, 3, 4], n_new=n - 4)
        yield "KVCacheView", "n_new", n, view, (n - 5, n - 4)
    for layers in [12] if quick else [12, 24]:
        add_norm = widgets.AddNormView.random(n_layers=layers, seed=0)
        yield "AddNormView", "seed", layers, add_norm, (1, 2)


def measure(figure, name, values, repeats: int) -> list[float]:
    setattr(figure, name, values[0])  # warm-up (first call paths, caches)
    times = []
    for k in range(repeats):
        value = values[(k + 1) % 2]  # alternate, so every assignment is a change
        start = time.perf_counter()
        setattr(figure, name, value)
        times.append((time.perf_counter() - start) * 1000)
        if figure.error:
            raise RuntimeError(f"{type(figure).__name__}.{name} = {value!r} failed: {figure.error}")
    return times


def serialise(figure, repeats: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        text = json.dumps(figure.get_state())
        times.append((time.perf_counter() - start) * 1000)
        size = len(text.encode())
    return times, size


def machine_info() -> dict:
    return host_info(blas_threads=int(THREADS), numpy=np.__version__, torch=torch.__version__,
                     anywidget=anywidget.__version__, ipywidgets=ipywidgets.__version__, attnlib=attnlib.__version__)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and repeats; print only")
    parser.add_argument("--repeats", type=int, default=None, help="assignments timed per case (default 21)")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 21)
    info = machine_info()
    rows = []
    print(f"{'figure':18s} {'input':10s} {'N':>4s} {'median ms':>10s} {'min':>7s} {'max':>7s} "
          f"{'JSON ms':>8s} {'state KB':>9s}")
    for figure_name, input_name, n, figure, values in cases(args.quick):
        times = measure(figure, input_name, values, repeats)
        json_times, size = serialise(figure, max(3, repeats // 3))
        row = {"figure": figure_name, "input": input_name, "n": n, "repeats": repeats,
               "recompute_ms_median": round(statistics.median(times), 3), "recompute_ms_min": round(min(times), 3),
               "recompute_ms_max": round(max(times), 3),
               "serialise_ms_median": round(statistics.median(json_times), 3), "state_bytes": size,
               "goal_ms": GOAL_MS, "meets_goal": statistics.median(times) < GOAL_MS}
        rows.append(row)
        print(f"{figure_name:18s} {input_name:10s} {n:4d} {row['recompute_ms_median']:10.2f} "
              f"{row['recompute_ms_min']:7.2f} {row['recompute_ms_max']:7.2f} {row['serialise_ms_median']:8.2f} "
              f"{size / 1024:9.1f}")
    info["load_average_at_end"] = list(os.getloadavg())
    if args.quick:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    note = ("N: tokens for AttentionExplorer and KVCacheView, n_q = n_k for TileStepper, marks for ExamGrader, "
            "layers for AddNormView. recompute: wall time of one Python-side trait assignment (attnlib computes, "
            "the synced traits update), median over repeats after a warm-up; serialise: json.dumps of the whole "
            "widget state (what a kernel sends), state_bytes: its size.")
    RESULTS.write_text(json.dumps({"machine": info, "note": note, "results": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
