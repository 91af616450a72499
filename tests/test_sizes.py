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


def test_mistral_7b_has_7_241_732_096_parameters():
    # By hand: per layer W_Q and W_O 4096 x 4096 each, W_K and W_V 4096 x (8 x 128) each, SwiGLU 3 x 4096 x 14336,
    # two RMSNorm gains of 4096; 32 layers, a final gain, a 32000 x 4096 token table and an untied head.
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    by_hand = 32 * per_layer + 4096 + 2 * 32000 * 4096
    assert by_hand == 7_241_732_096
    assert sizes.parameter_counts(**sizes.MISTRAL_7B)["total"] == by_hand


def test_cache_bytes_per_token_of_the_published_layouts():
    layouts = sizes.CACHE_LAYOUTS
    per_token = {name: sizes.kv_cache_bytes_per_token(layout) for name, layout in layouts.items()}  # bfloat16
    assert per_token == {
        "Llama-2-7B": 2 * 32 * 32 * 128 * 2,         # MHA: a key and a value for each of 32 heads, 32 layers
        "Falcon-7B": 2 * 32 * 1 * 64 * 2,            # MQA: one key/value head of 64 for 71 query heads
        "Llama-3-70B": 2 * 80 * 8 * 128 * 2,         # GQA: 8 key/value heads for 64 query heads
        "Mistral-7B-v0.1": 2 * 32 * 8 * 128 * 2,     # GQA: 8 key/value heads for 32 query heads
        "DeepSeek-V2": 60 * (512 + 64) * 2,          # MLA: the latent c_kv and the shared RoPE key, per layer
        "DeepSeek-V3": 61 * (512 + 64) * 2,
    }
    assert per_token["Llama-3-70B"] == 320 * 2**10 and per_token["DeepSeek-V3"] == 70_272
    assert [layout.kind for layout in layouts.values()] == ["MHA", "MQA", "GQA", "GQA", "MLA", "MLA"]
    for layout in layouts.values():  # float32 doubles every entry
        assert sizes.kv_cache_bytes_per_token(layout, bytes_per_number=4) == 2 * per_token[layout.name]
    for name in ("Llama-2-7B", "Falcon-7B", "Llama-3-70B"):  # the same formula as kv_cache_bytes
        layout = layouts[name]
        assert per_token[name] == sizes.kv_cache_bytes(
            n_layers=layout.n_layers, n_kv_heads=layout.n_kv_heads or layout.n_heads, d_head=layout.d_head,
            n_tokens=1, bytes_per_number=2)


def test_deepseek_v2_latent_equals_gqa_with_2_25_groups():
    # DeepSeek-V2's comparison: d_c = 4 d_h and d_h^R = d_h / 2 cache 4.5 d_h numbers per token and layer, what GQA
    # with 2.25 key/value heads would cache (2 x 2.25 x d_h).
    layout = sizes.CACHE_LAYOUTS["DeepSeek-V2"]
    assert layout.numbers_per_token_per_layer == 4.5 * 128 == 2 * 2.25 * 128 == 576
    as_multi_head = sizes.AttentionLayout("DeepSeek-V2 as MHA", n_layers=60, n_heads=128, d_head=128)
    assert as_multi_head.numbers_per_token_per_layer == 2 * 128 * 128 == 32_768  # 56.9 times more


def test_a_sliding_window_caps_the_cached_positions():
    mistral = sizes.CACHE_LAYOUTS["Mistral-7B-v0.1"]
    per_token = 2 * 32 * 8 * 128 * 2
    assert sizes.layout_kv_cache_bytes(mistral, 1000) == 1000 * per_token  # below the window: grows per token
    assert sizes.layout_kv_cache_bytes(mistral, 4096) == 4096 * per_token == 512 * 2**20
    assert sizes.layout_kv_cache_bytes(mistral, 32768, batch=3) == 3 * 4096 * per_token  # capped at the window
    llama = sizes.CACHE_LAYOUTS["Llama-3-70B"]  # no window: grows with every token
    assert sizes.layout_kv_cache_bytes(llama, 32768) == 32768 * 320 * 2**10 == 10 * 2**30
    assert sizes.layout_kv_cache_bytes(llama, 0) == 0
    rows = {row["name"]: row for row in sizes.cache_table(32768)}
    assert rows["Mistral-7B-v0.1"]["bytes_at_n_tokens"] == 4096 * per_token
    assert rows["DeepSeek-V3"] == {"name": "DeepSeek-V3", "kind": "MLA", "window": None,
                                   "numbers_per_token_per_layer": 576, "bytes_per_token": 61 * 576 * 2,
                                   "bytes_at_n_tokens": 32768 * 61 * 576 * 2}
    assert [row["name"] for row in sizes.cache_table(8, layouts=[llama])] == ["Llama-3-70B"]


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
        (lambda: sizes.AttentionLayout("x", n_layers=1, n_heads=4, d_head=8, d_latent=16), "d_latent and d_rope"),
        (lambda: sizes.AttentionLayout("x", n_layers=1, n_heads=4, d_head=8, n_kv_heads=1, d_latent=16, d_rope=4),
         "n_kv_heads"),
        (lambda: sizes.AttentionLayout("x", n_layers=1, n_heads=4, d_head=8, n_kv_heads=3), "n_kv_heads"),
        (lambda: sizes.AttentionLayout("x", n_layers=1, n_heads=4, d_head=8, window=0), "window"),
        (lambda: sizes.AttentionLayout("x", n_layers=2.0, n_heads=4, d_head=8), "n_layers"),
        (lambda: sizes.AttentionLayout("", n_layers=1, n_heads=4, d_head=8), "name"),
        (lambda: sizes.kv_cache_bytes_per_token(sizes.LLAMA_3_70B), "layout"),
        (lambda: sizes.kv_cache_bytes_per_token(sizes.CACHE_LAYOUTS["Falcon-7B"], bytes_per_number=-2),
         "bytes_per_number"),
        (lambda: sizes.layout_kv_cache_bytes(sizes.CACHE_LAYOUTS["Falcon-7B"], -1), "n_tokens"),
        (lambda: sizes.layout_kv_cache_bytes(sizes.CACHE_LAYOUTS["Falcon-7B"], 1, batch=0), "batch"),
        (lambda: sizes.cache_table(8, layouts=["Falcon-7B"]), "layout"),
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
