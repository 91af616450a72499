"""Continuous batching over the paged cache gives every sequence exactly the tokens it gets when generated alone."""

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at

# (prompt length, new tokens, arrival step): sequences join while others run, one asks for nothing new.
WORKLOAD = [(5, 8, 0), (9, 4, 0), (3, 10, 1), (12, 6, 2), (4, 0, 3), (7, 5, 3), (2, 9, 9)]


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    torch_model = at.TransformerLM(30, 16, 4, 32, 2, 40, dtype=torch.float64)
    with torch.no_grad():  # larger weights than the initialisation, so the greedy tokens vary
        for parameter in torch_model.parameters():
            parameter.normal_(0, 0.3)
    return anp.TransformerLM.from_twin(torch_model), torch_model


def requests(namespace):
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 30, n) for n, _, _ in WORKLOAD]
    if namespace is at:
        prompts = [torch.from_numpy(prompt) for prompt in prompts]
    return [namespace.Request(prompt, n_new, arrival) for prompt, (_, n_new, arrival) in zip(prompts, WORKLOAD,
                                                                                             strict=True)]


@pytest.mark.parametrize("namespace", [anp, at], ids=["numpy", "torch"])
def test_every_sequence_gets_the_tokens_it_gets_alone_with_the_contiguous_cache(models, namespace):
    model = models[0] if namespace is anp else models[1]
    work = requests(namespace)
    trace = namespace.serve(model, work, n_blocks=12, block_size=4)
    for request, tokens in zip(work, trace.tokens, strict=True):
        alone = model.generate(request.prompt_ids[None], request.n_new)[0]  # the contiguous KVCache
        assert tokens.shape == alone.shape
        assert (tokens == alone).all()
    # The schedule really was continuous: sequences joined while others were running, and left as they finished.
    assert max(len(running) for running in trace.running) >= 3
    for request, (joined, finished) in enumerate(zip(trace.joined, trace.finished, strict=True)):
        assert joined >= work[request].arrival
        assert finished - joined == max(work[request].n_new - 1, 0)  # one token per step, the first with the prompt
        assert all(request in trace.running[step] for step in range(joined, finished + 1) if work[request].n_new)
    assert max(trace.blocks_in_use) <= 12 and trace.blocks_in_use[-1] == 0  # all blocks back at the end
    # Paged: at most block_size - 1 empty positions per sequence held; reserving whole lengths sets aside more.
    for step, blocks in enumerate(trace.blocks_in_use):
        held = blocks * 4 - trace.stored_positions[step]
        assert 0 <= held <= 3 * len(trace.running[step])
        assert trace.stored_positions[step] <= trace.reserved_positions[step]
        assert trace.utilisation[step] == (1.0 if blocks == 0 else trace.stored_positions[step] / (blocks * 4))
    assert sum(trace.reserved_positions) > sum(blocks * 4 for blocks in trace.blocks_in_use)


def test_a_request_waits_for_blocks_and_takes_the_ones_freed(models):
    model = models[0]
    work = requests(anp)
    trace = anp.serve(model, work, n_blocks=7, block_size=4)
    waited = [r for r, request in enumerate(work) if trace.joined[r] > request.arrival]
    assert waited, "with 7 blocks some request must wait"
    for request in waited:  # it joined right after an earlier sequence left and gave its blocks back
        assert trace.joined[request] - 1 in trace.finished
    for request, tokens in zip(work, trace.tokens, strict=True):
        assert (tokens == model.generate(request.prompt_ids[None], request.n_new)[0]).all()


def test_twins_serve_the_same_tokens_on_the_same_schedule(models):
    numpy_trace = anp.serve(models[0], requests(anp), n_blocks=10, block_size=4)
    torch_trace = at.serve(models[1], requests(at), n_blocks=10, block_size=4)
    assert numpy_trace.joined == torch_trace.joined and numpy_trace.running == torch_trace.running
    assert numpy_trace.blocks_in_use == torch_trace.blocks_in_use
    for ours, theirs in zip(numpy_trace.tokens, torch_trace.tokens, strict=True):
        np.testing.assert_array_equal(ours, theirs.numpy())


def test_bad_requests_are_refused_by_name(models):
    model = models[0]
    good = anp.Request(np.array([1, 2, 3]), 2)
    with pytest.raises(ValueError, match=r"requests\[1\] needs 3 blocks of 4 positions .* the cache has 2"):
        anp.serve(model, [good, anp.Request(np.arange(9), 2)], n_blocks=2, block_size=4)
    with pytest.raises(TypeError, match=r"requests\[0\] must be a Request"):
        anp.serve(model, [(np.array([1, 2]), 3)], n_blocks=4)
    with pytest.raises(TypeError, match="requests must be a list of Request"):
        anp.serve(model, good, n_blocks=4)
    with pytest.raises(ValueError, match=r"requests\[0\].prompt_ids must be one sequence \(1-D\)"):
        anp.serve(model, [anp.Request(np.array([[1, 2]]), 2)], n_blocks=4)
    with pytest.raises(ValueError, match="exceeds max_len=40"):
        anp.serve(model, [anp.Request(np.arange(30) % 30, 20)], n_blocks=40)
    with pytest.raises(ValueError, match="prompt_ids must lie in"):
        anp.serve(model, [anp.Request(np.array([1, 99]), 2)], n_blocks=4)
    with pytest.raises(ValueError, match=r"requests\[0\].arrival must be a non-negative integer"):
        anp.serve(model, [anp.Request(np.array([1, 2]), 2, arrival=-1)], n_blocks=4)
    with pytest.raises(TypeError, match="attnlib"):
        anp.serve(model, [anp.Request(torch.tensor([1, 2]), 2)], n_blocks=4)
    with pytest.raises(ValueError, match="n_blocks must be a positive integer"):
        anp.serve(model, [good], n_blocks=0)


@pytest.mark.parametrize("positional,window", [("rope", None), ("alibi", 6), ("learned", 5)])
def test_modern_models_serve_the_tokens_they_generate_alone(positional, window):
    # Grouped key/value heads (the paged pools hold n_kv_heads = 2), RoPE turned at each token's own position,
    # ALiBi, and a sliding window that the rolling contiguous cache of generate serves by forgetting.
    model = anp.TransformerLM(30, 16, 4, 32, 2, 40, n_kv_heads=2, positional=positional, window=window, seed=3)
    work = requests(anp)
    trace = anp.serve(model, work, n_blocks=12, block_size=4)
    for request, tokens in zip(work, trace.tokens, strict=True):
        assert (tokens == model.generate(request.prompt_ids[None], request.n_new)[0]).all()
    assert len({tuple(tokens[-3:]) for tokens in trace.tokens if len(tokens) > 3}) > 1  # not one repeated token
