#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the compiled-kernel tests, then the GPU benchmarks (quick sizes):
# FlashAttention in float16 and bfloat16, and split-KV decoding. Meant for a machine whose python3 already has PyTorch with CUDA, Triton, pytest,
# hypothesis and NumPy, and which may have no internet: attnlib is used straight from this checkout.
#
#   bash scripts/gpu-check.sh            # PYTHON=/path/to/python3 to choose the interpreter
#
# Writes benchmarks/results/gpu_tests.log, benchmarks/results/flash_gpu_<device>[_bfloat16].json, which
# chapter 11 plots, and benchmarks/results/split_kv_gpu_<device>.json. Each step has its own time limit so that the whole run ends within about 10 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
results=benchmarks/results
mkdir -p "$results"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

"$python" -c 'import torch, triton
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| triton", triton.__version__)' || exit 1

status=0
timeout 240 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/test_flash_triton.py tests/test_flash_gqa_window.py \
  2>&1 | tee "$results/gpu_tests.log" || status=1
# These run their kernels on the GPU whenever CUDA is present (the decode kernels, the latent cache on CUDA).
timeout 120 "$python" -m pytest -q -p no:cacheprovider tests/test_split_kv.py tests/test_paged_cache.py \
  tests/test_latent.py 2>&1 | tee -a "$results/gpu_tests.log" || status=1
slug=$("$python" -c 'import sys; sys.path.insert(0, "benchmarks"); import torch, bench_flash_gpu as b
print(b.results_path(torch.cuda.get_device_name(0)).stem)') || exit 1
timeout 150 "$python" benchmarks/bench_flash_gpu.py --quick --dtype float16 --out "$results/$slug.json" || status=1
timeout 120 "$python" benchmarks/bench_flash_gpu.py --quick --dtype bfloat16 --out "$results/${slug}_bfloat16.json" \
  || status=1
timeout 90 "$python" benchmarks/bench_split_kv_gpu.py --quick || status=1
exit $status
