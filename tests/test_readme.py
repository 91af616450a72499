"""The README's table of measurements says what the results files and attnlib say."""

import json
import re
from pathlib import Path

from attnlib import traffic
from attnlib.torch import TransformerBlock

ROOT = Path(__file__).resolve().parents[1]


def measured_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## What we measured\n(.*?)^## ", text, re.S | re.M)
    assert match, "README.md has no '## What we measured' section"
    return match.group(1)


def results(name: str) -> dict:
    return json.loads((ROOT / "benchmarks" / "results" / name).read_text())


def test_every_number_in_the_table_comes_from_its_source():
    table = measured_section()
    counts = TransformerBlock(512, 8, 2048).parameter_counts(include_biases=False)
    assert counts["feed_forward"] * 3 == counts["total"] * 2  # exactly 2/3
    kv_cache = results("kv_cache.json")
    assert kv_cache["same_tokens"] and kv_cache["generated_tokens"] == 512
    assert all(run["same_tokens"] for run in kv_cache["by_threads"].values())
    paged = results("paged_cache.json")
    paged_memory, paged_decode = paged["memory"], paged["decode"]
    assert paged_decode["same_tokens"] and paged_decode["generated_tokens"] == 512
    flash_report = results("flash_cpu.json")
    flash = flash_report["goals"]
    largest = max(flash_report["results"], key=lambda row: row["n"])
    difference = largest["max_abs_difference_vs_naive"]
    memory = [flash["memory_ratio_flash_over_naive"][n]["tracemalloc_peak_bytes"] for n in ("4096", "8192", "16384")]
    hbm = traffic.gpt2_medium_comparison()
    hbm_without_dropout = traffic.gpt2_medium_comparison(dropout=False)
    encoder = json.loads((ROOT / "attnlib/pretrained/checkpoints/tiny-encoder.json").read_text())["measurements"]
    minilm = results("minilm.json")
    assert minilm["goals"]["speed_goal_met"] and minilm["goals"]["load_goal_met"]
    ring = results("ring_attention.json")
    ring_memory = {row["world_size"]: row["forward_ratio_to_one_process"] for row in ring["memory"]}
    ring_balance = {row["world_size"]: row for row in ring["causal_work_balance"]}[4]
    ring_over_goal = max(row["forward_sequence_peak_over_goal"] for row in ring["memory"])
    expected = [
        "exactly 2/3 of the weight matrices at d_model = 512, d_ff = 2048",
        f"{kv_cache['by_threads']['1']['speedup']:.1f}× faster on 1 thread and "
        f"{kv_cache['by_threads']['2']['speedup']:.1f}× on 2 for {kv_cache['generated_tokens']} tokens",
        f"{paged_memory['utilisation']['paged']:.1%} of the reserved KV memory holds keys and values",
        f"{paged_memory['requests']} simulated requests (preallocating max_len: "
        f"{paged_memory['utilisation']['contiguous_max_length']:.1%}; the vLLM paper: about 96% vs 20–38%)",
        f"{paged_decode['ratio_paged_over_contiguous']:.2f}× the contiguous cache's time for "
        f"{paged_decode['generated_tokens']} tokens of `tiny-lm`, same tokens",
        f"at most {difference['flash_numpy']:.1e} from naive attention at N = {largest['n']} in float32",
        f"(PyTorch's own SDPA: {difference['torch_sdpa']:.1e})",
        "peak extra memory {:.1%}, {:.1%}, {:.2%} of naive".format(*memory),
        f"{flash['time_ratio_flash_over_naive_at_4096']:.2f}× the naive NumPy time at N = 4096",
        f"{hbm['ratio']:.1f}× fewer bytes for GPT-2 medium on an A100 with a dropout pass",
        f"(the paper: {hbm['paper_ratio']:.1f}×); {hbm_without_dropout['ratio']:.1f}× without it",
        f"{encoder['coreference']['accuracy']:.0%} of {encoder['held_out_sentences']['n']} held-out sentences",
        "hidden states within {:.1e} of transformers'".format(
            minilm["max_abs_difference_of_real_tokens"]["transformers_eager"]),
        f"on {minilm['sentences']} sentences in float32; encoding them takes "
        f"{minilm['ratio_attnlib_over_transformers_eager']:.2f}× its time, loading {minilm['load_seconds']:.2f} s",
        f"{ring_memory[2]:.2f}× and {ring_memory[4]:.2f}× one process's attention memory at P = 2 and 4",
        f"within {ring_over_goal - 1:.1%} of one process / P + the key/value shards in flight",
        f"at P = 4: {ring_balance['zigzag']['max_over_min']:.2f} zigzag, "
        f"{ring_balance['contiguous']['max_over_min']:.2f} contiguous",
    ]
    missing = [phrase for phrase in expected if phrase not in table]
    assert missing == []


def test_the_gpu_row_matches_whether_gpu_results_exist():
    has_gpu_results = any((ROOT / "benchmarks" / "results").glob("flash_gpu_*.json"))
    assert ("not measured yet" in measured_section()) == (not has_gpu_results)


def test_the_python_example_runs_and_says_what_it_claims():
    text = (ROOT / "README.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert tuple(namespace["y"].shape) == (2, 10, 64)
    weights = namespace["weights"]
    assert tuple(weights.shape) == (2, 8, 10, 10) and float(weights[1, :, :, 7:].abs().max()) == 0.0
    assert namespace["twin"].config() == namespace["ours"].config()
