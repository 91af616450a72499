"""The KV cache, step by step: decoding one token at a time, the cache grows by one row per step.

Python decodes greedily with an attnlib ``TransformerLM`` and its ``KVCache`` (the prompt first, in one
forward pass, then one new token per step), and decodes the same tokens again without a cache, re-reading the
whole sequence at every step. It counts the work each way from what the model actually computed: key/value
rows projected (positions fed x layers) and attention scores (the size of every layer's attention matrix).
The browser steps through the decoding: old cache rows are reused, one new row per step is computed.
"""

from __future__ import annotations

import math

import numpy as np
import traitlets

from .. import _checks
from . import _models, _validate
from ._base import Figure, esm, to_json_array

MAX_TOKENS = 32  # cache rows drawn; beyond this the rows and token labels become too thin to read
MAX_DIM = 32  # columns of the key and value matrices drawn


def expected_work(n_prompt: int, n_steps: int, *, n_layers: int = 1, n_heads: int = 1) -> dict:
    """Work per step, by counting: step 0 reads the prompt, step s >= 1 reads one new token (with the cache) or
    the whole sequence of n_prompt + s tokens again (without). Scores: every head of every layer computes an
    (n_query x n_key) matrix of them; with causal attention on the whole sequence that is the full square.
    At most ``MAX_TOKENS`` positions (n_prompt + n_steps - 1), as the figure draws."""
    n_prompt, n_steps = _checks.positive_int("n_prompt", n_prompt), _checks.positive_int("n_steps", n_steps)
    n_layers, n_heads = _checks.positive_int("n_layers", n_layers), _checks.positive_int("n_heads", n_heads)
    if n_prompt + n_steps - 1 > MAX_TOKENS:
        raise ValueError(f"n_prompt + n_steps - 1 = {n_prompt + n_steps - 1} positions; the figure shows at most "
                         f"{MAX_TOKENS}")
    with_rows, with_scores, without_rows, without_scores = [], [], [], []
    for step in range(n_steps):
        length = n_prompt + step  # positions in the cache after this step
        fed = n_prompt if step == 0 else 1
        with_rows.append(fed * n_layers)
        with_scores.append(n_layers * n_heads * fed * length)
        without_rows.append(length * n_layers)
        without_scores.append(n_layers * n_heads * length * length)
    return {"with_cache": {"kv_rows": with_rows, "scores": with_scores},
            "without_cache": {"kv_rows": without_rows, "scores": without_scores}}


WAYS, COUNTS = ("with_cache", "without_cache"), ("kv_rows", "scores")


def _work(work, n_steps: int) -> dict:
    """``work`` as ``expected_work`` returns it: for each way, one non-negative integer count per step."""
    if not isinstance(work, dict) or set(work) != set(WAYS):
        raise ValueError(f"work must be a dict with the keys {list(WAYS)} (as expected_work returns), got "
                         f"{sorted(work) if isinstance(work, dict) else type(work).__name__}")
    checked = {}
    for way in WAYS:
        if not isinstance(work[way], dict) or set(work[way]) != set(COUNTS):
            raise ValueError(f"work[{way!r}] must be a dict with the keys {list(COUNTS)}, got {work[way]!r:.100}")
        checked[way] = {}
        for count in COUNTS:
            values = work[way][count]
            if not isinstance(values, list | tuple) or len(values) != n_steps:
                raise ValueError(f"work[{way!r}][{count!r}] must be a list of {n_steps} counts (one per step), got "
                                 f"{values!r:.100}")
            checked[way][count] = [_checks.non_negative_int(f"work[{way!r}][{count!r}][{step}]", value)
                                   for step, value in enumerate(values)]
    return checked


def _layer_attention_sizes(model) -> int:
    """Attention scores the last forward pass computed, over all layers and heads (batch of one)."""
    return sum(math.prod(block.attention.last_weights.shape) for block in model.blocks)


def decode_with_and_without_cache(model, prompt_ids, n_new: int, *, layer: int, head: int) -> dict:
    """Greedy decoding with a KVCache, then the same tokens again without one; what each step computed."""
    _models.check_language_model(model)
    if not model.causal:
        raise ValueError("model must be causal (a decoder) to generate; this one is bidirectional")
    n_layers, n_heads = _models.layers_and_heads(model)
    layer = _validate.index("layer", layer, n_layers, what="layers")
    head = _validate.index("head", head, n_heads, what="heads")
    n_new = _checks.positive_int("n_new", n_new)
    prompt = _validate.token_ids("prompt_ids", prompt_ids, model, max_tokens=MAX_TOKENS).tolist()
    if len(prompt) + n_new > min(model.max_len, MAX_TOKENS):
        raise ValueError(
            f"prompt of {len(prompt)} tokens + n_new={n_new} is more than the {min(model.max_len, MAX_TOKENS)} "
            f"positions this figure can show (model.max_len={model.max_len}, at most {MAX_TOKENS} drawn)"
        )

    cache = model.new_cache()
    ids, weights, work_with, logits_with = list(prompt), [], [], []
    logits = _models.forward(model, prompt, kv_cache=cache)  # step 0: the whole prompt at once
    for step in range(n_new + 1):
        if step > 0:  # feed the token the previous step chose: one new position, k and v for it alone
            logits = _models.forward(model, ids[-1:], kv_cache=cache)
        fed = len(prompt) if step == 0 else 1
        work_with.append((fed * n_layers, _layer_attention_sizes(model)))
        attention = _models.to_numpy(model.blocks[layer].attention.last_weights)[0, head]  # (fed, length)
        weights.append(attention[-1])  # where the newest query looks, over every cached key
        logits_with.append(logits[-1])
        if step < n_new:
            ids.append(int(np.argmax(logits[-1])))
    keys = _models.to_numpy(cache[layer].keys)[0, head]  # (n_prompt + n_new, d_head)
    values = _models.to_numpy(cache[layer].values)[0, head]

    work_without, logit_gap = [], 0.0
    for step in range(n_new + 1):  # the same tokens, re-reading the whole sequence each time
        sequence = ids[: len(prompt) + step]
        logits = _models.forward(model, sequence)
        work_without.append((len(sequence) * n_layers, _layer_attention_sizes(model)))
        logit_gap = max(logit_gap, float(np.abs(logits[-1] - logits_with[step]).max()))
    return {"ids": ids, "n_prompt": len(prompt), "keys": keys, "values": values, "weights": weights,
            "logit_gap": logit_gap,
            "work": {"with_cache": {"kv_rows": [w[0] for w in work_with], "scores": [w[1] for w in work_with]},
                     "without_cache": {"kv_rows": [w[0] for w in work_without],
                                       "scores": [w[1] for w in work_without]}},
            "n_layers": n_layers, "n_heads": n_heads}


def _row_over_cache(step: int, n_prompt: int):
    """The shape check of step ``step``'s weights: one weight per cached key, n_prompt + step of them."""
    def check_shape(shape):
        if shape != (n_prompt + step,):
            raise ValueError(f"weights must hold one row per step, row s over the n_prompt + s cached keys: "
                             f"weights[{step}] must have shape ({n_prompt + step},), got {shape}")
    return check_shape


class KVCacheView(Figure):
    """Decoding with a KV cache, one step at a time.

    Plain data: ``KVCacheView(tokens, n_prompt, keys, values, weights=None, work=None)`` with ``tokens`` the
    prompt followed by the generated tokens (labels), ``keys``/``values`` one head's cache after the last step,
    shaped (len(tokens), d_head) (row t was computed at the step that read token t, and never changes after),
    ``weights`` optionally the newest query's attention over the cache at each step, and ``work`` as returned
    by ``expected_work`` (computed from the sizes if omitted). ``from_model`` decodes with an attnlib
    ``TransformerLM``; its ``n_new``, ``layer`` and ``head`` recompute when changed.
    """

    _esm = esm("kv_cache_view.js")
    _input_names = ("n_new", "layer", "head")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    n_prompt = traitlets.Int(1).tag(sync=True)
    # Not named "keys": ipywidgets' Widget.keys lists the synced traits.
    cache_keys = traitlets.List().tag(sync=True)  # (n_tokens, d_head)
    cache_values = traitlets.List().tag(sync=True)  # (n_tokens, d_head)
    weights = traitlets.List().tag(sync=True)  # per step, the newest query's weights over the cached keys, or []
    work = traitlets.Dict().tag(sync=True)  # {"with_cache"|"without_cache": {"kv_rows": [...], "scores": [...]}}
    logit_gap = traitlets.Float(-1.0).tag(sync=True)  # max |logits with cache - without|, -1 if not measured
    n_new = traitlets.Int(1).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    step = traitlets.Int(0).tag(sync=True)  # the decoding step on screen (0 = the prompt)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, tokens, n_prompt: int, keys, values, *, weights=None, work=None, step: int = 0,
                 title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._source = None  # (model, prompt_ids, labels) for from_model
        data = self._data(tokens, n_prompt, keys, values, weights, work)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.step, self.title = step, str(title)

    @staticmethod
    def _data(tokens, n_prompt, keys, values, weights, work, logit_gap=-1.0) -> dict:
        tokens = _validate.tokens("tokens", tokens, max_tokens=MAX_TOKENS)
        n_prompt = _checks.positive_int("n_prompt", n_prompt)
        if n_prompt >= len(tokens):
            raise ValueError(f"n_prompt must leave at least one generated token, got n_prompt={n_prompt} for "
                             f"{len(tokens)} tokens")
        n_steps = len(tokens) - n_prompt + 1
        if weights is not None and (isinstance(weights, str) or not hasattr(weights, "__len__")
                                    or len(weights) != n_steps):
            raise ValueError(f"weights must hold {n_steps} rows, row s over the n_prompt + s cached keys, got "
                             f"{weights!r:.100}")
        work = expected_work(n_prompt, n_steps) if work is None else _work(work, n_steps)

        def cache_shape(name):
            def check_shape(shape):
                if len(shape) != 2 or shape[0] != len(tokens):
                    raise ValueError(f"{name} must have shape (n_tokens, d_head) = ({len(tokens)}, d), got {shape}")
                if shape[1] > MAX_DIM:
                    raise ValueError(f"{name} has d_head = {shape[1]} columns; at most {MAX_DIM} can be drawn")
            return check_shape

        keys = _validate.as_numpy("keys", keys, check_shape=cache_shape("keys"))
        values = _validate.as_numpy("values", values, check_shape=cache_shape("values"))
        if keys.shape != values.shape:
            raise ValueError(f"keys and values must have the same shape (n_tokens, d_head), got {keys.shape} and "
                             f"{values.shape}")
        if weights is not None:
            weights = [_validate.as_numpy(f"weights[{s}]", row, check_shape=_row_over_cache(s, n_prompt))
                       for s, row in enumerate(weights)]
            for s, row in enumerate(weights):
                _validate.attention_weights(f"weights[{s}]", row)
        return {"tokens": tokens, "n_prompt": n_prompt, "cache_keys": to_json_array(keys),
                "cache_values": to_json_array(values), "weights": [to_json_array(row) for row in weights or []],
                "work": work, "logit_gap": float(logit_gap), "n_new": n_steps - 1}

    @traitlets.validate("step")
    def _check_step(self, proposal):
        return _validate.index("step", proposal["value"], len(self.tokens) - self.n_prompt + 1, what="steps")

    @classmethod
    def from_model(cls, model, prompt_ids, n_new: int, *, tokenizer=None, vocabulary=None, layer: int = 0,
                   head: int = 0, **options) -> KVCacheView:
        """Decode ``n_new`` tokens greedily after ``prompt_ids`` with an attnlib ``TransformerLM`` (NumPy or
        Torch), with and without its KV cache, and show layer ``layer``'s cache for head ``head``. Token labels
        come from ``tokenizer.decode([id])``, or ``vocabulary[id]``, or else read ``#id``."""
        if tokenizer is not None and vocabulary is not None:
            raise ValueError("give tokenizer or vocabulary, not both")
        _models.check_language_model(model)
        if tokenizer is not None and not callable(getattr(tokenizer, "decode", None)):
            raise TypeError(f"tokenizer must have a decode() method, got {type(tokenizer).__name__}")
        if vocabulary is not None:
            if isinstance(vocabulary, str | bytes) or not hasattr(vocabulary, "__getitem__") \
                    or not hasattr(vocabulary, "__len__"):
                raise TypeError(f"vocabulary must be a list of words (vocabulary[id] labels token id), got "
                                f"{type(vocabulary).__name__}")
            if len(vocabulary) < model.vocab_size:
                raise ValueError(f"vocabulary must label every token id of the model: {len(vocabulary)} words for "
                                 f"model.vocab_size = {model.vocab_size}")
        source = (model, prompt_ids, tokenizer, vocabulary)
        data = cls._decode(source, n_new, layer, head)
        logit_gap = data.pop("logit_gap")
        view = cls(**data, **options)
        view.layer, view.head, view.logit_gap = layer, head, logit_gap  # no source yet: nothing recomputes
        view._source = source
        return view

    @staticmethod
    def _decode(source, n_new, layer, head) -> dict:
        model, prompt_ids, tokenizer, vocabulary = source
        result = decode_with_and_without_cache(model, prompt_ids, n_new, layer=layer, head=head)

        def label(token_id):
            if tokenizer is not None:
                return tokenizer.decode([token_id])
            if vocabulary is not None:
                return str(vocabulary[token_id])
            return f"#{token_id}"

        return {"tokens": [label(i) for i in result["ids"]], "n_prompt": result["n_prompt"], "keys": result["keys"],
                "values": result["values"], "weights": result["weights"], "work": result["work"],
                "logit_gap": result["logit_gap"]}

    def _recompute(self):
        if self._source is None:
            return None
        data = self._data(**self._decode(self._source, self.n_new, self.layer, self.head))
        data["step"] = 0  # a new decoding starts from its prompt
        return data
