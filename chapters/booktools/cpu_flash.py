"""The CPU FlashAttention benchmark (benchmarks/bench_flash_cpu.py): load its JSON, tabulate it, plot it."""

from __future__ import annotations

import json
from pathlib import Path

from . import RESULTS as RESULTS_DIRECTORY

RESULTS = RESULTS_DIRECTORY / "flash_cpu.json"
LABELS = {
    "flash_numpy": "FlashAttention (attnlib.numpy)",
    "naive_numpy": "naive NumPy (N x N scores)",
    "torch_sdpa": "torch scaled_dot_product_attention",
    "flash_torch": "FlashAttention (attnlib.torch, tiled)",
}
STYLES = {"flash_numpy": "o-", "naive_numpy": "s--", "torch_sdpa": "^-", "flash_torch": "d:"}


def load(path: str | Path | None = None) -> dict:
    """The benchmark report as written by the script (default: the committed results file)."""
    path = Path(path) if path is not None else RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark results at {path}; run benchmarks/bench_flash_cpu.py first")
    report = json.loads(path.read_text())
    for key in ("results", "methods", "machine"):
        if key not in report:
            raise ValueError(f"{path} is not a bench_flash_cpu report: it has no {key!r} entry")
    return report


def table(report: dict) -> list[dict]:
    """One row per sequence length: median milliseconds and peak extra MiB (RSS) per method."""
    rows = []
    for result in report["results"]:
        row = {"n": result["n"]}
        for method in report["methods"]:
            row[f"{method}_ms"] = result["time"][method]["median_s"] * 1e3
            row[f"{method}_mib"] = result["memory"][method]["rss_peak_extra_bytes"] / 2**20
        rows.append(row)
    return rows


def plot(report: dict, *, methods=None):
    """Two log-log panels against N: median time, and peak extra memory (RSS growth; NumPy also tracemalloc)."""
    import matplotlib.pyplot as plt  # only needed for the figure

    methods = list(report["methods"] if methods is None else methods)
    n = [result["n"] for result in report["results"]]
    fig, (ax_time, ax_memory) = plt.subplots(1, 2, figsize=(9.5, 4))
    for method in methods:
        seconds = [result["time"][method]["median_s"] for result in report["results"]]
        ax_time.plot(n, [s * 1e3 for s in seconds], STYLES.get(method, "o-"), label=LABELS.get(method, method))
        rss = [result["memory"][method]["rss_peak_extra_bytes"] / 2**20 for result in report["results"]]
        line = ax_memory.plot(n, rss, STYLES.get(method, "o-"), label=LABELS.get(method, method))[0]
        traced = [result["memory"][method].get("tracemalloc_peak_bytes") for result in report["results"]]
        if all(t is not None for t in traced):
            ax_memory.plot(n, [t / 2**20 for t in traced], "x", color=line.get_color(), markersize=8)
    machine = report["machine"]
    ax_time.set_title(f"median time, {machine.get('threads', '?')} thread(s), float32, d = {report.get('d')}")
    ax_time.set_ylabel("milliseconds")
    ax_memory.set_title("peak extra memory of one call (x: tracemalloc)")
    ax_memory.set_ylabel("MiB")
    for ax in (ax_time, ax_memory):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N")
        ax.grid(True, which="major", alpha=0.3)
    ax_time.legend(fontsize=8)
    fig.tight_layout()
    return fig
