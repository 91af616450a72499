"""The attention explorer: where does each token look?

Python computes the attention weights of every layer and head, with the causal mask and without it, on the
same input; the browser draws them as a heatmap (queries down the side, keys along the top), lets the reader
hover a query row, pick a layer and a head (or all heads side by side) and flip between causal and
bidirectional attention. All of that works on the static site, because every map it can show is in the state.
"""

from __future__ import annotations

import numpy as np
import traitlets

from .. import _checks
from . import _models, _validate
from ._base import Figure, esm, to_json_array

MAX_TOKENS = 64  # beyond this a label gets fewer than ~8 pixels and the heatmap stops being readable
MAX_TEMPERATURES = 9  # one button each
MAX_VALUE_DIM = 32  # one bar per column of the output
MAX_LAYERS = 48  # one entry each in the layer menu
MAX_HEADS = 32  # drawn side by side as small multiples when head=ALL_HEADS
MAX_FRESH_D_MODEL = 128  # the untrained model from_sentence builds: small enough to build in milliseconds
MAX_FRESH_LAYERS = 12
ALL_HEADS = -1  # ``head`` value that shows every head of the layer as small multiples
NO_QUERY = -1  # ``query`` value when no query row is pinned


def _labels(tokens, query_labels, key_labels) -> tuple[list[str], list[str], str, str]:
    """(query labels, key labels) and the names to quote in error messages: one token list for a sentence
    attending to itself, or separate labels when the queries and keys are different things."""
    if tokens is not None:
        if query_labels is not None or key_labels is not None:
            raise ValueError("give tokens (queries and keys are the same tokens) or query_labels and key_labels, "
                             "not both")
        tokens = _validate.tokens("tokens", tokens, max_tokens=MAX_TOKENS)
        return tokens, tokens, "tokens", "tokens"
    if query_labels is None or key_labels is None:
        raise ValueError("give tokens (queries and keys are the same tokens), or both query_labels and key_labels")
    return (_validate.tokens("query_labels", query_labels, max_tokens=MAX_TOKENS),
            _validate.tokens("key_labels", key_labels, max_tokens=MAX_TOKENS), "query_labels", "key_labels")


def _temperatures(temperatures) -> list[float] | None:
    if temperatures is None:
        return None
    if isinstance(temperatures, str | bytes) or not hasattr(temperatures, "__len__"):
        raise TypeError(f"temperatures must be a list of positive numbers, got {temperatures!r:.100}")
    if not 1 <= len(temperatures) <= MAX_TEMPERATURES:  # counted before any value is read
        raise ValueError(f"temperatures must hold 1 to {MAX_TEMPERATURES} values (one button each), "
                         f"got {len(temperatures)}")
    values = [_checks.positive_float("temperatures", value) for value in temperatures]
    if len(set(values)) != len(values):
        raise ValueError(f"temperatures must be distinct, got {values}")
    return values


def _shape_5d(shape: tuple, lead: int) -> tuple:
    """Insert axes of length 1 after the first ``lead`` axes (1 with a temperature axis, else 0) up to
    (temperatures, layers, heads, n_q, last)."""
    return shape[:lead] + (1,) * (5 - len(shape)) + shape[lead:]


def _maps_fit(name: str, n_temperatures: int, n_layers: int, n_heads: int, n_q: int, n_k: int) -> None:
    """Refuse maps too many for one figure by their shape, before they are converted or computed; ``name`` is
    the argument they come from."""
    for what, size, limit in (("layers", n_layers, MAX_LAYERS), ("heads", n_heads, MAX_HEADS)):
        if size > limit:
            raise ValueError(f"{name} gives maps of {size} {what}; this figure shows at most {limit}")
    _validate.fits(f"the maps of {name}", (n_temperatures, n_layers, n_heads, n_q, n_k))


def _weights(name: str, weights, n_q: int, n_k: int, names: tuple[str, str],
             n_temperatures: int | None) -> np.ndarray:
    """Weights -> (temperatures, layers, heads, n_q, n_k), each row summing to 1 (or 0 for a fully masked row).

    Without temperatures the maps are shaped (n_q, n_k), (heads, n_q, n_k) or (layers, heads, n_q, n_k) and get
    a temperature axis of length 1; with them, the first axis holds one such map per temperature."""
    lead = 0 if n_temperatures is None else 1  # the temperature axis, when the caller gives one

    def check_shape(shape):
        shapes = "(n_q, n_k), (heads, n_q, n_k) or (layers, heads, n_q, n_k)"
        if lead:
            shapes = f"(temperatures, ...) with {n_temperatures} temperatures first, then {shapes}"
        if len(shape) not in range(2 + lead, 5 + lead) or (lead and shape[0] != n_temperatures):
            raise ValueError(f"{name} must have shape {shapes}, got {shape}")
        if shape[-2:] != (n_q, n_k):
            query_name, key_name = names
            counts = (f"n = {n_q} tokens" if query_name == key_name
                      else f"n_q = {n_q} labels in {query_name} and n_k = {n_k} in {key_name}")
            raise ValueError(f"{name} must have shape (..., n_q, n_k) = (..., {n_q}, {n_k}) for {counts}, "
                             f"got {shape}")
        _maps_fit(name, *_shape_5d(shape, lead))

    weights = _validate.as_numpy(name, weights, check_shape=check_shape)
    weights = weights.reshape(_shape_5d(weights.shape, lead))  # (temperatures, layers, heads, n_q, n_k)
    _validate.attention_weights(name, weights)
    return weights


def _outputs(name: str, outputs, weights: np.ndarray, weights_name: str, lead: int) -> np.ndarray:
    """The weighted sums for every map of ``weights`` (temperatures, layers, heads, n_q, n_k), given with the
    same leading axes as the weights, d_v in place of n_k -> (temperatures, layers, heads, n_q, d_v)."""

    def check_shape(shape):
        if len(shape) not in range(2 + lead, 6):
            raise ValueError(f"{name} must have shape (..., n_q, d_v), like {weights_name} with d_v in place of "
                             f"n_k, got {shape}")
        if _shape_5d(shape, lead)[:-1] != weights.shape[:-1]:
            raise ValueError(f"{name} must have one row per query row of {weights_name}: shape (..., n_q, d_v) "
                             f"with (temperatures, layers, heads, n_q) = {weights.shape[:-1]}, got {shape}")
        if shape[-1] > MAX_VALUE_DIM:
            raise ValueError(f"{name} has d_v = {shape[-1]} columns; at most {MAX_VALUE_DIM} can be drawn")

    outputs = _validate.as_numpy(name, outputs, check_shape=check_shape)
    return outputs.reshape(_shape_5d(outputs.shape, lead))  # (temperatures, layers, heads, n_q, d_v)


class AttentionExplorer(Figure):
    """Attention weights as a heatmap: queries down the side, keys along the top.

    ``AttentionExplorer(tokens, weights, causal_weights=None)`` takes plain data for a sequence attending to
    itself: ``weights`` without a mask and ``causal_weights`` with the causal mask, for the same input (give one
    or both; with both, the figure can flip between them). Each is shaped (n, n), (heads, n, n) or
    (layers, heads, n, n) for n tokens. When the queries and keys are different things (notes looking up books),
    give ``query_labels`` (n_q) and ``key_labels`` (n_k) instead of ``tokens``, and maps shaped (..., n_q, n_k).

    Optional, for a figure that shows what attention returns: ``outputs`` (and ``causal_outputs``), the
    weighted sums of the values for every map, shaped like the weights with d_v in place of n_k, with
    ``value_labels`` naming the d_v columns; and ``temperatures``, when the maps were computed at several
    temperatures (then the weights and outputs have one leading entry per temperature, and ``temperature``
    picks the one shown first). ``from_qkv`` computes all of that with attnlib.

    ``head=ALL_HEADS`` (-1) shows all heads of the layer as small multiples; ``causal`` picks the map shown first;
    ``query`` pins a query row (the reader can click another). See also ``from_model`` (an attnlib
    TransformerLM on given token ids) and ``from_sentence`` (a sentence that can be changed later:
    ``explorer.sentence = "..."`` recomputes in Python).
    """

    _esm = esm("attention_explorer.js")
    _input_names = ("sentence", "seed")

    query_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    key_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    # The maps at each temperature: (temperatures, layers, heads, n_q, n_k) without a mask, or [] if not given.
    weights = traitlets.List().tag(sync=True)
    causal_weights = traitlets.List().tag(sync=True)  # the same with the causal mask, or []
    outputs = traitlets.List().tag(sync=True)  # (temperatures, layers, heads, n_q, d_v) for weights, or []
    causal_outputs = traitlets.List().tag(sync=True)  # the same for causal_weights, or []
    value_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # names of the d_v output columns
    temperatures = traitlets.List(traitlets.Float(), [1.0]).tag(sync=True)  # [1.0]: the maps as given
    temperature = traitlets.Float(1.0).tag(sync=True)
    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    causal = traitlets.Bool(False).tag(sync=True)
    query = traitlets.Int(NO_QUERY).tag(sync=True)  # the pinned query row, or -1
    title = traitlets.Unicode("").tag(sync=True)
    sentence = traitlets.Unicode("").tag(sync=True)  # input, when built by from_sentence
    seed = traitlets.Int(0).tag(sync=True)  # input, when built by from_sentence with a fresh model

    def __init__(self, tokens=None, weights=None, *, causal_weights=None, query_labels=None, key_labels=None,
                 outputs=None, causal_outputs=None, value_labels=None, temperatures=None, temperature=None,
                 layer: int = 0, head: int = 0, causal: bool | None = None, query: int = NO_QUERY, title: str = "",
                 **kwargs):
        super().__init__(**kwargs)
        self._source = None  # (model, tokenizer, model_options) for from_sentence
        data = self._data(tokens, weights, causal_weights, query_labels=query_labels, key_labels=key_labels,
                          outputs=outputs, causal_outputs=causal_outputs, value_labels=value_labels,
                          temperatures=temperatures)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            # by default the unmasked map, unless only the causal one was given
            self.causal = not data["weights"] if causal is None else _checks.flag("causal", causal)
            if temperature is None:
                temperature = 1.0 if 1.0 in self.temperatures else self.temperatures[0]
            self.temperature = temperature
            self.layer = layer
            self.head = head
            self.query = query
            self.title = str(title)

    @staticmethod
    def _data(tokens, weights, causal_weights, *, query_labels=None, key_labels=None, outputs=None,
              causal_outputs=None, value_labels=None, temperatures=None) -> dict:
        query_labels, key_labels, *names = _labels(tokens, query_labels, key_labels)
        temperatures = _temperatures(temperatures)
        n_temperatures = None if temperatures is None else len(temperatures)
        if weights is None and causal_weights is None:
            raise ValueError("give weights (no mask), causal_weights (causal mask), or both")
        maps = {name: None if value is None else _weights(name, value, len(query_labels), len(key_labels),
                                                           tuple(names), n_temperatures)
                for name, value in (("weights", weights), ("causal_weights", causal_weights))}
        if maps["weights"] is not None and maps["causal_weights"] is not None:
            if maps["weights"].shape != maps["causal_weights"].shape:
                raise ValueError(
                    f"weights and causal_weights must have the same shape, got {maps['weights'].shape} "
                    f"and {maps['causal_weights'].shape}"
                )
        sums = {}
        for name, value, weights_name in (("outputs", outputs, "weights"),
                                          ("causal_outputs", causal_outputs, "causal_weights")):
            if value is None:
                continue
            if maps[weights_name] is None:
                raise ValueError(f"{name} needs {weights_name}: they are the weighted sums for those maps")
            sums[name] = _outputs(name, value, maps[weights_name], weights_name, lead=int(temperatures is not None))
        d_values = {array.shape[-1] for array in sums.values()}
        if len(d_values) > 1:
            raise ValueError(f"outputs and causal_outputs must have the same d_v, got {sorted(d_values)}")
        if value_labels is not None:
            if not sums:
                raise ValueError("value_labels name the columns of outputs; give outputs too")
            value_labels = _validate.tokens("value_labels", value_labels, max_tokens=MAX_VALUE_DIM)
            if len(value_labels) not in d_values:
                raise ValueError(f"value_labels must have one label per output column (d_v = {d_values.pop()}), "
                                 f"got {len(value_labels)}")
        elif sums:
            value_labels = [f"output[{column}]" for column in range(d_values.pop())]
        return {"query_labels": query_labels, "key_labels": key_labels,
                **{name: [] if value is None else to_json_array(value) for name, value in maps.items()},
                **{name: to_json_array(sums[name]) if name in sums else [] for name in ("outputs", "causal_outputs")},
                "value_labels": value_labels or [], "temperatures": temperatures or [1.0]}

    # --- what the reader can pick -------------------------------------------------------------------------

    @property
    def tokens(self) -> list[str]:
        """The labels of a sequence attending to itself (queries and keys are the same tokens)."""
        if self.query_labels != self.key_labels:
            raise AttributeError("this explorer's queries and keys have different labels: read query_labels "
                                 "and key_labels")
        return self.query_labels

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(layers, heads, n_q, n_k) of the stored maps (at each temperature)."""
        maps = self.weights or self.causal_weights
        return (len(maps[0]), len(maps[0][0]), len(self.query_labels), len(self.key_labels))

    @traitlets.validate("layer")
    def _check_layer(self, proposal):
        return _validate.index("layer", proposal["value"], self.shape[0], what="layers")

    @traitlets.validate("head")
    def _check_head(self, proposal):
        if proposal["value"] == ALL_HEADS:
            return ALL_HEADS
        return _validate.index("head", proposal["value"], self.shape[1], what="heads (or -1 for all heads)")

    @traitlets.validate("query")
    def _check_query(self, proposal):
        if proposal["value"] == NO_QUERY:
            return NO_QUERY
        return _validate.index("query", proposal["value"], len(self.query_labels), what="query rows (or -1 for none)")

    @traitlets.validate("temperature")
    def _check_temperature(self, proposal):
        value = _checks.positive_float("temperature", proposal["value"])
        if value not in self.temperatures:
            raise ValueError(f"temperature must be one of the temperatures computed, {self.temperatures}, got {value}")
        return value

    @traitlets.validate("causal")
    def _check_causal(self, proposal):
        wanted = "causal_weights" if proposal["value"] else "weights"
        if self.query_labels and not getattr(self, wanted):
            raise ValueError(f"causal={proposal['value']} needs {wanted}, which this explorer was not given")
        return proposal["value"]

    def _shown(self, maps) -> np.ndarray:
        maps = np.asarray(maps)[self.temperatures.index(self.temperature), self.layer]  # (heads, n_q, ...)
        return maps if self.head == ALL_HEADS else maps[self.head]

    def shown_weights(self) -> np.ndarray:
        """The map(s) on screen now: (n_q, n_k) for one head, (heads, n_q, n_k) for all heads."""
        return self._shown(self.causal_weights if self.causal else self.weights)

    def shown_outputs(self) -> np.ndarray:
        """The weighted sums on screen now: (n_q, d_v) for one head, (heads, n_q, d_v) for all heads."""
        outputs = self.causal_outputs if self.causal else self.outputs
        if not outputs:
            raise ValueError("this explorer was built without outputs")
        return self._shown(outputs)

    # --- constructors from attnlib models -------------------------------------------------------------------

    @classmethod
    def from_model(cls, model, tokens, ids, **options) -> AttentionExplorer:
        """Run an attnlib ``TransformerLM`` (NumPy or Torch) on ``ids`` twice, with and without the causal mask,
        and show every layer and head. ``tokens`` are the labels (one per id); ``options`` go to the
        constructor (``layer``, ``head``, ``causal``, ``title``); ``causal`` defaults to the model's own."""
        tokens = _validate.tokens("tokens", tokens, max_tokens=MAX_TOKENS)
        ids = _validate.token_ids("ids", ids, model, max_tokens=MAX_TOKENS)
        if len(ids) != len(tokens):
            raise ValueError(f"ids must be 1-D with one id per token ({len(tokens)} tokens), got shape {ids.shape}")
        _maps_fit("model", 1, *_models.layers_and_heads(model), len(ids), len(ids))
        maps = _models.attention_maps(model, ids)
        options.setdefault("causal", bool(model.causal))
        return cls(tokens, maps[False], causal_weights=maps[True], **options)

    @classmethod
    def from_qkv(cls, q, k, v, *, query_labels, key_labels, value_labels=None, temperatures=(1.0,),
                 scale=None, **options) -> AttentionExplorer:
        """Run ``attnlib.numpy.attention`` on q (n_q, d_k) or (heads, n_q, d_k), k (…, n_k, d_k) and
        v (…, n_k, d_v) once per temperature T, with the scores multiplied by ``scale / T`` (``scale`` defaults
        to 1/sqrt(d_k)), and keep the weights and the outputs (the weighted sums of the values). The reader
        picks the temperature and the query row in the figure; ``options`` go to the constructor
        (``temperature``, ``query``, ``head``, ``title``)."""
        from ..numpy import attention

        labels = {name: _validate.tokens(name, value, max_tokens=MAX_TOKENS)
                  for name, value in (("query_labels", query_labels), ("key_labels", key_labels))}
        temperatures = _temperatures((1.0,) if temperatures is None else temperatures)
        scale = _checks.scale(scale)

        def rows_labelled(array_name, labels_name, what):
            def check_shape(shape):
                if len(shape) not in (2, 3):
                    raise ValueError(f"{array_name} must have shape (n, d) or (heads, n, d), got {shape}")
                if array_name == "q":  # the heads, queries and keys of the maps to come, before computing them
                    _maps_fit("q", len(temperatures), 1, shape[0] if len(shape) == 3 else 1, shape[-2],
                              len(labels["key_labels"]))
                if labels_name and len(labels[labels_name]) != shape[-2]:
                    raise ValueError(f"{labels_name} must have one label per {what}: {len(labels[labels_name])} "
                                     f"labels for {array_name} of shape {shape}")
                if array_name == "v" and shape[-1] > MAX_VALUE_DIM:
                    raise ValueError(f"v has d_v = {shape[-1]} columns; at most {MAX_VALUE_DIM} can be drawn")
            return check_shape

        q = _validate.as_numpy("q", q, check_shape=rows_labelled("q", "query_labels", "query (row of q)"))
        k = _validate.as_numpy("k", k, check_shape=rows_labelled("k", "key_labels", "key (row of k)"))
        v = _validate.as_numpy("v", v, check_shape=rows_labelled("v", None, ""))
        base = 1.0 / np.sqrt(q.shape[-1]) if scale is None else scale
        results = [attention(q, k, v, scale=base / temperature) for temperature in temperatures]
        outputs = np.stack([output for output, _ in results])  # (temperatures, [heads,] n_q, d_v)
        weights = np.stack([weights for _, weights in results])  # (temperatures, [heads,] n_q, n_k)
        return cls(weights=weights, outputs=outputs, query_labels=labels["query_labels"],
                   key_labels=labels["key_labels"], value_labels=value_labels, temperatures=temperatures, **options)

    @classmethod
    def from_sentence(cls, sentence: str, *, model=None, tokenizer=None, seed: int = 0, d_model: int = 32,
                      n_heads: int = 4, n_layers: int = 2, **options) -> AttentionExplorer:
        """A sentence through a model; ``explorer.sentence = ...`` (and ``.seed``) recompute later.

        With ``model`` and ``tokenizer`` (e.g. from ``attnlib.pretrained.load``), the tokenizer encodes the
        sentence and that model runs. Without them, a fresh, untrained ``attnlib.numpy.TransformerLM`` of the
        given size (d_model at most 128, at most 12 layers) is initialised from ``seed`` (word ids are a hash of
        the word, so the same word always gets the same embedding): its patterns are what random weights give,
        not learned ones.
        """
        if (model is None) != (tokenizer is None):
            raise ValueError("give both model and tokenizer, or neither (for a fresh model built from seed)")
        if model is None:
            options_of_model = {"d_model": _validate.at_most("d_model", d_model, MAX_FRESH_D_MODEL,
                                                             why="the width of the fresh model"),
                                "n_heads": _validate.at_most("n_heads", n_heads, MAX_HEADS,
                                                             why="one small multiple per head"),
                                "n_layers": _validate.at_most("n_layers", n_layers, MAX_FRESH_LAYERS,
                                                              why="the depth of the fresh model")}
            _checks.divisible(options_of_model["d_model"], options_of_model["n_heads"])
        else:
            _models.check_language_model(model)
            missing = [name for name in ("tokenize", "encode") if not callable(getattr(tokenizer, name, None))]
            if missing:
                raise TypeError(f"tokenizer must have tokenize() and encode() (e.g. attnlib.pretrained's "
                                f"WordTokenizer), got {type(tokenizer).__name__} without {missing}")
            options_of_model = {}
        source = (model, tokenizer, options_of_model)
        tokens, maps = cls._sentence_maps(source, sentence, seed)
        explorer = cls(tokens, maps[False], causal_weights=maps[True], **options)
        explorer.sentence, explorer.seed = sentence, seed  # no source yet, so this does not recompute
        explorer._source = source
        return explorer

    @staticmethod
    def _sentence_maps(source, sentence, seed) -> tuple[list[str], dict[bool, np.ndarray]]:
        """The sentence's tokens and its attention maps, with (True) and without (False) the causal mask."""
        model, tokenizer, options = source
        sentence, seed = _validate.sentence(sentence, max_tokens=MAX_TOKENS), _validate.seed(seed)
        if tokenizer is not None:
            tokens = _validate.tokens("sentence", tokenizer.tokenize(sentence), max_tokens=MAX_TOKENS)
            ids = _validate.token_ids("sentence", tokenizer.encode(sentence), model, max_tokens=MAX_TOKENS)
            if len(ids) != len(tokens):
                raise ValueError(f"tokenizer gave {len(tokens)} tokens but {len(ids)} ids for {sentence!r}")
            _maps_fit("model", 1, *_models.layers_and_heads(model), len(ids), len(ids))
        else:
            from ..numpy import TransformerLM

            tokens = _validate.tokens("sentence", _models.split_words(sentence), max_tokens=MAX_TOKENS)
            _maps_fit("n_layers and n_heads", 1, options["n_layers"], options["n_heads"], len(tokens), len(tokens))
            vocab_size = 1024
            model = TransformerLM(vocab_size, options["d_model"], options["n_heads"], 4 * options["d_model"],
                                  options["n_layers"], MAX_TOKENS, seed=seed)
            ids = np.asarray(_models.hashed_ids(tokens, vocab_size))
        return tokens, _models.attention_maps(model, ids)

    def _recompute(self):
        if self._source is None:
            return None
        tokens, maps = self._sentence_maps(self._source, self.sentence, self.seed)
        return {**self._data(tokens, maps[False], maps[True]), "query": NO_QUERY}  # old row numbers mean nothing
