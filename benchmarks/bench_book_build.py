"""How long a clean build of the book takes, and how long each chapter takes to execute.

    .venv/bin/python benchmarks/bench_book_build.py      # writes benchmarks/results/book_build.json

Builds the whole book from scratch, exactly as ``scripts/build-book.sh`` does (``-W --keep-going``, every chapter
executed), but into a fresh temporary folder, so no execution cache is reused and the repository's own ``_build``
is left alone. Per-chapter times come from the execution cache the build fills (the seconds each notebook's
kernel spent running it). The goals: every chapter in at most 60 s and the whole build in at most 5 minutes, on
2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

from _machine import host_info

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "book_build.json"
CHAPTER_GOAL_SECONDS = 60
BUILD_GOAL_SECONDS = 300


def chapter_seconds(build_folder: Path) -> dict[str, float]:
    """Execution seconds per notebook, read from the build's jupyter-cache database."""
    from jupyter_cache import get_cache

    cache = get_cache(build_folder / ".jupyter_cache")
    seconds = {}
    for record in cache.list_cache_records():
        name = Path(record.uri).resolve().relative_to(ROOT).as_posix()
        seconds[name] = round(float(record.data["execution_seconds"]), 2)
    return dict(sorted(seconds.items()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    machine = host_info(**{package.replace("-", "_"): metadata.version(package)
                           for package in ("jupyter-book", "myst-nb", "numpy", "torch")})
    with tempfile.TemporaryDirectory(prefix="attnlib-book-") as output:
        start = time.perf_counter()
        subprocess.run([str(jupyter_book), "build", "--warningiserror", "--keep-going", "--path-output", output,
                        str(ROOT)], check=True, stdout=subprocess.DEVNULL)
        build_seconds = time.perf_counter() - start
        chapters = chapter_seconds(Path(output) / "_build")
    slowest = max(chapters.values())
    result = {
        "description": "Clean build of the book (jupyter-book build -W --keep-going, every chapter executed) into an "
                       "empty folder; chapter times are the kernel's execution seconds recorded by the build's cache.",
        "build_seconds": round(build_seconds, 1),
        "chapter_execution_seconds": chapters,
        "slowest_chapter": max(chapters, key=chapters.get),
        "goals": {"chapter_max_seconds": CHAPTER_GOAL_SECONDS, "build_max_seconds": BUILD_GOAL_SECONDS},
        "goals_met": {"chapters": slowest <= CHAPTER_GOAL_SECONDS, "build": build_seconds <= BUILD_GOAL_SECONDS},
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in ("build_seconds", "slowest_chapter", "goals_met")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
