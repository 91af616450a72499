"""Malformed calls fail early with a ValueError/TypeError whose message names the argument and what was seen."""

import contextlib

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at


def _np(*shape, dtype=np.float64):
    return np.ones(shape, dtype=dtype)


def _t(*shape, dtype=torch.float64):
    return torch.ones(*shape, dtype=dtype)


# (description, call, exception, regex the message must match). Each row is run for real.
CASES = [
    # softmax
    ("softmax NaN", lambda: anp.softmax(np.array([1.0, np.nan])), ValueError, r"x contains NaN"),
    ("softmax +inf", lambda: at.softmax(torch.tensor([1.0, float("inf")])), ValueError, r"x contains NaN or \+inf"),
    ("softmax ints", lambda: anp.softmax(np.array([1, 2])), TypeError,
     r"x must have a floating-point dtype, got int64"),
    ("softmax empty", lambda: at.softmax(torch.ones(2, 0)), ValueError, r"x must not be empty, got shape \(2, 0\)"),
    # attention shapes, dtypes, values
    ("d_k mismatch", lambda: anp.attention(_np(3, 4), _np(5, 6), _np(5, 2)), ValueError,
     r"q and k must share .* q \(3, 4\), k \(5, 6\)"),
    ("k/v length mismatch", lambda: at.attention(_t(3, 4), _t(5, 4), _t(6, 2)), ValueError,
     r"k and v must have the same number of positions.*v \(6, 2\)"),
    ("batch mismatch", lambda: anp.attention(_np(2, 3, 4), _np(3, 5, 4), _np(3, 5, 4)), ValueError,
     r"batch dimensions .* q \(2, 3, 4\)"),
    ("1-D q", lambda: anp.attention(_np(4), _np(5, 4), _np(5, 4)), ValueError, r"q must have at least 2 dim.*\(4,\)"),
    ("mixed dtypes", lambda: at.attention(_t(3, 4), _t(3, 4, dtype=torch.float32), _t(3, 4)), TypeError,
     r"dtypes must match.*k: torch.float32"),
    ("integer q", lambda: anp.attention(np.ones((3, 4), dtype=int), _np(3, 4), _np(3, 4)), TypeError,
     r"q must have a floating-point dtype"),
    ("NaN in k", lambda: anp.attention(_np(3, 4), np.full((3, 4), np.nan), _np(3, 4)), ValueError, r"k contains NaN"),
    ("inf in v", lambda: at.attention(_t(3, 4), _t(3, 4), torch.full((3, 4), float("inf"), dtype=torch.float64)),
     ValueError, r"v contains NaN or infinity"),
    ("empty sequence", lambda: anp.attention(_np(0, 4), _np(3, 4), _np(3, 4)), ValueError,
     r"q must not be empty, got shape \(0, 4\)"),
    ("mask wrong shape", lambda: anp.attention(_np(3, 4), _np(5, 4), _np(5, 4), mask=np.ones((3, 4), bool)),
     ValueError, r"mask of shape \(3, 4\) does not broadcast to .*\(3, 5\)"),
    ("mask not boolean", lambda: at.attention(_t(3, 4), _t(3, 4), _t(3, 4), mask=torch.ones(3, 3)), TypeError,
     r"mask must be boolean .* got dtype torch.float32"),
    ("mask a list", lambda: at.attention(_t(3, 4), _t(3, 4), _t(3, 4), mask=[[True]]), TypeError,
     r"mask must be a torch.Tensor, got list"),
    ("negative scale", lambda: anp.attention(_np(3, 4), _np(3, 4), _np(3, 4), scale=-1.0), ValueError,
     r"scale must be a finite positive number, got -1.0"),
    ("causal with n_k < n_q", lambda: anp.attention(_np(5, 4), _np(3, 4), _np(3, 4), causal=True), ValueError,
     r"causal attention needs n_k >= n_q.*\(5, 4\).*\(3, 4\)"),
    ("q not an array", lambda: at.attention([[1.0]], _t(1, 1), _t(1, 1)), TypeError,
     r"q must be a torch.Tensor, got list"),
    # causal_mask
    ("causal_mask zero", lambda: anp.causal_mask(0), ValueError, r"n_q must be a positive integer, got 0"),
    ("causal_mask float", lambda: at.causal_mask(2.5), TypeError, r"n_q must be a positive integer, got 2.5"),
    ("causal_mask n_k < n_q", lambda: at.causal_mask(4, 2), ValueError, r"n_k >= n_q.*n_q=4, n_k=2"),
    # constructors
    ("heads do not divide", lambda: at.MultiHeadAttention(10, 3), ValueError,
     r"d_model must be divisible by n_heads, got d_model=10 and n_heads=3"),
    ("negative d_model", lambda: anp.MultiHeadAttention(-8, 2), ValueError,
     r"d_model must be a positive integer, got -8"),
    ("zero heads", lambda: anp.MultiHeadAttention(8, 0), ValueError, r"n_heads must be a positive integer, got 0"),
    ("unknown activation", lambda: at.FeedForward(8, 16, activation="swish"), ValueError,
     r"activation must be one of \('relu', 'gelu', 'gelu_tanh'\), got 'swish'"),
    ("unknown activation (block)", lambda: anp.TransformerBlock(8, 2, 16, activation="tanh"), ValueError,
     r"activation must be one of .* got 'tanh'"),
    ("negative d_ff", lambda: anp.FeedForward(8, -1), ValueError, r"d_ff must be a positive integer, got -1"),
    ("bool size", lambda: at.LayerNorm(True), TypeError, r"d_model must be a positive integer, got True"),
    ("eps zero", lambda: at.LayerNorm(8, eps=0.0), ValueError, r"eps must be a finite positive number, got 0.0"),
    ("zero layers", lambda: at.TransformerLM(10, 8, 2, 16, 0, 32), ValueError,
     r"n_layers must be a positive integer, got 0"),
    ("KVCache zero layers", lambda: anp.KVCache(0), ValueError,
     r"n_layers must be a positive integer, got 0"),
    # module calls
    ("MHA wrong width", lambda: at.MultiHeadAttention(8, 2).double()(_t(2, 5, 6)), ValueError,
     r"x must have last dimension 8, got shape \(2, 5, 6\)"),
    ("MHA 1-D input", lambda: anp.MultiHeadAttention(8, 2)(_np(8)), ValueError, r"x must have at least 2 dim.*\(8,\)"),
    ("MHA whole cache", lambda: anp.MultiHeadAttention(8, 2)(_np(3, 8), kv_cache=anp.KVCache(2)), TypeError,
     r"kv_cache must be one layer's cache: pass cache\[i\]"),
    ("FFN wrong width", lambda: anp.FeedForward(8, 16)(_np(3, 5)), ValueError,
     r"x must have last dimension 8, got shape \(3, 5\)"),
    ("LayerNorm NaN", lambda: at.LayerNorm(4).double()(torch.full((2, 4), float("nan"), dtype=torch.float64)),
     ValueError, r"x contains NaN"),
    ("LM float ids", lambda: at.TransformerLM(10, 8, 2, 16, 1, 32)(torch.ones(1, 3)), TypeError,
     r"ids must hold integer token ids \(int16/int32/int64\), got dtype torch.float32"),
    ("LM id out of vocab", lambda: anp.TransformerLM(10, 8, 2, 16, 1, 32)(np.array([[1, 12]])), ValueError,
     r"ids must lie in \[0, 10\), got values from 1 to 12"),
    ("LM empty prompt", lambda: at.TransformerLM(10, 8, 2, 16, 1, 32)(torch.ones(1, 0, dtype=torch.long)), ValueError,
     r"ids must be a non-empty sequence.*\(1, 0\)"),
    ("LM too long", lambda: anp.TransformerLM(10, 8, 2, 16, 1, 4)(np.zeros((1, 6), dtype=int)), ValueError,
     r"sequence of 6 positions .* exceeds max_len=4"),
    ("generate too long", lambda: at.TransformerLM(10, 8, 2, 16, 1, 8).generate(torch.zeros(1, 5, dtype=torch.long), 4),
     ValueError, r"prompt of 5 tokens \+ n_new=4 exceeds max_len=8"),
    ("generate negative n_new", lambda: anp.TransformerLM(10, 8, 2, 16, 1, 8).generate(np.zeros((1, 2), int), -1),
     ValueError, r"n_new must be a non-negative integer, got -1"),
    ("generate with encoder", lambda: at.TransformerLM(10, 8, 2, 16, 1, 8, causal=False).generate(
        torch.zeros(1, 2, dtype=torch.long), 1), ValueError, r"generate needs a causal model"),
    ("cache shape clash", lambda: _cache_with(_np(2, 3, 4)).append(_np(3, 1, 4), _np(3, 1, 4)), ValueError,
     r"k of shape \(3, 1, 4\) does not extend the cached keys \(2, 3, 4\)"),
    # from_torch
    ("from_torch wrong class", lambda: at.MultiHeadAttention.from_torch(torch.nn.Linear(4, 4)), TypeError,
     r"module must be a torch.nn.MultiheadAttention, got Linear"),
    ("from_torch wrong layer", lambda: at.TransformerBlock.from_torch(torch.nn.LayerNorm(4)), TypeError,
     r"module must be a torch.nn.TransformerEncoderLayer, got LayerNorm"),
    ("numpy from_torch of an attnlib.torch module", lambda: anp.LayerNorm.from_torch(at.LayerNorm(4)), TypeError,
     r"from_torch takes a torch.nn module; to convert an attnlib.torch LayerNorm use LayerNorm.from_twin"),
]


def _cache_with(keys):
    cache = anp.LayerCache()
    cache.append(keys, keys)
    return cache


@pytest.mark.parametrize("description,call,exception,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_clear_message(description, call, exception, message):
    with pytest.raises(exception, match=message):
        call()


def test_there_are_at_least_25_malformed_calls():
    assert len(CASES) >= 25


def _model_with_a_nan_weight(module):
    model = module.TransformerLM(vocab_size=11, d_model=8, n_heads=2, d_ff=16, n_layers=2, max_len=16, **(
        {"seed": 0} if module is anp else {}))
    with torch.no_grad() if module is at else contextlib.nullcontext():
        model.blocks[1].feed_forward.w_1[0, 0] = float("nan")
    return model


@pytest.mark.parametrize("module", [anp, at], ids=["numpy", "torch"])
def test_a_nan_born_inside_the_model_is_caught_once_at_its_output(module):
    # The layers inside TransformerLM run their cores, which do not scan; the model checks its logits instead.
    model = _model_with_a_nan_weight(module)
    ids = np.array([[1, 2, 3]]) if module is anp else torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"TransformerLM produced NaN or infinity in logits \(shape \(1, 3, 11\)"):
        model(ids)
    with pytest.raises(ValueError, match=r"TransformerLM produced NaN"):
        model.generate(ids, 2)
    # A layer called on its own goes through its own door and scans its input.
    x = np.full((1, 2, 8), np.nan) if module is anp else torch.full((1, 2, 8), float("nan"))
    with pytest.raises(ValueError, match=r"x contains NaN or infinity"):
        model.blocks[0].norm1(x)
