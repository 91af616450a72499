"""all-MiniLM-L6-v2 run by attnlib against transformers' BertModel on the same CPU threads, and attnlib's load time.

    .venv/bin/python benchmarks/bench_minilm.py            # writes benchmarks/results/minilm.json
    .venv/bin/python benchmarks/bench_minilm.py --quick    # 32 sentences, 2 repeats, prints only

Encoding: 256 sentences (made from a fixed vocabulary of short English clauses, 6 to 26 word pieces each) in batches
of 32, padded to the longest of each batch; attnlib gets ``key_mask``, BertModel the same mask as
``attention_mask`` (eager attention, the implementation the equality tests compare against, and SDPA). Both run
under ``torch.no_grad()`` in float32 from the same files, and must give the same hidden states (checked). Time =
median wall-clock seconds over the repeats, after one warm-up, the methods taking turns. Load time = median of
``attnlib.pretrained.load("all-MiniLM-L6-v2")`` in this process (attnlib and torch already imported). Threads:
``ATTNLIB_BENCH_THREADS`` (default 1), as in the other CPU benchmarks.
"""

from __future__ import annotations

import os

THREADS = os.environ.setdefault("ATTNLIB_BENCH_THREADS", "1")
for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = THREADS

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _machine import host_info, take_turns  # noqa: E402

import attnlib  # noqa: E402
from attnlib.pretrained import load, minilm  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "minilm.json"
SUBJECTS = ["A man", "The old teacher", "My sister", "A small dog", "The committee", "Two children", "The pilot",
            "Our neighbour"]
VERBS = ["is eating", "painted", "forgot", "is reading", "carefully repaired", "bought", "never understood",
         "found"]
OBJECTS = ["a piece of bread.", "the red fence behind the school.", "the letter.", "a book about the history of "
           "ships and the sea.", "the broken bicycle.", "three tickets to the concert on Friday.", "the question.",
           "a wallet in the park."]


def sentences(count: int) -> list[str]:
    triples = itertools.islice(itertools.product(SUBJECTS, VERBS, OBJECTS), 0, None, 2)  # 256 of the 512
    return [" ".join(parts) for parts in itertools.islice(triples, count)]


def median_seconds(function, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 sentences, 2 repeats, print only")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(int(THREADS))
    import transformers  # a benchmark-only dependency, as in the tests

    count, batch = (32, 32) if args.quick else (256, 32)
    repeats = args.repeats or (2 if args.quick else 5)
    load_seconds, load_times = median_seconds(lambda: load(minilm.NAME), repeats)
    model, tokenizer = load(minilm.NAME)
    references = {
        implementation: transformers.BertModel.from_pretrained(
            str(minilm.model_directory()), attn_implementation=implementation, add_pooling_layer=False).eval()
        for implementation in ("eager", "sdpa")
    }
    text = sentences(count)
    batches = [tokenizer(text[start:start + batch]) for start in range(0, count, batch)]

    def run_attnlib():
        return [model(ids, key_mask=key_mask) for ids, key_mask in batches]

    def run_bert(bert):
        return lambda: [bert(input_ids=ids, attention_mask=key_mask.long()).last_hidden_state
                        for ids, key_mask in batches]

    methods = {"attnlib": run_attnlib} | {f"transformers_{name}": run_bert(bert) for name, bert in references.items()}
    with torch.no_grad():
        outputs = {name: function() for name, function in methods.items()}  # warm-up, and the equality check
        differences = {
            name: max(float(((ours - theirs) * key_mask[..., None]).abs().max())
                      for ours, theirs, (_, key_mask) in zip(outputs["attnlib"], output, batches, strict=True))
            for name, output in outputs.items() if name != "attnlib"
        }
        times = take_turns(methods, repeats)
    seconds = {name: statistics.median(values) for name, values in times.items()}
    report = {
        "description": f"Encode {count} sentences in batches of {batch} (padded per batch) with all-MiniLM-L6-v2, "
                       "float32, CPU, no gradients; time = median wall-clock seconds of the whole set; load = "
                       "median seconds of attnlib.pretrained.load('all-MiniLM-L6-v2') with torch already imported.",
        "sentences": count,
        "batch_size": batch,
        "tokens": int(sum(int(key_mask.sum()) for _, key_mask in batches)),
        "repeats": repeats,
        "seconds": {name: round(value, 4) for name, value in seconds.items()},
        "all_seconds": {name: [round(value, 4) for value in values] for name, values in times.items()},
        "ratio_attnlib_over_transformers_eager": round(seconds["attnlib"] / seconds["transformers_eager"], 3),
        "ratio_attnlib_over_transformers_sdpa": round(seconds["attnlib"] / seconds["transformers_sdpa"], 3),
        "max_abs_difference_of_real_tokens": {name: float(f"{value:.3g}") for name, value in differences.items()},
        "load_seconds": round(load_seconds, 4),
        "all_load_seconds": [round(value, 4) for value in load_times],
        "goals": {
            "speed_goal_met": seconds["attnlib"] <= 1.5 * seconds["transformers_eager"],
            "load_goal_met": load_seconds <= 3.0,
        },
        "machine": host_info(torch=torch.__version__, transformers=transformers.__version__,
                             attnlib=attnlib.__version__, torch_threads=torch.get_num_threads()),
    }
    print(json.dumps({key: report[key] for key in ("seconds", "ratio_attnlib_over_transformers_eager",
                                                    "ratio_attnlib_over_transformers_sdpa", "load_seconds",
                                                    "max_abs_difference_of_real_tokens", "goals")}, indent=1))
    if not args.quick:
        RESULTS.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
