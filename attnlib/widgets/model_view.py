"""The model view: every head of every layer of an encoder at once, for a few real sentences.

Python runs the model on each sentence on its own (no padding, so every token is real) and keeps, per layer and
head, two maps of (n x n) numbers:

* ``weights`` -- the attention weights alpha_ij, as ``model.last_weights`` records them;
* ``norm_weights`` -- how much key j actually *moves* query i through that head (Kobayashi et al. 2020,
  "Attention is Not Only a Weight"): alpha_ij * ||f_h(x_j)||, where f_h(x) = (x W_v^h + b_v^h) W_o^h is the
  head's transformed value -- the head's d_head columns of ``w_v``/``b_v`` and its d_head rows of ``w_o``, so
  f_h(x_j) is exactly what key j adds to query i's output, per unit of weight. (``b_o`` is added once per query,
  not per key, and is left out, as in the paper.) For display, each row is divided by its sum, so it reads as
  "the share of what this query receives that comes from each key" on the same 0..1 scale as the weights.

The browser draws all layers x heads as a grid of small heatmaps (rows = layers, columns = heads); clicking a head
(or Enter / arrow keys on it) opens it large below the grid, with the tokens on both axes and the values on hover;
a toggle switches every map between the weights and weight x ||value||. Every map is in the saved state, so all of
it works on the static site with no kernel.
"""

from __future__ import annotations

import numbers

import numpy as np
import traitlets

from . import _models, _validate
from ._base import Figure, esm, to_json_array

MAX_SENTENCES = 8  # one entry each in the sentence menu; each costs layers x heads x n^2 x 2 saved numbers
MAX_TOKENS = 40  # tokens of one sentence, [CLS] and [SEP] included: the large heatmap stays legible
MAX_LAYERS = 24  # rows of the grid
MAX_HEADS = 16  # columns of the grid
DECIMALS = 4  # the saved maps are rounded to 4 decimals: 72 heads x 2 maps of 20 x 20 stay ~300 kB per sentence
NONE = -1  # ``layer`` and ``head`` when no head is opened
MODES = ("weights", "norm")  # what the maps show: the weights, or weight x ||transformed value|| (row shares)


def norm_weighted(weights, value_norms) -> np.ndarray:
    """alpha_ij * ||f(x_j)||, each row divided by its sum (a row of zeros stays zeros): the display form.

    ``weights`` (..., H, n_q, n_k), ``value_norms`` (..., H, n_k), as ``MultiHeadAttention.value_norms`` gives."""
    weights, value_norms = np.asarray(weights, dtype=np.float64), np.asarray(value_norms, dtype=np.float64)
    product = weights * value_norms[..., None, :]
    return _row_shares(product)


def _row_shares(product: np.ndarray) -> np.ndarray:
    sums = product.sum(axis=-1, keepdims=True)
    return np.divide(product, sums, out=np.zeros_like(product), where=sums > 0)


# --------------------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------------------


def _count(name: str, values, *, what: str) -> int:
    """The length of a list of 1 to MAX_SENTENCES items (one per sentence), read without converting it."""
    if isinstance(values, str | bytes) or not isinstance(values, list | tuple) and not hasattr(values, "shape"):
        raise TypeError(f"{name} must be a list with one entry per sentence ({what}), got {type(values).__name__}"
                        f" {values!r:.60}")
    count = len(values)
    if not 1 <= count <= MAX_SENTENCES:
        raise ValueError(f"{name} must hold 1 to {MAX_SENTENCES} {what}, got {count}: one menu entry each, and "
                         "every map is saved into the page")
    return count


def _sentences(sentences) -> list[str]:
    _count("sentences", sentences, what="sentences")
    checked = []
    for s, value in enumerate(sentences):
        try:
            checked.append(_validate.sentence(value, max_tokens=MAX_TOKENS))
        except (TypeError, ValueError) as error:
            raise type(error)(f"sentences[{s}]: {error}") from None
    return checked


def _maps(name: str, value, s: int, n: int, grid: tuple[int, int] | None) -> np.ndarray:
    """One sentence's maps: (layers, heads, n, n) finite non-negative numbers, the grid the same for every one."""

    def check_shape(shape):
        if len(shape) != 4 or shape[-2:] != (n, n):
            raise ValueError(f"{name}[{s}] must have shape (layers, heads, n, n) with n = {n} tokens "
                             f"(tokens[{s}]), got {shape}")
        layers, heads = shape[:2]
        if not 1 <= layers <= MAX_LAYERS or not 1 <= heads <= MAX_HEADS:
            raise ValueError(f"{name}[{s}] has {layers} layers x {heads} heads; the grid shows 1 to {MAX_LAYERS} "
                             f"layers and 1 to {MAX_HEADS} heads")
        if grid is not None and tuple(shape[:2]) != grid:
            raise ValueError(f"{name}[{s}] has {shape[0]} layers x {shape[1]} heads, but {name}[0] has "
                             f"{grid[0]} x {grid[1]}: every sentence goes through the same model")

    array = _validate.as_numpy(f"{name}[{s}]", value, check_shape=check_shape)
    if (array < 0).any():
        raise ValueError(f"{name}[{s}] must be non-negative, got {array.min():.4g}")
    return array


def _attention_rows(name: str, weights: np.ndarray) -> None:
    """Each row sums to 1 -- within the rounding of maps saved to ``DECIMALS`` decimals, so that a view's own
    stored maps can be given back to the constructor."""
    tolerance = 1e-4 + weights.shape[-1] * 0.5 * 10.0 ** -DECIMALS
    sums = weights.sum(axis=-1)
    bad = np.abs(sums - 1) > tolerance
    if bad.any():
        raise ValueError(f"{name} must be attention weights (non-negative, each row summing to 1), got a row "
                         f"summing to {sums[bad].flat[0]:.6g}")


def _selection(layer, head, grid: tuple[int, int]) -> tuple[int, int]:
    """(layer, head) of the opened head, or (NONE, NONE); give both or neither."""
    if layer is None and head is None:
        return NONE, NONE
    if layer is None or head is None:
        raise ValueError(f"give both layer and head to open a head (or neither), got layer={layer!r}, head={head!r}")
    return (_validate.index("layer", layer, grid[0], what="layers"),
            _validate.index("head", head, grid[1], what="heads"))


# --------------------------------------------------------------------------------------------------------------
# The figure
# --------------------------------------------------------------------------------------------------------------


class ModelView(Figure):
    """All layers x heads of a model as small heatmaps, for a few sentences; click a head to open it.

    ``ModelView.from_model(model, tokenizer, sentences)`` runs an attnlib ``TransformerEncoder`` (e.g.
    ``attnlib.pretrained.load("all-MiniLM-L6-v2")``); ``ModelView(tokens, weights, norm_weights)`` draws given
    maps: ``tokens`` one list of labels per sentence, ``weights`` one (layers, heads, n, n) array of attention
    weights per sentence (rows summing to 1), ``norm_weights`` the same shape, weight x ||transformed value||
    at any scale (each row is divided by its sum here). Options: ``sentences`` (the menu's texts), ``sentence``
    (the index shown), ``mode`` ("weights" or "norm"), ``layer`` and ``head`` (the head opened, both or
    neither), ``title``. Stored values are rounded to 4 decimals.
    """

    _esm = esm("model_view.js")

    sentences = traitlets.List(traitlets.Unicode()).tag(sync=True)  # the menu's texts, one per sentence
    tokens = traitlets.List(traitlets.List(traitlets.Unicode())).tag(sync=True)  # per sentence, n labels
    weights = traitlets.List().tag(sync=True)  # per sentence, (layers, heads, n, n) attention weights
    norm_weights = traitlets.List().tag(sync=True)  # the same shape: weight x ||value||, rows summing to 1
    sentence = traitlets.Int(0).tag(sync=True)  # index of the sentence on screen
    mode = traitlets.Unicode("weights").tag(sync=True)  # "weights" or "norm"
    layer = traitlets.Int(NONE).tag(sync=True)  # the opened head's layer, or -1
    head = traitlets.Int(NONE).tag(sync=True)  # the opened head, or -1
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, tokens, weights, norm_weights, *, sentences=None, sentence: int = 0, mode: str = "weights",
                 layer: int | None = None, head: int | None = None, title: str = "", **kwargs):
        super().__init__(**kwargs)
        data = self._data(tokens, weights, norm_weights, sentences)
        grid = (len(data["weights"][0]), len(data["weights"][0][0]))
        layer, head = _selection(layer, head, grid)
        if not isinstance(title, str):
            raise TypeError(f"title must be a str, got {type(title).__name__}")
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.sentence, self.mode, self.layer, self.head, self.title = sentence, mode, layer, head, title

    @classmethod
    def from_weights(cls, tokens_per_sentence, weights, norm_weights, **options) -> ModelView:
        """The same as ``ModelView(tokens_per_sentence, weights, norm_weights, **options)``."""
        return cls(tokens_per_sentence, weights, norm_weights, **options)

    @staticmethod
    def _data(tokens, weights, norm_weights, sentences) -> dict:
        n_sentences = _count("tokens", tokens, what="token lists")
        tokens = [_validate.tokens(f"tokens[{s}]", labels, max_tokens=MAX_TOKENS) for s, labels in enumerate(tokens)]
        for name, value in (("weights", weights), ("norm_weights", norm_weights)):
            if _count(name, value, what="arrays") != n_sentences:
                raise ValueError(f"{name} must hold one (layers, heads, n, n) array per sentence: {len(value)} "
                                 f"for {n_sentences} token lists")
        if sentences is None:
            sentences = [" ".join(labels) for labels in tokens]
        else:
            sentences = _sentences(sentences)
            if len(sentences) != n_sentences:
                raise ValueError(f"sentences must name each of the {n_sentences} token lists, got {len(sentences)}")
        stored = {"weights": [], "norm_weights": []}
        grid = None
        for s, labels in enumerate(tokens):
            alpha = _maps("weights", weights[s], s, len(labels), grid)
            grid = alpha.shape[:2]
            _attention_rows(f"weights[{s}]", alpha)
            shares = _row_shares(_maps("norm_weights", norm_weights[s], s, len(labels), grid))
            stored["weights"].append(to_json_array(alpha, DECIMALS))
            stored["norm_weights"].append(to_json_array(shares, DECIMALS))
        return {"tokens": tokens, "sentences": sentences, **stored}

    # --- from an attnlib encoder ------------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model, tokenizer, sentences, *, title: str = "", **options) -> ModelView:
        """Run an attnlib ``TransformerEncoder`` (NumPy or Torch twin) on each sentence alone and keep, per layer
        and head, its attention weights (``model.last_weights``) and weight x ||transformed value||.

        ``tokenizer(list_of_sentences)`` must return ``(ids, key_mask)`` and ``tokenizer.tokens(...)`` the labels
        (as ``attnlib.pretrained.load("all-MiniLM-L6-v2")``'s tokenizer does). ``sentences``: 1 to 8 strings of at
        most 40 tokens each ([CLS] and [SEP] included). ``options`` go to the constructor (``sentence``, ``mode``,
        ``layer``, ``head``)."""
        _check_encoder(model)
        if not callable(tokenizer) or not callable(getattr(tokenizer, "tokens", None)):
            raise TypeError(f"tokenizer must be callable and have tokens() (e.g. the tokenizer of "
                            f"attnlib.pretrained.load('all-MiniLM-L6-v2')), got {type(tokenizer).__name__}")
        sentences = _sentences(sentences)
        labels, ids = [], []
        for s, text in enumerate(sentences):  # every limit is checked before the model runs
            pieces = tokenizer.tokens([text])[0]
            if len(pieces) > MAX_TOKENS:
                raise ValueError(f"sentences[{s}] has {len(pieces)} tokens ([CLS] and [SEP] included); this figure "
                                 f"draws at most {MAX_TOKENS} per sentence: {text!r:.80}")
            if len(pieces) > model.max_len:
                raise ValueError(f"sentences[{s}] has {len(pieces)} tokens, more than model.max_len = {model.max_len}")
            labels.append(_validate.tokens(f"the tokens of sentences[{s}]", list(pieces), max_tokens=MAX_TOKENS))
            sentence_ids, key_mask = tokenizer([text])
            if _models.to_numpy(key_mask).shape != (1, len(pieces)) or not np.all(_models.to_numpy(key_mask)):
                raise ValueError(f"tokenizer gave ids that do not match its tokens for sentences[{s}]")
            ids.append(np.asarray(_models.to_numpy(sentence_ids)[0], dtype=np.int64))
        weights, norm_weights = zip(*(encoder_maps(model, sentence_ids) for sentence_ids in ids), strict=True)
        return cls(labels, list(weights), list(norm_weights), sentences=sentences, title=title, **options)

    # --- what the reader picked -------------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads): the rows and columns of the grid."""
        return len(self.weights[0]), len(self.weights[0][0])

    def shown_maps(self) -> np.ndarray:
        """The maps on screen now: (layers, heads, n, n) for the chosen sentence and mode."""
        return np.asarray((self.weights if self.mode == "weights" else self.norm_weights)[self.sentence])

    def opened_map(self) -> np.ndarray | None:
        """The (n, n) map of the opened head, or None when no head is opened."""
        if self.layer == NONE or self.head == NONE:
            return None
        return self.shown_maps()[self.layer, self.head]

    @traitlets.validate("sentence")
    def _check_sentence(self, proposal):
        return _validate.index("sentence", proposal["value"], len(self.tokens), what="sentences")

    @traitlets.validate("mode")
    def _check_mode(self, proposal):
        if proposal["value"] not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {proposal['value']!r:.60}")
        return proposal["value"]

    @traitlets.validate("layer", "head")
    def _check_selection(self, proposal):
        name, value = proposal["trait"].name, proposal["value"]
        if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value == NONE:
            return NONE
        size = self.shape[0 if name == "layer" else 1]
        return _validate.index(name, value, size, what=f"{name}s (or -1 for none opened)")


def _check_encoder(model) -> None:
    missing = [name for name in ("blocks", "token_embedding", "position_embedding", "token_type_embedding",
                                 "embedding_norm", "max_len") if not hasattr(model, name)]
    if missing:
        raise TypeError(f"model must be an attnlib TransformerEncoder (attnlib.numpy or attnlib.torch, e.g. from "
                        f"attnlib.pretrained.load('all-MiniLM-L6-v2')), got {type(model).__name__} without "
                        f"{missing}")
    n_layers, n_heads = _models.layers_and_heads(model)
    if n_layers > MAX_LAYERS or n_heads > MAX_HEADS:
        raise ValueError(f"model has {n_layers} layers x {n_heads} heads; the grid shows at most {MAX_LAYERS} "
                         f"layers and {MAX_HEADS} heads")


def encoder_maps(model, ids) -> tuple[np.ndarray, np.ndarray]:
    """(weights, norm_weights) of one sentence ``ids`` (1-D, every token real) through an attnlib
    ``TransformerEncoder``, each (layers, heads, n, n), float64.

    The weights are ``model.last_weights`` after ``model(ids[None])``. For the transformed values, the encoder's
    steps are replayed block by block with the blocks' own calls, to read what each attention layer reads (the
    block's input, or its ``norm1`` of it when pre-LN); the replay's weights must equal the model's, which checks
    that the replay is the model."""
    ids = np.asarray(ids, dtype=np.int64)
    n = len(ids)
    if _models.is_torch(model):
        import torch

        with torch.no_grad(), _models.one_torch_thread():
            tensor = torch.as_tensor(ids)[None].to(model.token_embedding.device)
            model(tensor)
            weights = np.stack([_models.to_numpy(w)[0] for w in model.last_weights])
            x = model.token_embedding[tensor] + model.position_embedding[:n] + model.token_type_embedding[0]
            x = model.embedding_norm(x)
            norms, replayed = _replay(model, x)
    else:
        model(ids[None])
        weights = np.stack([_models.to_numpy(w)[0] for w in model.last_weights])
        x = model.token_embedding[ids[None]] + model.position_embedding[:n] + model.token_type_embedding[0]
        norms, replayed = _replay(model, model.embedding_norm(x))
    if not np.allclose(replayed, weights, rtol=0, atol=1e-5):
        raise RuntimeError("replaying the encoder block by block did not reproduce model.last_weights "
                           f"(largest difference {np.abs(replayed - weights).max():.3g}): is this an attnlib "
                           "TransformerEncoder?")
    return weights, norm_weighted(weights, norms)


def _replay(model, x) -> tuple[np.ndarray, np.ndarray]:
    """(||f_h(x_j)|| per layer (layers, H, n), the weights per layer (layers, H, n, n)) for one sentence x (1, n, d)."""
    norms, weights = [], []
    for block in model.blocks:
        read = block.norm1(x) if block.norm_first else x
        norms.append(_models.to_numpy(block.attention.value_norms(read))[0])
        x = block(x)
        weights.append(_models.to_numpy(block.last_weights)[0])
    return np.stack(norms), np.stack(weights)
