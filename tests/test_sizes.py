"""attnlib.sizes: parameter, KV-cache and multiply-add arithmetic, against known models and attnlib's own."""

import math
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import attnlib.torch as at
from attnlib import sizes

SMALL = {"vocab_size": 50, "d_model": 24, "n_heads": 3, "d_ff": 40, "n_layers": 2, "max_len": 16}


def test_llama_3_70b_has_70_553_706_496_parameters():
    counts = sizes.parameter_counts(**sizes.LLAMA_3_70B)
    assert counts["total"] == 70_553_706_496
    assert counts["embeddings"] == counts["head"] == 128256 * 8192
    assert counts["norms"] == (2 * 80 + 1) * 8192  # RMSNorm: gamma only
    assert counts["total"] == sum(value for kind, value in counts.items() if kind != "total")


def test_llama_3_70b_kv_cache_is_320_kib_per_token_in_bfloat16():
    per_token = sizes.kv_cache_bytes(n_layers=80, n_kv_heads=8, d_head=128, n_tokens=1, bytes_per_number=2)
    assert per_token == 320 * 2**10
    assert sizes.kv_cache_bytes(n_layers=80, n_kv_heads=8, d_head=128, n_tokens=8192, bytes_per_number=2,
                                batch=4) == 4 * 8192 * per_token
    windowed = sizes.kv_cache_bytes(n_layers=80, n_kv_heads=8, d_head=128, n_tokens=8192, bytes_per_number=2,
                                    window=4096)
    assert windowed == 4096 * per_token  # a sliding window keeps the last 4096 tokens only
    assert sizes.kv_cache_bytes(n_layers=1, n_kv_heads=1, d_head=8, n_tokens=10, bytes_per_number=0.5) == 80.0


def test_formula_equals_attnlibs_own_count():
    torch.manual_seed(0)
    model = at.TransformerLM(**SMALL)
    formula = sizes.parameter_counts(vocab_size=SMALL["vocab_size"], d_model=SMALL["d_model"],
                                     n_layers=SMALL["n_layers"], n_heads=SMALL["n_heads"], d_ff=SMALL["d_ff"],
                                     learned_positions=SMALL["max_len"])
    assert formula == model.parameter_counts()
    assert formula["total"] == sum(p.numel() for p in model.parameters())
    one_layer = sizes.parameter_counts(vocab_size=1, d_model=24, n_layers=1, n_heads=3, d_ff=40)
    block = at.TransformerBlock(24, 3, 40).parameter_counts()
    assert (one_layer["attention"], one_layer["feed_forward"]) == (block["attention"], block["feed_forward"])
    assert one_layer["norms"] * 2 == block["norms"] * 3  # the model's final norm comes on top of the block's two
    assert sum(p.numel() for p in at.TransformerBlock(24, 3, 40).parameters()) == block["total"]


def test_gqa_gating_norm_and_tied_embeddings_change_what_they_should():
    base = {"vocab_size": 100, "d_model": 64, "n_layers": 2, "n_heads": 8, "d_ff": 128}
    plain = sizes.parameter_counts(**base)
    grouped = sizes.parameter_counts(**base, n_kv_heads=2)
    assert plain["attention"] - grouped["attention"] == 2 * 2 * (64 * 48 + 48)  # W_K, W_V: 8 -> 2 heads of 8
    gated = sizes.parameter_counts(**base, gated_ffn=True, biases=False)
    assert gated["feed_forward"] == 2 * 3 * 64 * 128
    assert sizes.parameter_counts(**base, norm="rmsnorm")["norms"] * 2 == plain["norms"]
    tied = sizes.parameter_counts(**base, tied_embeddings=True)
    assert tied["head"] == 0 and tied["total"] == plain["total"] - 100 * 64
    assert sizes.parameter_counts(**base, d_head=16)["attention"] > plain["attention"]  # 8 heads of 16 > d_model


def test_multiply_adds_equal_pytorchs_flop_count():
    torch.manual_seed(0)
    model = at.TransformerLM(**SMALL).eval()
    shape = {key: SMALL[key] for key in ("n_layers", "d_model", "d_ff", "vocab_size")}
    ids = torch.randint(SMALL["vocab_size"], (1, 9))

    def flops(function):
        with FlopCounterMode(display=False) as counter:
            function()
        return counter.get_total_flops()

    with torch.no_grad():
        cache = model.new_cache()
        model(ids[:, :8], kv_cache=cache)
        assert flops(lambda: model(ids[:, 8:], kv_cache=cache)) == 2 * sizes.forward_multiply_adds(1, 9, **shape)
        assert flops(lambda: model(ids)) == 2 * sizes.forward_multiply_adds(9, 9, **shape)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "n_layers": 0}), "n_layers"),
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "vocab_size": 1.5}), "vocab_size"),
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "n_kv_heads": 3}), "n_kv_heads"),
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "d_head": True}), "d_head"),
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "norm": "batchnorm"}), "norm"),
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "gated_ffn": "yes"}), "gated_ffn"),
        (lambda: sizes.parameter_counts(**{**sizes.LLAMA_3_70B, "learned_positions": -1}), "learned_positions"),
        (lambda: sizes.parameter_counts(vocab_size=10, d_model=10, n_layers=1, n_heads=3, d_ff=8), "d_head"),
        (lambda: sizes.kv_cache_bytes(n_layers=1, n_kv_heads=1, d_head=8, n_tokens=-1, bytes_per_number=2),
         "n_tokens"),
        (lambda: sizes.kv_cache_bytes(n_layers=1, n_kv_heads=1, d_head=8, n_tokens=1, bytes_per_number=0),
         "bytes_per_number"),
        (lambda: sizes.kv_cache_bytes(n_layers=1, n_kv_heads=1, d_head=8, n_tokens=1, bytes_per_number=math.nan),
         "bytes_per_number"),
        (lambda: sizes.kv_cache_bytes(n_layers=1, n_kv_heads=1, d_head=8, n_tokens=1, bytes_per_number=2,
                                      window=0), "window"),
        (lambda: sizes.kv_cache_bytes(n_layers=1, n_kv_heads=0, d_head=8, n_tokens=1, bytes_per_number=2),
         "n_kv_heads"),
        (lambda: sizes.forward_multiply_adds(4, 3, n_layers=1, d_model=8, d_ff=8, vocab_size=8), "n_keys"),
        (lambda: sizes.forward_multiply_adds(1, 3, n_layers=1, d_model=8, d_ff="8", vocab_size=8), "d_ff"),
    ],
)
def test_bad_arguments_are_refused_by_name(call, name):
    with pytest.raises((TypeError, ValueError), match=name):
        call()


def test_sizes_needs_neither_numpy_nor_torch():
    code = ("import sys; sys.modules['numpy'] = sys.modules['torch'] = None\n"  # as if neither were installed
            "from attnlib import sizes\n"
            "assert sizes.parameter_counts(**sizes.LLAMA_3_70B)['total'] == 70_553_706_496\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
