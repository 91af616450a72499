"""attnlib.numpy computes the same numbers as attnlib.torch on the same weights, and has the same contract."""

import inspect

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at

TOL = dict(rtol=1e-10, atol=1e-12)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1)


def _randomise(module):
    """Fresh modules have zero biases and unit gains; randomise so every parameter matters."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module


def _x(*shape):
    return torch.randn(*shape, dtype=torch.float64)


# The step-by-step trace of the tiled loop is a teaching aid of the readable reference only.
NUMPY_ONLY = {"FlashTrace", "FlashStep", "flash_attention_steps"}
# Ring attention runs on torch.distributed process groups, which only the torch namespace has.
TORCH_ONLY = {"ring_attention", "shard_sequence", "unshard_sequence", "run_ring_demo"}
# Arguments that follow each namespace's own convention (documented in attnlib/numpy/_module.py and
# attnlib/torch/_module.py): NumPy seeds with `seed=`, torch draws from torch.manual_seed and takes `device=`;
# torch.flash_attention chooses a `backend`; `dim` is torch's name for NumPy's `axis`.
OWN_CONVENTION = {"numpy": {"seed", "axis"}, "torch": {"device", "backend", "dim"}}
CLASSES = ["MultiHeadAttention", "FeedForward", "LayerNorm", "TransformerBlock", "TransformerLM", "TransformerEncoder"]


def test_same_public_names():
    assert set(anp.__all__) - NUMPY_ONLY == set(at.__all__) - TORCH_ONLY
    for name in set(at.__all__) - TORCH_ONLY:
        assert getattr(anp, name).__name__ == getattr(at, name).__name__ == name


def _parameters(function, namespace):
    signature = inspect.signature(function)
    return [(p.name, p.kind, p.default if p.name != "dtype" else "namespace default")
            for p in signature.parameters.values()
            if p.name not in OWN_CONVENTION[namespace] and p.name != "self"]


def _public_callables():
    for name in [name for name in at.__all__ if name not in TORCH_ONLY]:
        numpy_object, torch_object = getattr(anp, name), getattr(at, name)
        if inspect.isclass(numpy_object):
            yield name, numpy_object.__init__, torch_object.__init__
            call = "forward" if issubclass(torch_object, torch.nn.Module) else "__call__"
            if hasattr(torch_object, call) and call in vars(torch_object):
                yield f"{name} call", numpy_object.__call__, getattr(torch_object, call)
            for method in ("from_torch", "from_twin", "config", "parameter_counts", "new_cache", "generate",
                           "value_norms"):
                if hasattr(torch_object, method) or hasattr(numpy_object, method):
                    yield f"{name}.{method}", getattr(numpy_object, method), getattr(torch_object, method)
        else:
            yield name, numpy_object, torch_object


@pytest.mark.parametrize("name,numpy_function,torch_function", list(_public_callables()),
                         ids=[c[0] for c in _public_callables()])
def test_public_signatures_agree(name, numpy_function, torch_function):
    # Same argument names, kinds and defaults, up to each namespace's documented own convention.
    assert _parameters(numpy_function, "numpy") == _parameters(torch_function, "torch")


def test_signature_check_would_catch_a_drift():
    def torch_like(x, *, causal=False, mask=None):
        return x

    def numpy_like(x, *, causal=True, mask=None):
        return x

    assert _parameters(numpy_like, "numpy") != _parameters(torch_like, "torch")


@pytest.mark.parametrize("name", CLASSES)
def test_last_weights_is_the_same_kind_of_thing(name):
    for module in (anp, at):
        attribute = inspect.getattr_static(getattr(module, name), "last_weights", None)
        if name in ("FeedForward", "LayerNorm"):
            assert attribute is None
        else:
            assert isinstance(attribute, property), (module.__name__, name)


def _small(namespace, name, **extra):
    arguments = {
        "MultiHeadAttention": (12, 3), "FeedForward": (12, 20), "LayerNorm": (12,),
        "TransformerBlock": (12, 3, 20), "TransformerLM": (30, 12, 3, 20, 2, 16),
        "TransformerEncoder": (30, 12, 3, 20, 2, 16),
    }[name]
    return getattr(namespace, name)(*arguments, **extra)


def _call(module, name, x_numpy):
    """Run a module of either twin on the same input; return NumPy."""
    if name in ("TransformerLM", "TransformerEncoder"):
        ids = np.array([[1, 5, 7, 2, 9]])
        x = ids if not isinstance(module, torch.nn.Module) else torch.from_numpy(ids)
    else:
        x = x_numpy if not isinstance(module, torch.nn.Module) else torch.from_numpy(x_numpy)
    output = module(x)
    return output.detach().numpy() if isinstance(output, torch.Tensor) else output


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("bias", [True, False])
def test_from_twin_round_trips_in_both_directions(name, bias):
    x = np.random.default_rng(0).standard_normal((2, 5, 12))
    torch_module = _randomise(_small(at, name, bias=bias, dtype=torch.float64))
    numpy_module = anp.__dict__[name].from_twin(torch_module)
    assert numpy_module.config() == torch_module.config()
    assert numpy_module.dtype == np.float64
    np.testing.assert_allclose(_call(numpy_module, name, x), _call(torch_module, name, x), **TOL)
    back = at.__dict__[name].from_twin(numpy_module)
    assert back.dtype == torch.float64 and back.config() == torch_module.config()
    for (key, ours), (key_back, theirs) in zip(torch_module.state_dict().items(), back.state_dict().items(),
                                               strict=True):
        assert key == key_back
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # numpy -> torch first, from a seeded NumPy module, in float32
    seeded = _small(anp, name, bias=bias, dtype=np.float32, seed=3)
    as_torch = at.__dict__[name].from_twin(seeded)
    assert as_torch.dtype == torch.float32
    np.testing.assert_allclose(_call(as_torch, name, x.astype(np.float32)), _call(seeded, name, x.astype(np.float32)),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CLASSES)
def test_from_twin_refuses_the_wrong_class_or_namespace(name):
    numpy_class, torch_class = getattr(anp, name), getattr(at, name)
    with pytest.raises(TypeError, match=f"from_twin expects an attnlib.torch.{name}"):
        numpy_class.from_twin(_small(anp, name))  # a NumPy module is not its own twin
    with pytest.raises(TypeError, match=f"from_twin expects an attnlib.numpy.{name}"):
        torch_class.from_twin(torch.nn.Linear(2, 2))


def test_seeding_follows_each_namespace():
    assert np.array_equal(anp.FeedForward(4, 8, seed=5).w_1, anp.FeedForward(4, 8, seed=5).w_1)
    torch.manual_seed(5)
    first = at.FeedForward(4, 8).w_1.detach().clone()
    torch.manual_seed(5)
    assert torch.equal(first, at.FeedForward(4, 8).w_1.detach())


def test_softmax_and_attention():
    x = _x(3, 7)
    np.testing.assert_allclose(anp.softmax(x.numpy()), at.softmax(x).numpy(), **TOL)
    q, k, v = _x(2, 4, 5), _x(2, 6, 5), _x(2, 6, 3)
    mask = torch.rand(2, 4, 6) > 0.2
    for causal in (False, True):
        out_t, w_t = at.attention(q, k, v, causal=causal, mask=mask)
        out_n, w_n = anp.attention(q.numpy(), k.numpy(), v.numpy(), causal=causal, mask=mask.numpy())
        np.testing.assert_allclose(out_n, out_t.numpy(), **TOL)
        np.testing.assert_allclose(w_n, w_t.numpy(), **TOL)
    np.testing.assert_array_equal(anp.causal_mask(3, 5), at.causal_mask(3, 5).numpy())


@pytest.mark.parametrize("causal", [False, True])
def test_multihead_attention(causal):
    torch_module = _randomise(at.MultiHeadAttention(12, 3).double())
    numpy_module = anp.MultiHeadAttention.from_twin(torch_module)
    x = _x(2, 5, 12)
    expected = torch_module(x, causal=causal).detach().numpy()
    np.testing.assert_allclose(numpy_module(x.numpy(), causal=causal), expected, **TOL)
    np.testing.assert_allclose(numpy_module.last_weights, torch_module.last_weights.numpy(), **TOL)


@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_tanh"])
def test_feed_forward(activation):
    torch_module = at.FeedForward(8, 20, activation=activation).double()
    numpy_module = anp.FeedForward.from_twin(torch_module)
    x = _x(3, 8)
    np.testing.assert_allclose(numpy_module(x.numpy()), torch_module(x).detach().numpy(), **TOL)


def test_layer_norm():
    torch_module = _randomise(at.LayerNorm(10, eps=1e-3).double())
    numpy_module = anp.LayerNorm.from_twin(torch_module)
    assert numpy_module.eps == 1e-3
    x = _x(4, 10) * 5
    np.testing.assert_allclose(numpy_module(x.numpy()), torch_module(x).detach().numpy(), **TOL)


@pytest.mark.parametrize("norm_first", [False, True])
def test_block(norm_first):
    torch_module = _randomise(at.TransformerBlock(12, 4, 24, norm_first=norm_first, activation="gelu").double())
    numpy_module = anp.TransformerBlock.from_twin(torch_module)
    x = _x(2, 6, 12)
    expected = torch_module(x, causal=True).detach().numpy()
    np.testing.assert_allclose(numpy_module(x.numpy(), causal=True), expected, **TOL)
    assert numpy_module.parameter_counts() == torch_module.parameter_counts()


def test_language_model_logits_generation_and_counts():
    torch_model = _randomise(at.TransformerLM(30, 16, 4, 32, 3, 40).double())
    numpy_model = anp.TransformerLM.from_twin(torch_model)
    ids = torch.randint(0, 30, (2, 9))
    np.testing.assert_allclose(numpy_model(ids.numpy()), torch_model(ids).detach().numpy(), **TOL)
    np.testing.assert_array_equal(numpy_model.generate(ids.numpy(), 6), torch_model.generate(ids, 6).numpy())
    assert numpy_model.parameter_counts() == torch_model.parameter_counts()
    assert numpy_model.num_parameters() == sum(p.numel() for p in torch_model.parameters())
    # last_weights: one (B, H, n, n) entry per layer, the same numbers in both twins, and on every block too.
    numpy_model(ids.numpy())
    torch_model(ids)
    assert len(numpy_model.last_weights) == len(torch_model.last_weights) == 3
    for ours, theirs, block in zip(numpy_model.last_weights, torch_model.last_weights, numpy_model.blocks, strict=True):
        assert ours.shape == (2, 4, 9, 9)
        np.testing.assert_allclose(ours, theirs.numpy(), **TOL)
        assert block.last_weights is block.attention.last_weights


def test_kv_cache_bytes_agree():
    torch_model = at.TransformerLM(30, 16, 4, 32, 2, 40).double()
    numpy_model = anp.TransformerLM.from_twin(torch_model)
    ids = torch.randint(0, 30, (1, 7))
    torch_cache, numpy_cache = torch_model.new_cache(), numpy_model.new_cache()
    torch_model(ids, kv_cache=torch_cache)
    numpy_model(ids.numpy(), kv_cache=numpy_cache)
    # 2 (k and v) x layers x heads x d_head x positions x 8 bytes
    assert torch_cache.nbytes == numpy_cache.nbytes == 2 * 2 * 4 * 4 * 7 * 8
    assert torch_cache.length == numpy_cache.length == 7


def test_load_state_dict_rejects_mismatches():
    model = anp.LayerNorm(4)
    with pytest.raises(ValueError, match="missing"):
        model.load_state_dict({"weight": np.ones(4)})
    with pytest.raises(ValueError, match="shape"):
        model.load_state_dict({"weight": np.ones(5), "bias": np.zeros(4)})
