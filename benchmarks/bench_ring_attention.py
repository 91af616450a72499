"""Ring attention on rings of 1, 2 and 4 gloo processes on this machine: memory per rank and causal work balance.

    .venv/bin/python benchmarks/bench_ring_attention.py           # writes benchmarks/results/ring_attention.json
    .venv/bin/python benchmarks/bench_ring_attention.py --quick   # a smaller sequence, prints only

Memory. Every rank counts the bytes of tensor storage it holds while it runs ``ring_attention`` (causal, zigzag,
float32) forward and then backward on its shard. Counted: its own q, k, v shard, and every tensor storage that
PyTorch allocates during the call (a ``TorchDispatchMode`` sees each operation's outputs; a storage is counted
from its allocation until it is freed, however many views share it): the output and lse, the buffers that receive
the next key/value shard while the current one is used, the tiles of the FlashAttention core, the gradients. Not
counted: the memory of the Python interpreter, of torch itself and of gloo's own transport buffers. The peak of
that count during the forward pass (and during the backward pass) is the rank's attention memory; P = 1 is the
same code on one process holding the whole sequence (FlashAttention on it, no communication). A second count leaves
out what the FlashAttention core allocates for one tile (its scores, probabilities and the block's m, l, acc, all
bounded by the block sizes, whatever n and P are; on a GPU the kernel keeps them on chip): its peak is the memory
that scales with the sequence, which the goal compares with one process's divided by P plus the key/value shards in
flight: besides its own k and v, which autograd keeps for the backward pass, a rank holds the visiting shard it
computes with and the next one arriving (one of each for P = 2, whose last step receives nothing).

Work. Every rank also counts the (query, key) score entries it actually computes: each call of the FlashAttention
core on a chunk pair adds rows x columns (a pair on the diagonal only its visible triangle). The balance is the
largest rank's count over the smallest rank's.
"""

from __future__ import annotations

import os

for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = "1"

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
import weakref  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _machine import host_info  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import attnlib  # noqa: E402
from attnlib.torch import distributed  # noqa: E402

# The module, not the function of the same name that attnlib.torch exports.
flash_module = importlib.import_module("attnlib.torch.flash_attention")
RESULTS = Path(__file__).resolve().parent / "results" / "ring_attention.json"
WORLD_SIZES = (1, 2, 4)


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage allocated inside this mode and still alive: ``now``, and the ``peak`` of it.

    A storage counts from the operation that allocates it until it is freed, however many views share it. An
    operation's result that shares storage with one of its inputs (a view, an in-place update) allocates nothing.
    While ``in_tile`` is set, new storages are also marked as the FlashAttention core's tile work (scores,
    probabilities, a block's m, l, acc): ``now_sequence``/``peak_sequence`` count only the others.
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[int, bool]] = {}
        self.now = self.peak = self.now_sequence = self.peak_sequence = 0
        self.in_tile = False

    def _free(self, key: int) -> None:
        size, tile = self.live.pop(key, (0, True))
        self.now -= size
        if not tile:
            self.now_sequence -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        inputs = {x.untyped_storage().data_ptr() for x in tree_flatten((args, kwargs))[0]
                  if isinstance(x, torch.Tensor)}
        for tensor in tree_flatten(result)[0]:
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key in self.live or key in inputs or storage.nbytes() == 0:  # nothing new was allocated
                continue
            self.live[key] = (storage.nbytes(), self.in_tile)
            self.now += storage.nbytes()
            self.peak = max(self.peak, self.now)
            if not self.in_tile:
                self.now_sequence += storage.nbytes()
                self.peak_sequence = max(self.peak_sequence, self.now_sequence)
            weakref.finalize(storage, self._free, key)  # storages keep their Python object: fires when freed
        return result


def _measure_rank(rank, world_size, n, heads, d):
    """One rank: its shard of a random sequence, ring attention forward and backward, what it held and computed."""
    generator = torch.Generator().manual_seed(0)
    whole = [torch.randn(1, heads, n, d, generator=generator) for _ in range(4)]  # (B, H, n, d) float32
    q, k, v, grad = (distributed.shard_sequence(x, rank, world_size, "zigzag").contiguous() for x in whole)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    input_bytes = sum(x.untyped_storage().nbytes() for x in (q, k, v))
    shard_bytes = k.untyped_storage().nbytes()

    entries = [0]
    core = distributed.forward_tiled

    def counting_core(q_chunk, k_chunk, v_chunk, causal, *args):
        rows, cols, batch = q_chunk.shape[-2], k_chunk.shape[-2], q_chunk.shape[:-2].numel()
        entries[0] += batch * (rows * (rows + 1) // 2 if causal else rows * cols)
        return core(q_chunk, k_chunk, v_chunk, causal, *args)

    attnlib.set_finite_checks(False)  # the NaN scans would allocate too: they are not part of attention
    with LiveTensorBytes():  # warm-up, untimed and uncounted: lazy imports, gloo's first connections
        distributed.ring_attention(q, k, v, causal=True, layout="zigzag").backward(grad)
    q.grad = k.grad = v.grad = None
    distributed.forward_tiled = counting_core
    tracker = LiveTensorBytes()
    tile_step = flash_module.flash_step

    def marked_tile_step(*args):
        tracker.in_tile = True  # what the FlashAttention core allocates for one tile is tile work
        try:
            return tile_step(*args)
        finally:
            tracker.in_tile = False

    flash_module.flash_step = marked_tile_step
    with tracker:
        start = time.perf_counter()
        output = distributed.ring_attention(q, k, v, causal=True, layout="zigzag")
        forward_seconds = time.perf_counter() - start
        forward_peak, forward_sequence_peak = tracker.peak, tracker.peak_sequence
        tracker.peak = tracker.now  # the backward pass's peak, on top of what the forward pass left alive
        start = time.perf_counter()
        output.backward(grad)
        backward_seconds = time.perf_counter() - start
    return {"input_bytes": input_bytes, "shard_bytes": shard_bytes, "forward_peak_bytes": input_bytes + forward_peak,
            "forward_sequence_peak_bytes": input_bytes + forward_sequence_peak,
            "backward_peak_bytes": input_bytes + tracker.peak, "score_entries": entries[0],
            "forward_seconds": forward_seconds, "backward_seconds": backward_seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 1024, print only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n, heads, d = (1024, 2, 64) if args.quick else (4096, 4, 128)
    machine = host_info(torch=torch.__version__, attnlib=attnlib.__version__)  # the load before the rings start

    runs = {}
    for world_size in WORLD_SIZES:
        per_rank = distributed.spawn_ring(world_size, _measure_rank, n, heads, d, timeout=600)
        runs[world_size] = per_rank
        print(f"P = {world_size}: forward peak per rank {[r['forward_peak_bytes'] / 2**20 for r in per_rank]} MiB, "
              f"without tiles {[r['forward_sequence_peak_bytes'] / 2**20 for r in per_rank]} MiB", flush=True)

    one = runs[1][0]
    memory = []
    for world_size, per_rank in runs.items():
        forward_peak = max(r["forward_peak_bytes"] for r in per_rank)
        sequence_peak = max(r["forward_sequence_peak_bytes"] for r in per_rank)
        backward_peak = max(r["backward_peak_bytes"] for r in per_rank)
        # Beyond its own k, v (kept for the backward pass), a rank holds the visiting k, v shard it computes with and
        # the next one arriving: min(2, P - 1) shards of k and of v.
        in_flight = 2 * min(2, world_size - 1) * per_rank[0]["shard_bytes"]
        goal = one["forward_sequence_peak_bytes"] / world_size + in_flight
        memory.append({
            "world_size": world_size,
            "forward_peak_bytes_per_rank": [r["forward_peak_bytes"] for r in per_rank],
            "backward_peak_bytes_per_rank": [r["backward_peak_bytes"] for r in per_rank],
            "forward_ratio_to_one_process": round(forward_peak / one["forward_peak_bytes"], 4),
            "backward_ratio_to_one_process": round(backward_peak / one["backward_peak_bytes"], 4),
            "forward_sequence_peak_bytes_per_rank": [r["forward_sequence_peak_bytes"] for r in per_rank],
            "forward_sequence_ratio_to_one_process": round(sequence_peak / one["forward_sequence_peak_bytes"], 4),
            "goal_bytes_one_process_over_p_plus_kv_shards_in_flight": int(goal),
            "forward_sequence_peak_over_goal": round(sequence_peak / goal, 4),
            "forward_seconds_per_rank": [round(r["forward_seconds"], 3) for r in per_rank],
            "backward_seconds_per_rank": [round(r["backward_seconds"], 3) for r in per_rank],
        })

    balance = []
    for world_size in (2, 4, 8):
        row = {"world_size": world_size}
        for layout in distributed.LAYOUTS:
            work = distributed.work_per_rank(world_size, layout, chunk=n // (world_size * 2))
            row[layout] = {"score_entries_per_rank": work, "max_over_min": round(max(work) / min(work), 4)}
        balance.append(row)
    measured = {world_size: [r["score_entries"] for r in per_rank] for world_size, per_rank in runs.items()}
    for row in balance:  # the schedule's count agrees with what the ranks counted, where a ring ran
        if row["world_size"] in measured:
            expected = [entries * heads for entries in row["zigzag"]["score_entries_per_rank"]]
            if measured[row["world_size"]] != expected:
                raise RuntimeError(f"ranks counted {measured[row['world_size']]} score entries, schedule {expected}")
            row["zigzag"]["counted_by_the_ranks"] = measured[row["world_size"]]

    result = {
        "description": __doc__.split("\n\n", 2)[2].strip(),
        "sequence": {"n": n, "heads": heads, "d": d, "dtype": "float32", "causal": True, "layout": "zigzag",
                     "backend": "gloo on 127.0.0.1, one process per rank, one thread each"},
        "memory": memory,
        "causal_work_balance": balance,
        "goals": {
            "memory_per_rank_about_one_over_p_plus_one_shard_in_flight": all(
                row["forward_sequence_peak_over_goal"] <= 1.1 for row in memory),
            "zigzag_max_over_min_at_most_1.1": all(row["zigzag"]["max_over_min"] <= 1.1 for row in balance),
        },
        "machine": machine,
    }
    print(json.dumps({key: result[key] for key in ("memory", "goals")}, indent=1))
    if not args.quick:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
