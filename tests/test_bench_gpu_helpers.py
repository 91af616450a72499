"""The GPU benchmark script without a GPU: its pure helpers, its refusal to run without CUDA, its measuring loop on a
toy CPU shape (timings meaningless and never asserted), and the report functions that read what it writes."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from attnlib.torch import flash_triton
from booktools import gpu_flash

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_flash_gpu.py"


@pytest.fixture(scope="module")
def bench():
    if str(SCRIPT.parent) not in sys.path:  # as when run as a script: benchmarks/ first, for its _machine helper
        sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("bench_flash_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flop_formula_counts_the_two_matmuls(bench):
    # Forward = (n x d) @ (d x n) for the scores plus (n x n) @ (n x d) for the output, per (batch, head).
    batch, heads, n, d = 3, 5, 7, 11
    two_matmuls = batch * heads * (bench.matmul_flops(n, n, d) + bench.matmul_flops(n, d, n))
    assert bench.attention_flops(batch, heads, n, d, False, "forward") == two_matmuls == 4 * batch * heads * n * n * d
    assert bench.attention_flops(batch, heads, n, d, True, "forward") == two_matmuls / 2
    assert bench.attention_flops(batch, heads, n, d, False, "backward") == 2.5 * two_matmuls
    assert bench.attention_flops(batch, heads, n, d, True, "forward_backward") == 3.5 * two_matmuls / 2
    with pytest.raises(ValueError, match="pass_name"):
        bench.attention_flops(1, 1, 4, 4, False, "sideways")


def test_tflops_and_median(bench):
    assert bench.tflops(2e12, 1000.0) == pytest.approx(2.0)  # 2e12 operations in one second
    assert bench.median([5.0, 1.0, 3.0]) == 3.0
    with pytest.raises(ValueError, match="no timings"):
        bench.median([])


def test_shapes_hold_16k_tokens_and_hidden_2048(bench):
    shapes = bench.benchmark_shapes()
    assert {shape["n"] for shape in shapes} == {512, 1024, 2048, 4096, 8192, 16384}
    assert {shape["d"] for shape in shapes} == {64, 128}
    assert len(shapes) == 12
    for shape in shapes:
        assert shape["batch"] * shape["n"] == 16384
        assert shape["heads"] * shape["d"] == 2048
    assert {"batch": 1, "heads": 16, "n": 16384, "d": 128} in shapes  # the anchors' shape
    with pytest.raises(ValueError, match="3000"):
        bench.benchmark_shapes(lengths=(3000,))
    with pytest.raises(ValueError, match="96"):
        bench.benchmark_shapes(head_dims=(96,), hidden=2000)


def test_results_file_is_named_after_the_device(bench, tmp_path):
    assert bench.device_slug("NVIDIA H100 80GB HBM3") == "nvidia_h100_80gb_hbm3"
    assert bench.device_slug("  ") == "unknown_device"
    assert bench.results_path("NVIDIA H200", tmp_path) == tmp_path / "flash_gpu_nvidia_h200.json"


def test_without_cuda_the_script_refuses_plainly(bench):
    no_gpu = SimpleNamespace(cuda=SimpleNamespace(is_available=lambda: False))
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench.require_cuda(no_gpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU, so the script would really run")
def test_running_the_script_without_cuda_writes_nothing():
    before = sorted((ROOT / "benchmarks" / "results").glob("flash_gpu_*.json"))
    result = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "needs a CUDA GPU" in result.stderr and "no results file was written" in result.stderr
    assert sorted((ROOT / "benchmarks" / "results").glob("flash_gpu_*.json")) == before


@pytest.fixture(scope="module")
def toy_result(bench):
    """The script's own measuring loop on one tiny shape on the CPU (Triton interpreter), wrapped like main() does."""
    if not flash_triton.available():
        pytest.skip("triton is not importable, so the attnlib line cannot run")
    shape = {"batch": 1, "heads": 2, "n": 32, "d": 16}
    measured = bench.run_benchmark(
        torch, [shape], torch.float32, warmup=0, repeats=1, device="cpu", matmul_size=64, log=lambda text: None
    )
    return {"machine": {"device": "toy CPU run"}, "dtype": "float32", **measured}


def test_measuring_loop_records_every_line_pass_and_mask(bench, toy_result):
    rows = toy_result["rows"]
    lines = {row["line"] for row in rows}
    assert {"attnlib triton", "naive torch", "sdpa math"} <= lines
    assert len(rows) == len(lines) * 2 * 2  # every line, causal off/on, forward and forward+backward
    for row in rows:
        assert row["flops"] == bench.attention_flops(1, 2, 32, 16, row["causal"], row["pass"])
        if row["status"] == "ok":
            assert row["tflops"] == pytest.approx(bench.tflops(row["flops"], row["ms"]))
            assert row["fraction_of_ceiling"] == pytest.approx(row["tflops"] / toy_result["matmul_ceiling"]["tflops"])
        else:  # a backend that cannot run here is recorded as such, with no number
            assert row["status"].startswith("unavailable") and row["tflops"] is None
    assert all(row["status"] == "ok" for row in rows if not row["line"].startswith("sdpa "))
    assert all(check["max_abs_diff_vs_sdpa"] < 1e-5 for check in toy_result["checks"])
    assert len(toy_result["sdpa_default"]) == 2


def test_report_says_not_measured_when_there_are_no_results(tmp_path, capsys):
    assert gpu_flash.load(tmp_path) == []
    assert gpu_flash.plot(directory=tmp_path) is None
    assert "not measured yet" in capsys.readouterr().out


def test_report_loads_plots_and_summarises_a_results_file(toy_result, tmp_path):
    (tmp_path / "flash_gpu_toy.json").write_text(json.dumps(toy_result))
    (loaded,) = gpu_flash.load(tmp_path)
    assert loaded["rows"] == toy_result["rows"]
    figure = gpu_flash.plot(directory=tmp_path, pass_name="forward_backward")
    assert len(figure.axes) == 2  # one panel per (d, causal)
    summary = gpu_flash.goals(loaded, n=32, d=16)
    wanted = ("attnlib triton", "forward", False)
    (ours,) = [row for row in loaded["rows"] if (row["line"], row["pass"], row["causal"]) == wanted]
    assert summary["ours_forward_tflops"] == ours["tflops"]
    assert summary["forward_vs_best_sdpa"] == pytest.approx(ours["tflops"] / summary["best_sdpa_forward_tflops"])
    assert gpu_flash.goals(loaded) is None  # n=16384, d=128 was not measured in this file


def test_a_window_counts_the_band_and_grouped_heads_count_query_heads(bench):
    batch, heads, n, d = 2, 4, 64, 8
    causal = bench.attention_flops(batch, heads, n, d, True, "forward")
    assert bench.attention_flops(batch, heads, n, d, True, "forward", window=n) == causal
    assert bench.attention_flops(batch, heads, n, d, True, "forward", window=10 * n) == causal
    # A window of w keys: row i sees min(i + 1, w) keys; the convention counts the band's area n * w - w^2 / 2,
    # as it counts the triangle's n^2 / 2 for causal attention.
    band = 4 * batch * heads * d * (n * 16 - 16**2 / 2)
    assert bench.attention_flops(batch, heads, n, d, True, "forward", window=16) == band
    assert bench.attention_flops(batch, heads, n, d, True, "forward_backward", window=16) == 3.5 * band
    with pytest.raises(ValueError, match="needs causal=True"):
        bench.attention_flops(batch, heads, n, d, False, "forward", window=16)


def test_variant_shapes_keep_the_tokens_and_the_hidden_size(bench):
    shapes = bench.variant_shapes()
    assert len(shapes) == len(bench.VARIANT_LENGTHS) * len(bench.VARIANTS)
    for shape in shapes:
        assert shape["batch"] * shape["n"] == 16384 and shape["heads"] * shape["d"] == 2048
        assert shape["heads"] % shape["n_kv_heads"] == 0
    assert {(s["n_kv_heads"], s["window"]) for s in shapes} >= {(16, None), (4, None), (1, None), (16, 1024)}
    with pytest.raises(ValueError, match="3 key/value heads do not divide 16"):
        bench.variant_shapes(variants=(("odd", 3, None),))


def test_the_banded_mask_is_the_window_definition(bench):
    mask = bench.banded_mask(torch, 6, 2, "cpu")
    expected = torch.tensor([[i - 2 < j <= i for j in range(6)] for i in range(6)])
    assert torch.equal(mask, expected)
    assert torch.equal(bench.banded_mask(torch, 6, None, "cpu"), torch.ones(6, 6, dtype=torch.bool).tril())


def test_the_variant_loop_records_every_line_and_agrees_with_sdpa(bench):
    if not flash_triton.available():
        pytest.skip("triton is not importable, so the attnlib line cannot run")
    shape = {"batch": 1, "heads": 4, "n_kv_heads": 2, "n": 32, "d": 16, "window": 8, "variant": "toy"}
    rows = bench.run_variants(torch, [shape], torch.float32, warmup=0, repeats=1, device="cpu", log=lambda text: None)
    lines = {row["line"] for row in rows}
    assert {"attnlib triton", "sdpa", "sdpa math"} <= lines
    assert len(rows) == len(lines) * 2  # forward and forward+backward
    for row in rows:
        assert row["flops"] == bench.attention_flops(1, 4, 32, 16, True, row["pass"], window=8)
        assert row["max_abs_diff_vs_sdpa"] < 1e-5
        if row["status"] != "ok":
            assert row["status"].startswith("unavailable") and row["tflops"] is None
    assert all(row["status"] == "ok" for row in rows if row["line"] in ("attnlib triton", "sdpa", "sdpa math"))
