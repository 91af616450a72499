"""Results of ``benchmarks/bench_flash_gpu.py``: load the JSON files, summarise them against the goals, plot them.

Every number shown comes from a results file that the benchmark wrote on a real GPU. When there is none, the
functions say so ("not measured yet") and draw nothing: nothing here estimates or fills in a missing number.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import RESULTS

PATTERN = "flash_gpu_*.json"
NOT_MEASURED = (  # printed in chapter 11: lines that fit the book's column
    "GPU numbers: not measured yet.\nNo benchmarks/results/flash_gpu_*.json exists, because\n"
    "benchmarks/bench_flash_gpu.py has not been run on a CUDA GPU for this book."
)
OURS = "attnlib triton"


def load(directory=None) -> list[dict]:
    """Every GPU results file in ``directory`` (default ``benchmarks/results``), sorted by file name."""
    directory = RESULTS if directory is None else Path(directory)
    results = []
    for path in sorted(directory.glob(PATTERN)):
        result = json.loads(path.read_text())
        result["path"] = str(path)
        results.append(result)
    return results


def _row(result: dict, line: str, pass_name: str, n: int, d: int, causal: bool):
    for row in result["rows"]:
        if (row["line"], row["pass"], row["n"], row["d"], row["causal"]) == (line, pass_name, n, d, causal):
            return row if row["status"] == "ok" else None
    return None


def _best_sdpa(result: dict, pass_name: str, n: int, d: int, causal: bool):
    """The fastest forced SDPA backend that ran at this shape (backends that were unavailable do not count)."""
    candidates = []
    for line in sorted({row["line"] for row in result["rows"] if row["line"].startswith("sdpa ")}):
        row = _row(result, line, pass_name, n, d, causal)
        if row is not None:
            candidates.append(row)
    return max(candidates, key=lambda row: row["tflops"], default=None)


def goals(result: dict, *, n: int = 16384, d: int = 128, causal: bool = False) -> dict | None:
    """How attnlib's kernel compares with the goals at one shape, from one results file (None if not measured).

    * forward speed / the fastest SDPA backend's forward speed (chapter 11: at least 1.0 against SDPA's
      FlashAttention-2 backend, about 0.66 when the fastest is cuDNN, as the FlashAttention-3 paper's Triton
      baseline reached);
    * forward speed / the dense bfloat16 matmul ceiling (reported, for the record);
    * backward speed / the fastest SDPA backend's (goal >= 0.9), with each backward time taken as
      time(forward + backward) - time(forward) of the same line.
    """
    ours_forward = _row(result, OURS, "forward", n, d, causal)
    ours_both = _row(result, OURS, "forward_backward", n, d, causal)
    best_forward = _best_sdpa(result, "forward", n, d, causal)
    if ours_forward is None or best_forward is None:
        return None
    summary = {
        "device": result["machine"]["device"],
        "n": n,
        "d": d,
        "causal": causal,
        "ours_forward_tflops": ours_forward["tflops"],
        "best_sdpa_forward": best_forward["line"],
        "best_sdpa_forward_tflops": best_forward["tflops"],
        "forward_vs_best_sdpa": ours_forward["tflops"] / best_forward["tflops"],
        "forward_vs_matmul_ceiling": ours_forward["fraction_of_ceiling"],
        "backward_vs_best_sdpa": None,
    }
    backward_ms = {}
    for line in {row["line"] for row in result["rows"]}:
        forward = _row(result, line, "forward", n, d, causal)
        both = _row(result, line, "forward_backward", n, d, causal)
        if forward is not None and both is not None and both["ms"] > forward["ms"]:
            backward_ms[line] = both["ms"] - forward["ms"]
    sdpa_backward = [ms for line, ms in backward_ms.items() if line.startswith("sdpa ")]
    if ours_both is not None and OURS in backward_ms and sdpa_backward:
        summary["backward_vs_best_sdpa"] = min(sdpa_backward) / backward_ms[OURS]  # speed ratio = inverse time ratio
    return summary


def plot(results=None, *, pass_name: str = "forward", directory=None):
    """TFLOP/s against sequence length, one row of panels per results file; None (and a message) if none exist."""
    if results is None:
        results = load(directory)
    if not results:
        print(NOT_MEASURED)
        return None
    import matplotlib.pyplot as plt

    panels = sorted({(row["d"], row["causal"]) for result in results for row in result["rows"]})
    figure, axes = plt.subplots(
        len(results), len(panels), figsize=(3.6 * len(panels), 3.2 * len(results)), squeeze=False, sharey="row"
    )
    for result, row_axes in zip(results, axes, strict=True):
        ceiling = result["matmul_ceiling"]["tflops"]
        lines = sorted({row["line"] for row in result["rows"]}, key=lambda name: (name != OURS, name))
        for (d, causal), axis in zip(panels, row_axes, strict=True):
            for line in lines:
                points = sorted(
                    (row["n"], row["tflops"]) for row in result["rows"]
                    if (row["line"], row["pass"], row["d"], row["causal"]) == (line, pass_name, d, causal)
                    and row["status"] == "ok"
                )
                if points:
                    style = {"linewidth": 2.5, "color": "black"} if line == OURS else {"linewidth": 1.2}
                    axis.plot(*zip(*points, strict=True), marker="o", markersize=3, label=line, **style)
            axis.axhline(ceiling, linestyle="--", color="gray", linewidth=1, label="bf16 matmul ceiling")
            axis.set_xscale("log", base=2)
            axis.set_title(f"{result['machine']['device']}\nd={d}, {'causal' if causal else 'not causal'}", fontsize=9)
            axis.set_xlabel("sequence length n")
        row_axes[0].set_ylabel(f"TFLOP/s ({pass_name.replace('_', ' + ')}, {result['dtype']})")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    return figure
