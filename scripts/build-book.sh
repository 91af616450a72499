#!/usr/bin/env bash
# Build the book into _build/html (executing every chapter; warnings and execution errors are fatal).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# Executed chapters are cached by their own text only; their outputs (and the widget code embedded in them)
# also depend on attnlib, the chapters' helpers in chapters/booktools, the vendored web files and the committed
# benchmark results that chapters 8, 10 and 11 read, so a change there starts the build afresh.
inputs=$(find attnlib chapters/booktools _extra _ext benchmarks/results -type f \
         \( -name '*.py' -o -name '*.js' -o -name '*.css' -o -name '*.pt' -o -name '*.json' \) -print0 \
         | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
stamp=_build/.attnlib-inputs
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$inputs" ]; then
  echo "attnlib, booktools or the web assets changed since the last build: rebuilding from scratch"
  rm -rf _build
fi
.venv/bin/jupyter-book build --warningiserror --keep-going .
echo "$inputs" > "$stamp"
echo
echo "The book is at: $(pwd)/_build/html/index.html"
