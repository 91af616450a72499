"""The attention explorer: where does each token look?

Python computes the attention weights of every layer and head, with the causal mask and without it, on the
same input; the browser draws them as a heatmap (queries down the side, keys along the top), lets the reader
hover a query row, pick a layer and a head (or all heads side by side) and flip between causal and
bidirectional attention. All of that works on the static site, because every map it can show is in the state.
"""

from __future__ import annotations

import numpy as np
import traitlets

from . import _models, _validate
from ._base import STATIC, Figure, to_json_array

MAX_TOKENS = 64  # beyond this a label gets fewer than ~8 pixels and the heatmap stops being readable
ALL_HEADS = -1  # ``head`` value that shows every head of the layer as small multiples


def _weights(name: str, weights, n_tokens: int) -> np.ndarray:
    """Weights shaped (n, n), (heads, n, n) or (layers, heads, n, n) -> (layers, heads, n, n), rows summing to
    1 (or 0 for a fully masked row)."""
    weights = _validate.as_numpy(name, weights)
    if weights.ndim not in (2, 3, 4) or weights.shape[-2:] != (n_tokens, n_tokens):
        raise ValueError(
            f"{name} must have shape (n, n), (heads, n, n) or (layers, heads, n, n) with n = {n_tokens} tokens, "
            f"got {weights.shape}"
        )
    weights = weights.reshape((1,) * (4 - weights.ndim) + weights.shape)  # (layers, heads, n, n)
    row_sums = weights.sum(axis=-1)
    if (weights < 0).any() or not np.all(np.isclose(row_sums, 1, atol=1e-4) | np.isclose(row_sums, 0)):
        raise ValueError(f"{name} must be attention weights (non-negative, each row summing to 1)")
    return weights


class AttentionExplorer(Figure):
    """Attention weights as a heatmap with tokens on both axes.

    ``AttentionExplorer(tokens, weights, causal_weights=None)`` takes plain data: ``weights`` without a mask and
    ``causal_weights`` with the causal mask, for the same input (give one or both; with both, the figure can
    flip between them). Each is shaped (n, n), (heads, n, n) or (layers, heads, n, n) for n tokens.
    ``head=ALL_HEADS`` (-1) shows all heads of the layer as small multiples; ``causal`` picks the map shown first.
    See ``from_model`` (an attnlib TransformerLM on given token ids) and ``from_sentence`` (a sentence that can
    be changed later: ``explorer.sentence = "..."`` recomputes in Python).
    """

    _esm = STATIC / "attention_explorer.js"
    _input_names = ("sentence", "seed")

    tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    weights = traitlets.List().tag(sync=True)  # (layers, heads, n, n) without a mask, or [] if not given
    causal_weights = traitlets.List().tag(sync=True)  # (layers, heads, n, n) with the causal mask, or []
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    causal = traitlets.Bool(False).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)
    sentence = traitlets.Unicode("").tag(sync=True)  # input, when built by from_sentence
    seed = traitlets.Int(0).tag(sync=True)  # input, when built by from_sentence with a fresh model

    def __init__(self, tokens, weights=None, *, causal_weights=None, layer: int = 0, head: int = 0,
                 causal: bool | None = None, title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._source = None  # (model, tokenizer, model_options) for from_sentence
        data = self._data(tokens, weights, causal_weights)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            # by default the unmasked map, unless only the causal one was given
            self.causal = not data["weights"] if causal is None else bool(causal)
            self.layer = layer
            self.head = head
            self.title = str(title)

    @staticmethod
    def _data(tokens, weights, causal_weights) -> dict:
        tokens = _validate.tokens("tokens", tokens, max_tokens=MAX_TOKENS)
        if weights is None and causal_weights is None:
            raise ValueError("give weights (no mask), causal_weights (causal mask), or both")
        maps = {name: None if value is None else _weights(name, value, len(tokens))
                for name, value in (("weights", weights), ("causal_weights", causal_weights))}
        if maps["weights"] is not None and maps["causal_weights"] is not None:
            if maps["weights"].shape != maps["causal_weights"].shape:
                raise ValueError(
                    f"weights and causal_weights must have the same shape, got {maps['weights'].shape} "
                    f"and {maps['causal_weights'].shape}"
                )
        return {"tokens": tokens, **{name: [] if value is None else to_json_array(value)
                                     for name, value in maps.items()}}

    # --- what the reader can pick -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, heads, n, n) of the stored maps."""
        maps = self.weights or self.causal_weights
        return (len(maps), len(maps[0]), len(self.tokens), len(self.tokens))

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        return _validate.index("layer", proposal["value"], self.shape[0], what="layers")

    @traitlets.validate("head")
    def _check_head(self, proposal):
        if proposal["value"] == ALL_HEADS:
            return ALL_HEADS
        return _validate.index("head", proposal["value"], self.shape[1], what="heads (or -1 for all heads)")

    @traitlets.validate("causal")
    def _check_causal(self, proposal):
        wanted = "causal_weights" if proposal["value"] else "weights"
        if self.tokens and not getattr(self, wanted):
            raise ValueError(f"causal={proposal['value']} needs {wanted}, which this explorer was not given")
        return proposal["value"]

    def shown_weights(self) -> np.ndarray:
        """The map(s) on screen now: (n, n) for one head, (heads, n, n) for all heads."""
        maps = np.asarray(self.causal_weights if self.causal else self.weights)[self.layer]  # (heads, n, n)
        return maps if self.head == ALL_HEADS else maps[self.head]

    # --- constructors from attnlib models -------------------------------------------------------------------

    @classmethod
    def from_model(cls, model, tokens, ids, **options) -> AttentionExplorer:
        """Run an attnlib ``TransformerLM`` (NumPy or Torch) on ``ids`` twice, with and without the causal mask,
        and show every layer and head. ``tokens`` are the labels (one per id); ``options`` go to the
        constructor (``layer``, ``head``, ``causal``, ``title``); ``causal`` defaults to the model's own."""
        tokens = _validate.tokens("tokens", tokens, max_tokens=MAX_TOKENS)
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) != len(tokens):
            raise ValueError(f"ids must be 1-D with one id per token ({len(tokens)} tokens), got shape {ids.shape}")
        maps = _models.attention_maps(model, ids)
        options.setdefault("causal", bool(model.causal))
        return cls(tokens, maps[False], causal_weights=maps[True], **options)

    @classmethod
    def from_sentence(cls, sentence: str, *, model=None, tokenizer=None, seed: int = 0, d_model: int = 32,
                      n_heads: int = 4, n_layers: int = 2, **options) -> AttentionExplorer:
        """A sentence through a model; ``explorer.sentence = ...`` (and ``.seed``) recompute later.

        With ``model`` and ``tokenizer`` (e.g. from ``attnlib.pretrained.load``), the tokenizer encodes the
        sentence and that model runs. Without them, a fresh, untrained ``attnlib.numpy.TransformerLM`` of the
        given size is initialised from ``seed`` (word ids are a hash of the word, so the same word always
        gets the same embedding): its patterns are what random weights give, not learned ones.
        """
        if (model is None) != (tokenizer is None):
            raise ValueError("give both model and tokenizer, or neither (for a fresh model built from seed)")
        source = (model, tokenizer, {"d_model": d_model, "n_heads": n_heads, "n_layers": n_layers})
        data = cls._compute_sentence(source, sentence, seed)
        explorer = cls(data["tokens"], data["weights"], causal_weights=data["causal_weights"], **options)
        explorer.sentence, explorer.seed = sentence, seed  # no source yet, so this does not recompute
        explorer._source = source
        return explorer

    @classmethod
    def _compute_sentence(cls, source, sentence, seed) -> dict:
        model, tokenizer, options = source
        sentence, seed = _validate.sentence(sentence), _validate.seed(seed)
        if tokenizer is not None:
            tokens, ids = tokenizer.tokenize(sentence), tokenizer.encode(sentence)
        else:
            from ..numpy import TransformerLM

            vocab_size = 1024
            model = TransformerLM(vocab_size, options["d_model"], options["n_heads"], 4 * options["d_model"],
                                  options["n_layers"], MAX_TOKENS, seed=seed)
            tokens = _models.split_words(sentence)
            ids = _models.hashed_ids(tokens, vocab_size)
        tokens = _validate.tokens("sentence", tokens, max_tokens=MAX_TOKENS)
        maps = _models.attention_maps(model, np.asarray(ids))
        return cls._data(tokens, maps[False], maps[True])

    def _recompute(self):
        if self._source is None:
            return None
        return self._compute_sentence(self._source, self.sentence, self.seed)
