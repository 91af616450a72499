#!/usr/bin/env bash
# Run everything that proves the project works: lint, a full book build, then the test suite
# (unit, property, equivalence, bad-input, Triton-interpreter and browser tests). Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
bash scripts/build-book.sh
.venv/bin/python -m pytest "$@"
