"""What the chapters share that is not part of attnlib: loading the committed benchmark results, and plotting.

``booktools`` lives in the book's checkout, next to the chapters, and is never installed. Jupyter Book runs each
chapter with ``chapters/`` as its working directory, and so does Jupyter when a reader opens a chapter, so
``import booktools`` works from any chapter; the tests find it through pytest's ``pythonpath``. It reads
``benchmarks/results/`` of the same checkout, which an installed ``attnlib`` could not see.

* ``booktools.cpu_flash`` -- the CPU FlashAttention benchmark (``benchmarks/bench_flash_cpu.py``): load, tabulate, plot.
* ``booktools.gpu_flash`` -- the GPU benchmark (``benchmarks/bench_flash_gpu.py``): load, compare with the goals, plot.
* ``booktools.plots`` -- the chapters' matplotlib helpers (a labelled heatmap of attention weights).
"""

from pathlib import Path

# chapters/booktools/__init__.py -> the checkout's root -> benchmarks/results
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
