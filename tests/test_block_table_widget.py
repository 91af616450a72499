"""BlockTableView: its steps are a replay of a real serving run that agrees with the trace at every step, the state
is checked at the door (naming the argument), and bad input is refused."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib.widgets import BlockTableView
from attnlib.widgets.block_table_view import replay

# (prompt length, new tokens, arrival step): more than the pool holds at once, so requests wait and reuse blocks.
WORKLOAD = [(5, 8, 0), (9, 4, 0), (3, 10, 1), (12, 6, 2), (7, 5, 3), (2, 9, 9), (6, 7, 10)]
N_BLOCKS, BLOCK_SIZE = 12, 4


@pytest.fixture(scope="module")
def runs():
    torch.manual_seed(0)
    torch_model = at.TransformerLM(30, 16, 4, 32, 2, 64, dtype=torch.float64)
    numpy_model = anp.TransformerLM.from_twin(torch_model)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 30, n) for n, _, _ in WORKLOAD]
    numpy_trace = anp.serve(numpy_model, [anp.Request(p, n, a) for p, (_, n, a) in zip(prompts, WORKLOAD, strict=True)],
                            n_blocks=N_BLOCKS, block_size=BLOCK_SIZE)
    torch_trace = at.serve(torch_model, [at.Request(torch.from_numpy(p), n, a)
                                         for p, (_, n, a) in zip(prompts, WORKLOAD, strict=True)],
                           n_blocks=N_BLOCKS, block_size=BLOCK_SIZE)
    return numpy_trace, torch_trace


@pytest.fixture(scope="module")
def view(runs):
    return BlockTableView.from_trace(runs[0], n_blocks=N_BLOCKS, block_size=BLOCK_SIZE, title="t")


def test_every_step_equals_the_trace(runs, view):
    trace = runs[0]
    assert len(view.steps) == trace.n_steps
    for step, entry in enumerate(view.steps):
        assert entry["running"] == trace.running[step]
        assert entry["stored"] == trace.stored_positions[step]
        assert entry["reserved"] == trace.reserved_positions[step]
        assert entry["utilisation"] == pytest.approx(trace.utilisation[step], abs=0)
        assert sum(owner >= 0 for owner in entry["owner"]) == trace.blocks_in_use[step]
        assert entry["finished"] == [r for r in entry["running"] if trace.finished[r] == step]
        for request, table, length in zip(entry["running"], entry["tables"], entry["lengths"], strict=True):
            # Positions stored: the prompt, then one per token generated so far (the trace's tokens say how many).
            n_new = trace.finished[request] - trace.joined[request] + 1
            prompt = len(trace.tokens[request]) - n_new
            assert length == prompt + step - trace.joined[request]
            assert len(table) == -(-length // BLOCK_SIZE)  # a new block only when the last one is full
    # No physical block belongs to two sequences at once, and the run really reused freed blocks.
    for entry in view.steps:
        held = [block for request, table in zip(entry["running"], entry["tables"], strict=True)
                if request not in entry["finished"] for block in table]
        assert len(held) == len(set(held))
    assert any(entry["reused"] for entry in view.steps) and any(entry["freed"] for entry in view.steps)
    assert all(owner == -1 for owner in view.steps[-1]["owner"])  # every block back at the end


def test_the_torch_run_gives_the_same_figure(runs, view):
    twin = BlockTableView.from_trace(runs[1], n_blocks=N_BLOCKS, block_size=BLOCK_SIZE)
    assert twin.steps == view.steps


def test_a_trace_replayed_with_another_pool_is_refused(runs):
    with pytest.raises(ValueError, match=r"trace step 0 does not match a paged cache of 12 blocks of 8"):
        replay(runs[0], n_blocks=N_BLOCKS, block_size=8)
    with pytest.raises(TypeError, match=r"trace must be a ServingTrace"):
        replay({"tokens": []}, n_blocks=4, block_size=4)
    with pytest.raises(ValueError, match=r"n_blocks = 200; the figure draws a pool of at most 96"):
        replay(runs[0], n_blocks=200, block_size=BLOCK_SIZE)


def _broken(view, step, key, value):
    steps = copy.deepcopy(view.steps)
    steps[step][key] = value
    return steps


BAD_STEPS = [
    ("owner too short", lambda v: _broken(v, 0, "owner", [0, 0]), ValueError,
     r"steps\[0\]\['owner'\] must hold one entry per physical block \(12\), got 2"),
    ("table too short", lambda v: _broken(v, 0, "tables", [[0], [2, 3, 4]]), ValueError,
     r"steps\[0\]\['tables'\]\[0\] has 1 blocks for 5 positions of 4 per block: it needs 2"),
    ("block out of the pool", lambda v: _broken(v, 0, "tables", [[0, 12], [2, 3, 4]]), ValueError,
     r"steps\[0\]\['tables'\]\[0\]\[1\] must be in \[0, 12\), got 12"),
    ("a block another sequence owns", lambda v: _broken(v, 0, "tables", [[0, 2], [2, 3, 4]]), ValueError,
     r"request 0's blocks \[0, 2\] are not all owned by it"),
    ("utilisation made up", lambda v: _broken(v, 0, "utilisation", 0.99), ValueError,
     r"steps\[0\]\['utilisation'\] = 0.99 but 14 stored positions in 5 blocks of 4 make 0.7"),
    ("reused but not taken", lambda v: _broken(v, 0, "reused", [9]), ValueError,
     r"steps\[0\]\['reused'\] \[9\] must be blocks taken in that step"),
    ("a float request", lambda v: _broken(v, 0, "running", [0.0, 1]), TypeError,
     r"steps\[0\]\['running'\]\[0\] must be an integer, got 0.0"),
    ("a missing key", lambda v: [{k: s[k] for k in s if k != "taken"} for s in v.steps], ValueError,
     r"steps\[0\] must be a dict with the keys"),
    ("no steps", lambda v: [], ValueError, r"steps must be a non-empty list"),
]


@pytest.mark.parametrize("description, make, exception, message", BAD_STEPS, ids=[b[0] for b in BAD_STEPS])
def test_bad_steps_are_refused_naming_the_entry(view, description, make, exception, message):
    with pytest.raises(exception, match=message):
        BlockTableView(make(view), n_blocks=N_BLOCKS, block_size=BLOCK_SIZE, n_requests=len(WORKLOAD))


def test_plain_data_round_trips_and_the_step_is_checked(view):
    again = BlockTableView(view.steps, n_blocks=N_BLOCKS, block_size=BLOCK_SIZE, n_requests=len(WORKLOAD), step=3)
    assert again.steps == view.steps and again.step == 3
    with pytest.raises(ValueError, match=r"step must be in \[0, \d+\)"):
        again.step = len(view.steps)
    with pytest.raises(ValueError, match=r"n_requests = 30; the figure colours at most 24"):
        BlockTableView(view.steps, n_blocks=N_BLOCKS, block_size=BLOCK_SIZE, n_requests=30)
    with pytest.raises(TypeError, match=r"n_blocks must be a positive integer"):
        BlockTableView(view.steps, n_blocks="12", block_size=BLOCK_SIZE, n_requests=len(WORKLOAD))
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['steps_shown'\]"):
        BlockTableView(view.steps, n_blocks=N_BLOCKS, block_size=BLOCK_SIZE, n_requests=7, steps_shown=2)
