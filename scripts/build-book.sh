#!/usr/bin/env bash
# Build the book into _build/html (executing every chapter; warnings and execution errors are fatal).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/jupyter-book build --warningiserror --keep-going .
echo
echo "The book is at: $(pwd)/_build/html/index.html"
