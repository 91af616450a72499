"""How long a clean build of the book takes, and how long each chapter takes to execute.

    .venv/bin/python benchmarks/bench_book_build.py      # writes benchmarks/results/book_build.json

Builds the whole book from scratch, exactly as ``scripts/build-book.sh`` does (``-W --keep-going``, every chapter
executed), but into a fresh temporary folder, so the repository's own ``_build`` is left alone. The book executes
each chapter inline, while Sphinx reads it; per-chapter times are the seconds MyST-NB reports for each notebook
("Executed notebook in ... seconds"). The goals: every chapter in at most 60 s and the whole build in at most
5 minutes, on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


EXECUTED = re.compile(r"^(?P<path>\S+\.md): Executed notebook in (?P<seconds>[0-9.]+) seconds", re.MULTILINE)


def chapter_seconds(log: str) -> dict[str, float]:
    """Execution seconds per notebook, read from the lines MyST-NB writes as it executes each one."""
    seconds = {}
    for found in EXECUTED.finditer(log):
        name = Path(found["path"]).resolve().relative_to(ROOT).as_posix()
        seconds[name] = round(float(found["seconds"]), 2)
    if not seconds:
        raise RuntimeError("the build log names no executed notebook: did MyST-NB's message change?")
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
        build = subprocess.run([str(jupyter_book), "build", "--warningiserror", "--keep-going", "--path-output",
                                output, str(ROOT)], check=True, capture_output=True, text=True)
        build_seconds = time.perf_counter() - start
        chapters = chapter_seconds(build.stdout + build.stderr)
    slowest = max(chapters.values())
    result = {
        "description": "Clean build of the book (jupyter-book build -W --keep-going, every chapter executed) into an "
                       "empty folder; chapter times are the execution seconds MyST-NB reports for each notebook.",
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
