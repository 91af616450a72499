"""Hostile input to the figures, the pretrained checkpoints and the traffic model: each is refused at the door,
before any work, with an exception that names the argument and shows what was seen; unusual but valid input
gives the right answer.

Every figure constructor and classmethod is fed mismatched shapes, NaN, float token ids (where it takes ids) and
huge inputs; a huge input must be refused in well under a second (a bound on the work done before the check,
not a benchmark).
"""

import json
import shutil
import time

import numpy as np
import pytest
import torch

import attnlib.numpy as an
import attnlib.torch as at
from attnlib import pretrained, traffic
from attnlib.numpy.flash_attention import FlashTrace
from attnlib.pretrained.tokenizer import WordTokenizer
from attnlib.widgets import AttentionExplorer, ExamGrader, FeedForwardMemoryView, KVCacheView, TileStepper
from attnlib.widgets.feed_forward_memory_view import memory_reading
from attnlib.widgets.kv_cache_view import expected_work

HUGE_SECONDS = 1.0


def small_lm(max_len=16):
    return an.TransformerLM(vocab_size=20, d_model=16, n_heads=4, d_ff=32, n_layers=2, max_len=max_len, seed=0)


def huge(shape, value=0.0):
    """An array of ``shape`` that costs no memory (every element is the same one)."""
    return np.broadcast_to(np.float64(value), shape)


def trace_dict(**changes):
    q = np.random.default_rng(0).standard_normal((4, 2))
    trace = FlashTrace.record(q, q, q, block_q=2, block_k=2).to_dict()
    return {**trace, **changes}


def with_nan_acc():
    trace = trace_dict()
    first = dict(trace["steps"][0], acc=[[float("nan"), 1.0], [1.0, 1.0]])
    return {**trace, "steps": [first] + trace["steps"][1:]}


def ffn(bias=True, d_ff=3):
    return an.FeedForward(8, d_ff, bias=bias, seed=0)


def ffn_with_nan():
    module = ffn()
    module.w_1 = module.w_1.copy()
    module.w_1[0, 0] = np.nan
    return module


def kv(**changes):
    arguments = {"tokens": ["a", "b", "c"], "n_prompt": 1, "keys": np.ones((3, 2)), "values": np.ones((3, 2))}
    return KVCacheView(**{**arguments, **changes})


class NoEncode:
    def tokenize(self, text):
        return text.split()


# --------------------------------------------------------------------------------------------------------------
# Figures: (door, kind, make, exception, message naming the argument)
# --------------------------------------------------------------------------------------------------------------

E, QKV = "AttentionExplorer", "AttentionExplorer.from_qkv"
FM, FS = "AttentionExplorer.from_model", "AttentionExplorer.from_sentence"
T, TQ, TR = "TileStepper", "TileStepper.from_qkv", "TileStepper.random"
G, GS = "ExamGrader", "ExamGrader.story"
K, KM = "KVCacheView", "KVCacheView.from_model"
F = "FeedForwardMemoryView"

FIGURE_CASES = [
    # AttentionExplorer(tokens, weights, ...)
    (E, "shape", lambda: AttentionExplorer(["a", "b", "c"], np.eye(2)), ValueError,
     r"weights must have shape \(\.\.\., n_q, n_k\) = \(\.\.\., 3, 3\).*got \(2, 2\)"),
    (E, "shape", lambda: AttentionExplorer(["a", "b"], np.eye(2), outputs=np.ones((3, 4))), ValueError,
     r"outputs must have one row per query row of weights"),
    (E, "shape", lambda: AttentionExplorer(["a", "b"], np.eye(2), causal_weights=np.stack([np.eye(2)] * 3)), ValueError,
     r"weights and causal_weights must have the same shape"),
    (E, "nan", lambda: AttentionExplorer(["a", "b"], np.full((2, 2), np.nan)), ValueError,
     r"weights contains NaN or infinity \(shape \(2, 2\)"),
    (E, "nan", lambda: AttentionExplorer(["a", "b"], torch.tensor([[1.0, 0.0], [float("inf"), 0.0]])), ValueError,
     r"weights contains NaN or infinity"),
    (E, "nan", lambda: AttentionExplorer(["a", "b"], np.eye(2), outputs=np.array([[np.nan], [1.0]])), ValueError,
     r"outputs contains NaN"),
    (E, "huge", lambda: AttentionExplorer(["a", "b"], huge((3000, 3000, 2, 2), 0.5)), ValueError,
     r"weights of shape \(3000, 3000, 2, 2\) holds 36000000 numbers; a figure holds at most 1048576"),
    (E, "huge", lambda: AttentionExplorer(["a", "b"], huge((50, 2, 2, 2), 0.5)), ValueError,
     r"weights gives maps of 50 layers; this figure shows at most 48"),
    (E, "huge", lambda: AttentionExplorer(["a", "b"], huge((40, 32, 2, 2, 2), 0.5), temperatures=[1.0] * 40),
     ValueError, r"temperatures must hold 1 to 9 values"),
    (E, "huge", lambda: AttentionExplorer(["a"] * 10**6, np.eye(2)), ValueError,
     r"tokens has 1000000 tokens; at most 64"),
    (E, "huge", lambda: AttentionExplorer(["a" * 10**6, "b"], np.eye(2)), ValueError,
     r"tokens holds a label of 1000000 characters \('aaaa.*; at most 100 fit"),
    (E, "huge", lambda: AttentionExplorer(["a", "b"], np.eye(2), temperatures=[1.0] * 10**6), ValueError,
     r"temperatures must hold 1 to 9 values"),
    (E, "huge", lambda: AttentionExplorer(["a", "b"], np.eye(2), outputs=huge((2, 10**6))), ValueError,
     r"outputs of shape \(2, 1000000\) holds 2000000 numbers"),
    (E, "type", lambda: AttentionExplorer(["a", "b"], np.eye(2, dtype=bool)), TypeError,
     r"weights must hold real numbers, got dtype bool"),
    (E, "type", lambda: AttentionExplorer(["a", "b"], np.eye(2) + 0j), TypeError,
     r"weights must hold real numbers, got dtype complex128"),
    (E, "type", lambda: AttentionExplorer(["a", "b"], "weights"), TypeError, r"weights must be an array"),
    (E, "type", lambda: AttentionExplorer(["a", "b"], np.eye(2), causal="yes"), TypeError,
     r"causal must be True or False, got 'yes'"),
    (E, "bool", lambda: AttentionExplorer(["a", "b"], np.eye(2), layer=True), TypeError,
     r"layer must be an integer, got True"),
    (E, "type", lambda: AttentionExplorer(["a", "b"], np.eye(2), heads=1), TypeError,
     r"AttentionExplorer got unexpected keyword argument\(s\) \['heads'\]"),
    (E, "value", lambda: AttentionExplorer(["a", "b"], np.array([[2.0, -1.0], [0.5, 0.5]])), ValueError,
     r"weights must be attention weights \(non-negative, each row summing to 1\), got a weight of -1"),
    # AttentionExplorer.from_model(model, tokens, ids)
    (FM, "shape", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [1, 2, 3]), ValueError,
     r"ids must be 1-D with one id per token \(2 tokens\), got shape \(3,\)"),
    (FM, "shape", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [[1, 2]]), ValueError,
     r"ids must be one sequence of token ids \(1-D\), got shape \(1, 2\)"),
    (FM, "float ids", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [1.0, 2.0]), TypeError,
     r"ids must hold integer token ids.*got dtype float64"),
    (FM, "float ids", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], torch.tensor([1.5, 2.0])),
     TypeError, r"ids must hold integer token ids.*got dtype float32"),
    (FM, "nan", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [1, float("nan")]), TypeError,
     r"ids must hold integer token ids.*float64"),
    (FM, "bool", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [1, True]), TypeError,
     r"ids must hold integer token ids, got a bool"),
    (FM, "bool", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], np.array([True, False])), TypeError,
     r"ids must hold integer token ids.*got dtype bool"),
    (FM, "value", lambda: AttentionExplorer.from_model(small_lm(), ["a", "b"], [1, 20]), ValueError,
     r"ids must lie in \[0, 20\), got values from 1 to 20"),
    (FM, "huge", lambda: AttentionExplorer.from_model(small_lm(), ["a"] * 20, np.zeros(20, dtype=int)), ValueError,
     r"ids holds 20 ids; this figure shows at most 16 \(model.max_len = 16"),
    (FM, "huge", lambda: AttentionExplorer.from_model(small_lm(), ["a"], np.zeros(10**8, dtype=np.int8)),
     ValueError, r"ids holds 100000000 ids"),
    (FM, "type", lambda: AttentionExplorer.from_model(small_lm(), ["a"], "1"), ValueError,
     r"ids must be one sequence of token ids \(1-D\), got shape \(\)"),
    # AttentionExplorer.from_qkv(q, k, v, ...)
    (QKV, "shape", lambda: AttentionExplorer.from_qkv(np.ones((2, 3)), np.ones((3, 3)), np.ones((4, 3)),
                                                      query_labels=["a", "b"], key_labels=["c", "d", "e"]),
     ValueError, r"k and v must have the same number of positions"),
    (QKV, "shape", lambda: AttentionExplorer.from_qkv(np.ones((2, 3)), np.ones((3, 3)), np.ones((3, 3)),
                                                      query_labels=["a", "b"], key_labels=["c"]),
     ValueError, r"key_labels must have one label per key \(row of k\): 1 labels for k of shape \(3, 3\)"),
    (QKV, "nan", lambda: AttentionExplorer.from_qkv(np.full((2, 3), np.nan), np.ones((2, 3)), np.ones((2, 3)),
                                                    query_labels=["a", "b"], key_labels=["c", "d"]),
     ValueError, r"q contains NaN or infinity"),
    (QKV, "huge", lambda: AttentionExplorer.from_qkv(huge((10**5, 2, 1)), huge((10**5, 2, 1)), huge((10**5, 2, 1)),
                                                     query_labels=["a", "b"], key_labels=["c", "d"]),
     ValueError, r"q gives maps of 100000 heads; this figure shows at most 32"),
    (QKV, "huge", lambda: AttentionExplorer.from_qkv(huge((2, 10**6)), huge((2, 10**6)), huge((2, 10**6)),
                                                     query_labels=["a", "b"], key_labels=["c", "d"]),
     ValueError, r"q of shape \(2, 1000000\) holds 2000000 numbers"),
    (QKV, "huge", lambda: AttentionExplorer.from_qkv(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 40)),
                                                     query_labels=["a", "b"], key_labels=["c", "d"]),
     ValueError, r"v has d_v = 40 columns; at most 32"),
    (QKV, "bool", lambda: AttentionExplorer.from_qkv(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 3)),
                                                     query_labels=["a", "b"], key_labels=["c", "d"],
                                                     temperatures=[True]),
     TypeError, r"temperatures must be a positive number, got True"),
    # AttentionExplorer.from_sentence(sentence, ...)
    (FS, "shape", lambda: AttentionExplorer.from_sentence("a b", d_model=30, n_heads=4), ValueError,
     r"d_model must be divisible by n_heads, got d_model=30 and n_heads=4"),
    (FS, "nan", lambda: AttentionExplorer.from_sentence("a b", seed=float("nan")), TypeError,
     r"seed must be a non-negative integer, got nan"),
    (FS, "huge", lambda: AttentionExplorer.from_sentence("word " * 10**6), ValueError,
     r"sentence has 5000000 characters; this figure draws at most 64 tokens"),
    (FS, "huge", lambda: AttentionExplorer.from_sentence("a b", d_model=10**6), ValueError,
     r"d_model = 1000000 is too large: at most 128"),
    (FS, "huge", lambda: AttentionExplorer.from_sentence("a b", n_layers=10**6), ValueError,
     r"n_layers = 1000000 is too large: at most 12"),
    (FS, "huge", lambda: AttentionExplorer.from_sentence("a " * 70), ValueError,
     r"sentence has 70 tokens; at most 64"),
    (FS, "bool", lambda: AttentionExplorer.from_sentence("a b", n_heads=True), TypeError,
     r"n_heads must be a positive integer, got True"),
    (FS, "type", lambda: AttentionExplorer.from_sentence(b"a b"), TypeError, r"sentence must be a str, got bytes"),
    (FS, "type", lambda: AttentionExplorer.from_sentence("a b", model=small_lm(), tokenizer=NoEncode()), TypeError,
     r"tokenizer must have tokenize\(\) and encode\(\).*without \['encode'\]"),
    # TileStepper(trace, reference)
    (T, "shape", lambda: TileStepper(trace_dict(), reference=np.ones((3, 2))), ValueError,
     r"reference must have the output's shape \(4, 2\), got \(3, 2\)"),
    (T, "shape", lambda: TileStepper(trace_dict(steps=trace_dict()["steps"][:-1])), ValueError,
     r"trace must visit or skip each of its 4 tiles once, got 3 steps and 0 skipped tiles"),
    (T, "shape", lambda: TileStepper(trace_dict(output=np.ones((3, 2)))), ValueError,
     r"trace\['output'\] must have one row per query, n_q = 4, got shape \(3, 2\)"),
    (T, "nan", lambda: TileStepper(with_nan_acc()), ValueError, r"trace steps\[0\]\['acc'\] contains NaN or \+inf"),
    (T, "nan", lambda: TileStepper(trace_dict(), reference=np.full((4, 2), np.nan)), ValueError,
     r"reference contains NaN or infinity"),
    (T, "huge", lambda: TileStepper(trace_dict(n_q=2000, output=huge((2000, 2)))), ValueError,
     r"n_q = 2000 is too large to draw legibly; the tile stepper shows at most 32"),
    (T, "huge", lambda: TileStepper(trace_dict(), reference=huge((2000, 2000))), ValueError,
     r"reference of shape \(2000, 2000\) holds 4000000 numbers"),
    (T, "type", lambda: TileStepper(trace_dict(n_q=4.0)), TypeError,
     r"trace\['n_q'\] must be a positive integer, got 4.0"),
    (T, "type", lambda: TileStepper({k: v for k, v in trace_dict().items() if k != "skipped"}), ValueError,
     r"trace lacks \['skipped'\]"),
    # TileStepper.from_qkv(q, k, v, ...)
    (TQ, "shape", lambda: TileStepper.from_qkv(np.ones((4, 2)), np.ones((5, 2)), np.ones((6, 2))), ValueError,
     r"k and v must have the same number of positions"),
    (TQ, "shape", lambda: TileStepper.from_qkv(np.ones((4, 2)), np.ones((1, 5, 2)), np.ones((5, 2))), ValueError,
     r"k must be one head's keys, shape \(n_k, d_k\), got shape \(1, 5, 2\)"),
    (TQ, "nan", lambda: TileStepper.from_qkv(np.ones((4, 2)), np.ones((4, 2)), np.full((4, 2), np.inf)), ValueError,
     r"v contains NaN or infinity"),
    (TQ, "huge", lambda: TileStepper.from_qkv(huge((2000, 2000)), huge((2000, 2000)), huge((2000, 2000))),
     ValueError, r"n_q = 2000 is too large"),
    (TQ, "bool", lambda: TileStepper.from_qkv(np.ones((4, 2)), np.ones((4, 2)), np.ones((4, 2)), block_k=True),
     TypeError, r"block_k must be a positive integer, got True"),
    # TileStepper.random(n_q, n_k, d, ...)
    (TR, "shape", lambda: TileStepper.random(n_q=8, n_k=4, causal=True), ValueError,
     r"causal attention needs n_k >= n_q"),
    (TR, "nan", lambda: TileStepper.random(d=float("nan")), TypeError, r"d must be a positive integer, got nan"),
    (TR, "huge", lambda: TileStepper.random(n_q=2000, n_k=2000, block_q=1, block_k=1), ValueError,
     r"n_q = 2000 is too large to draw legibly; the tile stepper shows at most 32"),
    (TR, "huge", lambda: TileStepper.random(n_q=4, n_k=4, d=10**9), ValueError,
     r"d = 1000000000 is too large to draw legibly; the tile stepper shows at most 16"),
    (TR, "bool", lambda: TileStepper.random(n_k=True), TypeError, r"n_k must be a positive integer, got True"),
    (TR, "type", lambda: TileStepper.random(causal="no"), TypeError, r"causal must be True or False, got 'no'"),
    (TR, "type", lambda: TileStepper.random(block_q=1.5), TypeError, r"block_q must be a positive integer, got 1.5"),
    # ExamGrader(marks, ...)
    (G, "shape", lambda: ExamGrader(np.ones((2, 3))), ValueError, r"marks must be 1-D \(one row of scores\)"),
    (G, "nan", lambda: ExamGrader([1.0, float("inf")]), ValueError, r"marks contains NaN or infinity"),
    (G, "nan", lambda: ExamGrader([1.0, 2.0], temperature=float("nan")), ValueError,
     r"temperature must be a finite positive number, got nan"),
    (G, "huge", lambda: ExamGrader(huge((10**9,))), ValueError, r"marks of shape \(1000000000,\) holds"),
    (G, "huge", lambda: ExamGrader([1e300, 1.0], temperature=1e-300), ValueError,
     r"temperature = 1e-300 is too small for these marks"),
    (G, "bool", lambda: ExamGrader([1.0, 2.0], batch_size=True), TypeError, r"batch_size must be a positive integer"),
    (G, "bool", lambda: ExamGrader([True, False]), TypeError, r"marks must hold real numbers, got dtype bool"),
    (G, "type", lambda: ExamGrader("80 90"), TypeError, r"marks must be an array.*got str"),
    # ExamGrader.story(seed, ...)
    (GS, "shape", lambda: ExamGrader.story(n_batches=7, batch_size=10), ValueError,
     r"n_batches \* batch_size = 7 \* 10 marks; at most 60"),
    (GS, "nan", lambda: ExamGrader.story(seed=float("nan")), TypeError, r"seed must be a non-negative integer"),
    (GS, "huge", lambda: ExamGrader.story(n_batches=10**6, batch_size=10**6), ValueError,
     r"n_batches \* batch_size = 1000000 \* 1000000 marks"),
    (GS, "bool", lambda: ExamGrader.story(n_batches=True), TypeError, r"n_batches must be a positive integer"),
    # KVCacheView(tokens, n_prompt, keys, values, ...)
    (K, "shape", lambda: kv(values=np.ones((3, 4))), ValueError,
     r"keys and values must have the same shape \(n_tokens, d_head\), got \(3, 2\) and \(3, 4\)"),
    (K, "shape", lambda: kv(keys=np.ones((2, 2))), ValueError,
     r"keys must have shape \(n_tokens, d_head\) = \(3, d\), got \(2, 2\)"),
    (K, "shape", lambda: kv(weights=[[1.0], [0.5, 0.5], [1.0]]), ValueError,
     r"weights\[2\] must have shape \(3,\), got \(1,\)"),
    (K, "shape", lambda: kv(work=expected_work(1, 2)), ValueError,
     r"work\['with_cache'\]\['kv_rows'\] must be a list of 3 counts"),
    (K, "nan", lambda: kv(weights=[[1.0], [np.nan, 1.0], [0.2, 0.3, 0.5]]), ValueError,
     r"weights\[1\] contains NaN or infinity"),
    (K, "nan", lambda: kv(keys=np.full((3, 2), np.nan)), ValueError, r"keys contains NaN or infinity"),
    (K, "value", lambda: kv(weights=[[1.0], [1.5, -0.5], [0.2, 0.3, 0.5]]), ValueError,
     r"weights\[1\] must be attention weights"),
    (K, "huge", lambda: kv(keys=huge((3, 10**7))), ValueError, r"keys of shape \(3, 10000000\) holds"),
    (K, "huge", lambda: kv(tokens=["a"] * 10**6), ValueError, r"tokens has 1000000 tokens; at most 32"),
    (K, "bool", lambda: kv(n_prompt=True), TypeError, r"n_prompt must be a positive integer, got True"),
    (K, "type", lambda: kv(work={"with_cache": {}, "without_cache": {}}), ValueError,
     r"work\['with_cache'\] must be a dict with the keys \['kv_rows', 'scores'\]"),
    (K, "type", lambda: kv(work={way: {"kv_rows": [1.5, 1, 1], "scores": [1, 1, 1]}
                                 for way in ("with_cache", "without_cache")}),
     TypeError, r"work\['with_cache'\]\['kv_rows'\]\[0\] must be a non-negative integer, got 1.5"),
    # KVCacheView.from_model(model, prompt_ids, n_new, ...)
    (KM, "shape", lambda: KVCacheView.from_model(small_lm(), [[1, 2]], 2), ValueError,
     r"prompt_ids must be one sequence of token ids \(1-D\), got shape \(1, 2\)"),
    (KM, "shape", lambda: KVCacheView.from_model(small_lm(), [1], 2, vocabulary=["a", "b"]), ValueError,
     r"vocabulary must label every token id of the model: 2 words for model.vocab_size = 20"),
    (KM, "float ids", lambda: KVCacheView.from_model(small_lm(), [1.0, 2.0], 2), TypeError,
     r"prompt_ids must hold integer token ids.*float64"),
    (KM, "float ids", lambda: KVCacheView.from_model(small_lm(), np.array([1.9]), 2), TypeError,
     r"prompt_ids must hold integer token ids.*float64"),
    (KM, "nan", lambda: KVCacheView.from_model(small_lm(), [float("nan")], 2), TypeError,
     r"prompt_ids must hold integer token ids"),
    (KM, "huge", lambda: KVCacheView.from_model(small_lm(), np.zeros(10**8, dtype=np.int8), 2), ValueError,
     r"prompt_ids holds 100000000 ids; this figure shows at most 16"),
    (KM, "huge", lambda: KVCacheView.from_model(small_lm(max_len=1024), [1], 10**9), ValueError,
     r"prompt of 1 tokens \+ n_new=1000000000 is more than the 32 positions"),
    (KM, "bool", lambda: KVCacheView.from_model(small_lm(), [1], True), TypeError,
     r"n_new must be a positive integer, got True"),
    (KM, "bool", lambda: KVCacheView.from_model(small_lm(), [1], 2, head=False), TypeError,
     r"head must be an integer, got False"),
    (KM, "type", lambda: KVCacheView.from_model(small_lm(), [1], 2, tokenizer=object()), TypeError,
     r"tokenizer must have a decode\(\) method"),
    # FeedForwardMemoryView(ffn, inputs, ...)
    (F, "shape", lambda: FeedForwardMemoryView(ffn(), np.ones((2, 8)), input_labels=["x"]), ValueError,
     r"input_labels must have one label per row of inputs: 1 labels for inputs of shape \(2, 8\)"),
    (F, "shape", lambda: FeedForwardMemoryView(ffn(), np.ones((1, 7)), input_labels=["x"]), ValueError,
     r"inputs must have shape \(n_inputs, d_model\) = \(n_inputs, 8\), got \(1, 7\)"),
    (F, "nan", lambda: FeedForwardMemoryView(ffn(), np.full((1, 8), np.inf), input_labels=["x"]), ValueError,
     r"inputs contains NaN or infinity"),
    (F, "nan", lambda: FeedForwardMemoryView(ffn_with_nan(), np.ones((1, 8)), input_labels=["x"]), ValueError,
     r"ffn.w_1 contains NaN or infinity"),
    (F, "nan", lambda: FeedForwardMemoryView(ffn(), np.ones((1, 8)), input_labels=["x"],
                                             readout={"w": np.full(8, np.nan)}),
     ValueError, r"readout\['w'\] contains NaN or infinity"),
    (F, "huge", lambda: FeedForwardMemoryView(ffn(), huge((10**8, 8)), input_labels=["x"]), ValueError,
     r"inputs of shape \(100000000, 8\) holds"),
    (F, "huge", lambda: FeedForwardMemoryView(ffn(), np.ones((17, 8)), input_labels=["x"] * 16), ValueError,
     r"inputs has 17 rows; at most 16 inputs"),
    (F, "huge", lambda: FeedForwardMemoryView(at.FeedForward(8, 4096), np.ones((1, 8)), input_labels=["x"]),
     ValueError, r"ffn has d_ff = 4096 slots; at most 32"),
    (F, "huge", lambda: FeedForwardMemoryView(ffn(), np.ones((1, 8)), input_labels=["x"],
                                             readout=(["w"] * 10**6, huge((10**6, 8)))),
     ValueError, r"readout has 1000000 tokens; at most 24"),
    (F, "bool", lambda: FeedForwardMemoryView(ffn(), np.ones((1, 8)), input_labels=["x"], input_index=True),
     TypeError, r"input_index must be an integer, got True"),
    (F, "type", lambda: FeedForwardMemoryView(ffn(), np.ones((1, 8)), input_labels=["x"], activation="off"),
     TypeError, r"activation must be True or False, got 'off'"),
    (F, "type", lambda: FeedForwardMemoryView(torch.nn.Linear(8, 8), np.ones((1, 8)), input_labels=["x"]),
     TypeError, r"ffn must be an attnlib FeedForward"),
]

# What each door must be tested with: every figure gets mismatched shapes, NaN and a huge input; those that take
# token ids get float ids too.
REQUIRED_KINDS = {door: {"shape", "nan", "huge"} for door in (E, QKV, FM, FS, T, TQ, TR, G, GS, K, KM, F)}
for door in (FM, KM):
    REQUIRED_KINDS[door].add("float ids")


def _case_id(case):
    door, kind, *_ , match = case
    return f"{door}-{kind}-{match[:30]}"


@pytest.mark.parametrize("door, kind, make, error, match", FIGURE_CASES, ids=[_case_id(c) for c in FIGURE_CASES])
def test_figures_refuse_hostile_input_by_name(door, kind, make, error, match):
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        make()
    if kind == "huge":
        elapsed = time.perf_counter() - start
        assert elapsed < HUGE_SECONDS, f"{door}: {elapsed:.2f} s of work before refusing a huge input"


def test_every_figure_door_is_fed_every_kind_of_hostile_input():
    seen = {}
    for door, kind, *_ in FIGURE_CASES:
        seen.setdefault(door, set()).add(kind)
    missing = {door: sorted(kinds - seen.get(door, set())) for door, kinds in REQUIRED_KINDS.items()}
    assert not any(missing.values()), missing


def test_memory_reading_and_expected_work_check_their_arguments():
    with pytest.raises(ValueError, match=r"inputs contains NaN"):
        memory_reading(ffn(), np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match=r"contributions of shape \(40000, 300, 8\) holds"):
        memory_reading(an.FeedForward(8, 300, seed=0), np.ones((40000, 8)))
    with pytest.raises(TypeError, match=r"n_steps must be a positive integer, got True"):
        expected_work(2, True)
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"n_prompt \+ n_steps - 1 = 1000000001 positions"):
        expected_work(2, 10**9)
    assert time.perf_counter() - start < HUGE_SECONDS


def test_a_refused_live_input_leaves_the_figure_as_it_was():
    stepper = TileStepper.random(n_q=4, n_k=4, d=2)
    before = stepper.steps
    start = time.perf_counter()
    stepper.block_q = 10**6  # valid as a block size, but the figure still holds 4 queries: one block
    assert stepper.error == "" and len(stepper.steps) == 1 * 2  # 1 query block x 2 key blocks of 3
    stepper.block_q = 2
    assert stepper.steps == before
    grader = ExamGrader([1e300, 1.0])
    grader.temperature = 1e-300
    assert "temperature = 1e-300 is too small" in grader.error and grader.temperature == 1e-300
    assert grader.marks == [1e300, 1.0]
    assert time.perf_counter() - start < HUGE_SECONDS


# --- unusual but valid figure input ---------------------------------------------------------------------------


@pytest.mark.parametrize("ids", [np.array([1, 5, 7], dtype=np.int32), torch.tensor([1, 5, 7], dtype=torch.int32),
                                 (np.int64(1), np.int64(5), np.int64(7)), np.array([1, 5, 7], dtype=np.uint16)])
def test_explorer_reads_any_integer_ids_like_int64(ids):
    expected = AttentionExplorer.from_model(small_lm(), ["a", "b", "c"], [1, 5, 7])
    got = AttentionExplorer.from_model(small_lm(), ["a", "b", "c"], ids)
    assert got.weights == expected.weights and got.causal_weights == expected.causal_weights


def test_kv_cache_view_reads_torch_int32_prompt_like_a_list():
    expected = KVCacheView.from_model(small_lm(), [3, 4], 3)
    got = KVCacheView.from_model(small_lm(), torch.tensor([3, 4], dtype=torch.int32), 3)
    assert got.tokens == expected.tokens and got.cache_keys == expected.cache_keys


def test_tile_stepper_reads_a_trace_dict_as_the_trace():
    q = np.random.default_rng(0).standard_normal((4, 2))
    trace = FlashTrace.record(q, q, q, block_q=2, block_k=2, causal=True)
    from_dict, from_trace = TileStepper(trace.to_dict()), TileStepper(trace)
    assert from_dict.steps == from_trace.steps and from_dict.skipped == from_trace.skipped == [[0, 1]]


def test_exam_grader_reads_integer_marks_as_numbers():
    assert ExamGrader(np.array([80, 90, 85])).shares == ExamGrader([80.0, 90.0, 85.0]).shares


def test_ffn_view_without_biases_reads_them_as_zero():
    module = ffn(bias=False)
    x = np.random.default_rng(1).standard_normal((2, 8))
    view = FeedForwardMemoryView(module, x, input_labels=["x", "y"])
    pre = x @ module.w_1
    np.testing.assert_allclose(view.pre_activation, pre, atol=5e-7)
    np.testing.assert_allclose(view.with_activation["outputs"], module(x), atol=5e-7)
    np.testing.assert_allclose(view.without_activation["outputs"], pre @ module.w_2, atol=5e-7)
    assert view.bias == [0.0] * 8


def test_ffn_view_of_a_float32_numpy_module_computes_in_float32():
    module = an.FeedForward(8, 3, seed=0, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((2, 8))
    view = FeedForwardMemoryView(module, x, input_labels=["x", "y"])
    np.testing.assert_allclose(view.with_activation["outputs"], module(x.astype(np.float32)), atol=5e-7)


# --------------------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------------------

WORDS = ["the", "apple", "fell", "."]


@pytest.fixture(scope="module")
def tokenizer():
    return WordTokenizer(WORDS)  # ids: 0-2 special, 3 "the", 4 "apple", 5 "fell", 6 "."


@pytest.mark.parametrize("ids, text", [
    (np.int64(4), "apple"),
    (np.int32(4), "apple"),
    (np.uint8(4), "apple"),
    (4, "apple"),
    (np.array(4), "apple"),
    (torch.tensor(4), "apple"),
    (np.array([3, 4, 5, 6]), "the apple fell."),
    (torch.tensor([3, 4, 5, 6]), "the apple fell."),
    (np.array([3, 4], dtype=np.uint16), "the apple"),
    ([np.int64(3), torch.tensor(4), 5], "the apple fell"),
    ((3, 4), "the apple"),
    ([], ""),
    (np.array([], dtype=np.int64), ""),
])
def test_decode_reads_any_integer_ids(tokenizer, ids, text):
    assert tokenizer.decode(ids) == text


@pytest.mark.parametrize("ids, error, match", [
    (4.0, TypeError, r"ids must be integers, got 4.0 of type float"),
    (np.float64(4), TypeError, r"ids must be integers, got np.float64\(4.0\) of dtype float64"),
    ([3, 4.0], TypeError, r"ids must be integers, got 4.0"),
    (True, TypeError, r"ids must be integers, got True of type bool"),
    ([3, np.True_], TypeError, r"ids must be integers, got np.True_"),
    (np.array([3.0, 4.0]), TypeError, r"ids must be integers, got an array of dtype float64"),
    (torch.tensor([3.0]), TypeError, r"ids must be integers, got an array of dtype torch.float32"),
    (torch.tensor([True]), TypeError, r"ids must be integers, got an array of dtype torch.bool"),
    (np.array([[3, 4]]), ValueError, r"decode takes one sequence of ids \(1-D\).*shape \(1, 2\)"),
    ([[3, 4]], ValueError, r"decode takes one sequence of ids"),
    ([3, 7], ValueError, r"ids must be integers in \[0, 7\), got 7 at position 1"),
    (np.array([-1]), ValueError, r"ids must be integers in \[0, 7\), got -1 at position 0"),
    ("the apple", TypeError, r"ids must be token ids, got the str 'the apple'; encode\(\)"),
    (None, TypeError, r"ids must be token ids \(an int or a sequence of ints\), got NoneType"),
])
def test_decode_refuses_what_is_not_an_id(tokenizer, ids, error, match):
    with pytest.raises(error, match=match):
        tokenizer.decode(ids)


@pytest.mark.parametrize("text, ids", [
    ("", []),
    ("   \n\t ", []),
    ("The APPLE fell.", [3, 4, 5, 6]),
    ("the zebra", [3, 1]),  # an unknown word is <unk>
    ("apple,fell", [4, 1, 5]),  # "," is not in this vocabulary
])
def test_encode_edge_cases(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids


def test_encode_reads_a_very_long_text_in_linear_time(tokenizer):
    text = "the apple fell . " * 100_000
    start = time.perf_counter()
    ids = tokenizer.encode(text)
    assert len(ids) == 400_000 and ids[:4] == [3, 4, 5, 6]
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("make, error, match", [
    (lambda t: t.encode(b"the apple"), TypeError, r"text must be a str, got bytes"),
    (lambda t: t.encode(None), TypeError, r"text must be a str, got NoneType"),
    (lambda t: t.tokenize(["the"]), TypeError, r"text must be a str, got list"),
    (lambda t: WordTokenizer("apple"), TypeError, r"words must be a list of words, got the string 'apple'"),
    (lambda t: WordTokenizer(5), TypeError, r"words must be a list of words, got int"),
    (lambda t: WordTokenizer(["apple", 5]), TypeError, r"words must be strings, got \[5\]"),
    (lambda t: WordTokenizer(["Apple", "two words", ""]), ValueError,
     r"words must be non-empty strings that tokenize\(\) produces.*'Apple', 'two words', ''"),
    (lambda t: WordTokenizer.from_vocabulary(None), TypeError, r"vocab must be a list of tokens, got NoneType"),
])
def test_tokenizer_refuses_bad_text_and_words(tokenizer, make, error, match):
    with pytest.raises(error, match=match):
        make(tokenizer)


# --------------------------------------------------------------------------------------------------------------
# Loading checkpoints (from copies in tmp_path)
# --------------------------------------------------------------------------------------------------------------

NAME = "tiny-encoder"  # the smaller of the two


@pytest.fixture
def copied(tmp_path):
    for path in pretrained.checkpoint_paths(NAME):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


def edit_json(folder, change):
    path = folder / f"{NAME}.json"
    described = json.loads(path.read_text())
    change(described)
    path.write_text(json.dumps(described))
    return path


def edit_weights(folder, change):
    path = folder / f"{NAME}.pt"
    state = torch.load(path, weights_only=True)
    state = change(state)
    torch.save(state, path)
    return path


def set_config(**values):
    return lambda described: described["config"].update(values)


def drop_key(*keys):
    def change(described):
        target = described
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


def nan_in(key):
    def change(state):
        state[key][0] = float("nan")
        return state
    return change


JSON_CASES = [
    (drop_key("config"), r"tiny-encoder.json is corrupted: it lacks \['config'\]"),
    (drop_key("vocabulary"), r"tiny-encoder.json is corrupted: it lacks \['vocabulary'\]"),
    (drop_key("reference"), r"tiny-encoder.json is corrupted: it lacks \['reference'\]"),
    (drop_key("config", "d_model"), r"tiny-encoder.json: 'config' lacks \['d_model'\]"),
    (set_config(colour="red"), r"tiny-encoder.json: 'config' has unknown keys \['colour'\]"),
    (set_config(n_heads=0), r"tiny-encoder.json: 'config' is invalid: n_heads must be a positive integer, got 0"),
    (set_config(d_model=True), r"tiny-encoder.json: 'config' is invalid: d_model must be a positive integer, got True"),
    (set_config(d_model=128, n_heads=2), r"tiny-encoder.pt does not match its config in .*tiny-encoder.json: "
                                         r"'token_embedding' has shape \(288, 64\) in the weights, \(288, 128\)"),
    (set_config(n_layers=3), r"tiny-encoder.pt does not match its config in .*: the config has n_layers=3, "
                             r"the weights hold 2 blocks"),
    (set_config(n_heads=4), r"tiny-encoder.pt does not match its config in .*tiny-encoder.json: the model misses "
                            r"the logits recorded in 'reference'"),
    (set_config(activation="relu"), r"tiny-encoder.pt does not match its config.*misses the logits recorded"),
    (set_config(vocab_size=300), r"tiny-encoder.json has a vocabulary of 288 tokens but a config with "
                                 r"vocab_size=300"),
    (lambda d: d.update(vocabulary=d["vocabulary"][3:]), r"tiny-encoder.json: 'vocabulary' is invalid: vocab must "
                                                         r"start with \('<pad>', '<unk>', '<mask>'\)"),
    (drop_key("reference", "tolerance"), r"tiny-encoder.json: 'reference' must hold ids, logits and tolerance"),
    (lambda d: d["reference"].update(ids=[[1.5, 2]]), r"tiny-encoder.json: 'reference' must hold ids"),
]


@pytest.mark.parametrize("change, match", JSON_CASES)
def test_a_wrong_description_is_named_by_file_and_key(copied, change, match):
    edit_json(copied, change)
    with pytest.raises(ValueError, match=match):
        pretrained.load(NAME, directory=copied)


def test_a_config_asking_for_a_million_layers_is_refused_at_once(copied):
    edit_json(copied, set_config(n_layers=10**6))
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"the config has n_layers=1000000, the weights hold 2 blocks"):
        pretrained.load(NAME, directory=copied)
    assert time.perf_counter() - start < 5.0  # the JSON and the weights are read; no model is built


WEIGHTS_CASES = [
    (nan_in("blocks.1.attention.w_q"), ValueError,
     r"tiny-encoder.pt is corrupted: 'blocks.1.attention.w_q' holds NaN or infinity"),
    (lambda state: torch.zeros(3), ValueError, r"tiny-encoder.pt holds a Tensor, not a state_dict"),
    (lambda state: {**state, "extra": torch.zeros(2)}, ValueError,
     r"tiny-encoder.pt does not match its config in .*: the weights lack \[\] and have unexpected \['extra'\]"),
    (lambda state: {key: value for key, value in state.items() if key != "head"}, ValueError,
     r"the weights lack \['head'\]"),
    (lambda state: {**state, "head": state["head"].to(torch.int64)}, ValueError,
     r"tiny-encoder.pt: 'head' must be a floating-point tensor, got torch.int64"),
]


@pytest.mark.parametrize("change, error, match", WEIGHTS_CASES)
def test_wrong_weights_are_named_by_file_and_key(copied, change, error, match):
    edit_weights(copied, change)
    with pytest.raises(error, match=match):
        pretrained.load(NAME, directory=copied)


@pytest.mark.parametrize("content, match", [
    (b"", r"tiny-encoder.pt could not be read \(corrupted\?\)"),
    (b"\x00" * 100, r"tiny-encoder.pt could not be read"),
])
def test_an_empty_or_garbage_weights_file_is_named(copied, content, match):
    (copied / f"{NAME}.pt").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        pretrained.load(NAME, directory=copied)


@pytest.mark.parametrize("content, match", [
    (b"", r"tiny-encoder.json is corrupted \(not valid JSON\)"),
    (b"\xff\xfe{", r"tiny-encoder.json is corrupted \(not valid JSON\)"),
    (b'"a string"', r"tiny-encoder.json is corrupted: it holds a JSON str, not an object"),
])
def test_an_empty_or_garbage_description_is_named(copied, content, match):
    (copied / f"{NAME}.json").write_bytes(content)
    with pytest.raises(ValueError, match=match):
        pretrained.load(NAME, directory=copied)


def test_a_truncated_description_is_named(copied):
    path = copied / f"{NAME}.json"
    path.write_text(path.read_text()[:5000])
    with pytest.raises(ValueError, match=rf"{path}.*not valid JSON"):
        pretrained.load(NAME, directory=copied)


@pytest.mark.parametrize("name, directory, error, match", [
    ("gpt-5", None, ValueError,
     r"name must be one of \('tiny-lm', 'tiny-encoder', 'tiny-lm-rope', 'all-MiniLM-L6-v2'\), got 'gpt-5'"),
    (None, None, ValueError, r"name must be one of .*got None"),
    ("../tiny-lm", None, ValueError, r"name must be one of"),
    (NAME, "/no/such/folder", FileNotFoundError, r"directory /no/such/folder does not exist"),
    (NAME, 42, TypeError, r"directory must be a path \(str or pathlib.Path\), got int"),
])
def test_unknown_names_and_folders_are_named(name, directory, error, match):
    with pytest.raises(error, match=match):
        pretrained.load(name, directory=directory)


def test_a_copy_loads_and_equals_the_shipped_checkpoint(copied):
    model, tokenizer = pretrained.load(NAME, directory=str(copied))  # a str path works as well as a Path
    shipped, _ = pretrained.load(NAME)
    for (key, value), (_, expected) in zip(model.state_dict().items(), shipped.state_dict().items(), strict=True):
        assert torch.equal(value, expected), key
    assert tokenizer.decode(np.int64(tokenizer.encode("apple")[0])) == "apple"


# --------------------------------------------------------------------------------------------------------------
# The traffic model
# --------------------------------------------------------------------------------------------------------------

FLASH, STANDARD = traffic.flash_attention_traffic, traffic.standard_attention_traffic

TRAFFIC_CASES = [
    (lambda: STANDARD(True, 1, 8, 4), TypeError, r"batch must be a positive integer, got True of type bool"),
    (lambda: FLASH(1, False, 8, 4), TypeError, r"heads must be a positive integer, got False"),
    (lambda: FLASH(1, 1, 8.0, 4), TypeError, r"n must be a positive integer, got 8.0 of type float"),
    (lambda: STANDARD(1, 1, 8, -4), ValueError, r"d must be a positive integer, got -4"),
    (lambda: FLASH(1, 1, 8, 4, bytes_per_element=True), TypeError, r"bytes_per_element must be a positive integer"),
    (lambda: STANDARD(1, 1, 8, 4, bytes_per_element=2.5), TypeError, r"bytes_per_element must be a positive"),
    (lambda: STANDARD(0, 1, 8, 4), ValueError, r"batch must be a positive integer, got 0"),
    (lambda: STANDARD(1, 1, 8, 4, dropout="no"), TypeError, r"dropout must be True or False, got 'no'"),
    (lambda: STANDARD(1, 1, 8, 4, backward=None), TypeError, r"backward must be True or False, got None"),
    (lambda: FLASH(1, 1, 8, 4, backward=2), TypeError, r"backward must be True or False, got 2"),
    (lambda: FLASH(1, 1, 8, 4, sram_bytes=True), TypeError, r"sram_bytes must be a positive integer, got True"),
    (lambda: FLASH(1, 1, 8, 4, sram_bytes=1024.0), TypeError, r"sram_bytes must be a positive integer, got 1024.0"),
    (lambda: FLASH(1, 1, 8, 64, sram_bytes=256), ValueError,
     r"even the smallest blocks \(B_r, B_c\) = \(1, 1\) with d = 64 need 257 elements on chip.*sram_bytes = 256 "
     r"holds only 128 elements of bytes_per_element = 2"),
    (lambda: FLASH(1, 1, 4096, 64, block_sizes=(256, 1024)), ValueError,
     r"block_sizes \(B_r, B_c\) = \(256, 1024\) with d = 64 need 425984 elements on chip.*sram_bytes = 196608"),
    (lambda: FLASH(1, 1, 8, 4, block_sizes=4), ValueError, r"block_sizes must be a pair \(B_r, B_c\), got 4"),
    (lambda: FLASH(1, 1, 8, 4, block_sizes=(2.0, 2)), TypeError, r"block_sizes\[0\] \(B_r\) must be a positive"),
    (lambda: FLASH(1, 1, 8, 4, block_sizes=(2, True)), TypeError, r"block_sizes\[1\] \(B_c\) must be a positive"),
    (lambda: FLASH(1, 1, 10**7, 64, block_sizes=(1, 1)), ValueError,
     r"n = 10000000 with blocks \(B_r, B_c\) = \(1, 1\) makes 100000000000000 tiles"),
    (lambda: FLASH(1, 1, 10**9, 64), ValueError, r"n = 1000000000 with blocks \(B_r, B_c\) = \(64, 384\) makes"),
    (lambda: traffic.gpt2_medium_comparison(sram_bytes=0), ValueError, r"sram_bytes must be a positive integer"),
    (lambda: traffic.gpt2_medium_comparison(dropout="yes"), TypeError, r"dropout must be True or False, got 'yes'"),
    (lambda: traffic.paper_block_sizes(True, 1000), TypeError, r"d must be a positive integer, got True"),
    (lambda: traffic.paper_block_sizes(64, 0), ValueError, r"sram_elements must be a positive integer, got 0"),
    (lambda: traffic.Traffic(10, 10).scaled(0), ValueError, r"factor must be a positive integer, got 0"),
    (lambda: traffic.Traffic(10, 10) + 3, TypeError, r"unsupported operand"),
]


@pytest.mark.parametrize("call, error, match", TRAFFIC_CASES)
def test_traffic_refuses_bad_arguments_by_name_at_once(call, error, match):
    start = time.perf_counter()
    with pytest.raises(error, match=match):
        call()
    assert time.perf_counter() - start < HUGE_SECONDS


def test_traffic_reads_numpy_integers_and_blocks_that_just_fit():
    expected = FLASH(2, 3, 100, 16, sram_bytes=4096, bytes_per_element=2)
    got = FLASH(np.int64(2), np.int32(3), np.int64(100), np.int16(16), sram_bytes=np.int64(4096),
                bytes_per_element=np.int8(2), backward=np.True_)
    assert got == expected
    # (B_r, B_c) = (8, 24) with d = 16: 2 * 16 * 32 + 8 * 24 = 1216 elements = 2432 bytes in float16.
    assert FLASH(1, 1, 100, 16, sram_bytes=2432, block_sizes=(8, 24)).total > 0
    with pytest.raises(ValueError, match=r"need 1216 elements on chip"):
        FLASH(1, 1, 100, 16, sram_bytes=2431, block_sizes=(8, 24))
