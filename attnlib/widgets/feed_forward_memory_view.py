"""The feed-forward network as a key-value memory: which slots fire for an input, and what comes out.

With k_j column j of w_1 (slot j's key) and v_j row j of w_2 (its value), an FFN computes
FFN(x) = sum_j act(x . k_j + b_1j) v_j + b_2. Python runs an attnlib ``FeedForward`` (NumPy or Torch) on every
input the reader can pick, once with its activation and once without it (the two linear maps then collapse
into one), and keeps each slot's pre-activation x . k_j + b_1j, its gate act(...), the scaled values
gate_j v_j and the output. Optionally it reads the output against a few labelled vectors (words) by cosine
similarity. The browser lets the reader pick the input and switch the activation off; nothing is computed there.
"""

from __future__ import annotations

import numpy as np
import traitlets

from .. import _checks
from ..numpy import FeedForward
from ..numpy.feedforward import ACTIVATION_FUNCTIONS
from . import _models, _validate
from ._base import Figure, esm, to_json_array

MAX_SLOTS = 32  # one row per memory slot (hidden unit)
MAX_INPUTS = 16  # one button per input
MAX_D_MODEL = 128  # one cell per output number in the scaled-value strips
MAX_READOUT = 24  # one bar per readout word


def _is_torch_feed_forward(module) -> bool:
    """An attnlib.torch FeedForward; torch is imported only for a module that is a torch one already."""
    if not _models.is_torch(module):
        return False
    from ..torch import FeedForward as TorchFeedForward

    return isinstance(module, TorchFeedForward)


def _numpy_twin(ffn, *, max_d_ff: int | None = None, max_d_model: int | None = None) -> FeedForward:
    """The float64 attnlib.numpy twin of an attnlib FeedForward (the module itself when it already is one), its
    sizes checked against the limits given before any weight is copied, its weights checked finite."""
    if not (isinstance(ffn, FeedForward) or _is_torch_feed_forward(ffn)):
        raise TypeError(f"ffn must be an attnlib FeedForward (attnlib.numpy or attnlib.torch), got "
                        f"{type(ffn).__name__}")
    if max_d_ff is not None and ffn.d_ff > max_d_ff:
        raise ValueError(f"ffn has d_ff = {ffn.d_ff} slots; at most {max_d_ff} can be drawn (one row each)")
    if max_d_model is not None and ffn.d_model > max_d_model:
        raise ValueError(f"ffn has d_model = {ffn.d_model}; at most {max_d_model} can be drawn")
    twin = ffn if isinstance(ffn, FeedForward) else FeedForward.from_twin(ffn, dtype=np.float64)
    for name in ("w_1", "b_1", "w_2", "b_2") if twin.bias else ("w_1", "w_2"):
        _checks.floating_array(f"ffn.{name}", getattr(twin, name))
    return twin


def _inputs(inputs, d_model: int, *, max_inputs: int | None = None) -> np.ndarray:
    """(n_inputs, d_model) inputs, their shape checked before they are converted."""

    def check_shape(shape):
        if len(shape) != 2 or shape[1] != d_model:
            raise ValueError(f"inputs must have shape (n_inputs, d_model) = (n_inputs, {d_model}), got {shape}")
        if max_inputs is not None and shape[0] > max_inputs:
            raise ValueError(f"inputs has {shape[0]} rows; at most {max_inputs} inputs can be drawn (one button "
                             "each)")

    return _validate.as_numpy("inputs", inputs, check_shape=check_shape)


def _readout(readout, d_model: int) -> tuple[list[str], np.ndarray]:
    """``{label: vector}`` or ``(labels, vectors)`` -> labels and an (n_words, d_model) array of nonzero vectors."""
    if isinstance(readout, dict):
        labels, vectors = list(readout), list(readout.values())
    elif isinstance(readout, tuple | list) and len(readout) == 2:
        labels, vectors = readout
    else:
        raise TypeError(f"readout must be a dict {{label: vector}} or a pair (labels, vectors), got "
                        f"{type(readout).__name__}")
    labels = _validate.tokens("readout", labels, max_tokens=MAX_READOUT)
    if isinstance(vectors, str | bytes) or not hasattr(vectors, "__len__"):
        raise TypeError(f"readout vectors must be a list of vectors, got {type(vectors).__name__}")
    if len(vectors) != len(labels):
        raise ValueError(f"readout must hold one vector per label, got {len(vectors)} vectors for {len(labels)} labels")
    vectors = list(vectors)
    wrong = [(label, shape) for label, vector in zip(labels, vectors, strict=True)
             if (shape := _validate.shape_of(vector)) != (d_model,)]
    if wrong:
        raise ValueError(f"readout vectors must have shape (d_model,) = ({d_model},), got {wrong[:3]}")
    vectors = np.stack([_validate.as_numpy(f"readout[{label!r}]", vector)
                        for label, vector in zip(labels, vectors, strict=True)])  # (n_words, d_model)
    if (np.linalg.norm(vectors, axis=1) == 0).any():
        raise ValueError("readout vectors must be nonzero (the output is compared with each by cosine similarity)")
    return labels, vectors


def cosine_similarity(outputs: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """(n_inputs, d) x (n_words, d) -> (n_inputs, n_words); 0 for an output that is exactly zero."""
    norms = np.linalg.norm(outputs, axis=1, keepdims=True)  # (n_inputs, 1)
    dots = outputs @ vectors.T  # (n_inputs, n_words)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1) / np.linalg.norm(vectors, axis=1), 0.0)


def memory_reading(ffn, inputs) -> dict[str, np.ndarray]:
    """Every number the figure shows, for ``inputs`` (n_inputs, d_model) through an attnlib FeedForward.

    ``pre_activation`` (n_inputs, d_ff) is x . k_j + b_1j; ``gates`` the activation of it; ``outputs`` the FFN's
    own forward pass; ``contributions`` (n_inputs, d_ff, d_model) is gate_j v_j, so that
    outputs = contributions.sum(1) + b_2. The ``linear_*`` entries are the same without the activation: the
    pre-activations themselves scale the values. An FFN without biases reads as one whose biases are zero."""
    twin = _numpy_twin(ffn)
    x = _inputs(inputs, twin.d_model)
    _validate.fits("contributions", (len(x), twin.d_ff, twin.d_model))
    return _reading(twin, x)


def _reading(twin: FeedForward, x: np.ndarray) -> dict[str, np.ndarray]:
    """memory_reading's computation, on a checked twin and checked inputs, in the twin's dtype."""
    dtype = twin.w_1.dtype
    x = x.astype(dtype, copy=False)
    b_1, b_2 = (twin.b_1, twin.b_2) if twin.bias else (np.zeros(twin.d_ff, dtype), np.zeros(twin.d_model, dtype))
    pre_activation = x @ twin.w_1 + b_1  # (n_inputs, d_ff): how well x matches each key, minus the threshold
    gates = ACTIVATION_FUNCTIONS[twin.activation](pre_activation)  # (n_inputs, d_ff)
    values = twin.w_2  # (d_ff, d_model): row j is slot j's value
    return {
        "pre_activation": pre_activation,
        "gates": gates,
        "contributions": gates[:, :, None] * values[None],  # (n_inputs, d_ff, d_model)
        "outputs": twin(x),  # (n_inputs, d_model), attnlib's forward pass
        "linear_contributions": pre_activation[:, :, None] * values[None],  # (n_inputs, d_ff, d_model)
        "linear_outputs": pre_activation @ values + b_2,  # the two linear maps with nothing between them
        "bias": b_2,
    }


class FeedForwardMemoryView(Figure):
    """An FFN read as a memory: for the input the reader picks, each slot's match x . k_j + b_1j, its gate (does
    it fire?), the values gate_j v_j it adds up, and the output; with the activation switched off, every match
    passes through, negative ones included, and the FFN is one linear map.

    ``FeedForwardMemoryView(ffn, inputs, input_labels=..., slot_labels=None, readout=None)``: ``ffn`` is an
    attnlib ``FeedForward`` (attnlib.numpy or attnlib.torch, at most 32 slots d_ff and d_model at most 128),
    ``inputs`` an (n_inputs, d_model) array with one label each, ``slot_labels`` one label per slot, and
    ``readout`` an optional ``{label: vector}`` (or ``(labels, vectors)``) that the output is compared with by
    cosine similarity, e.g. the word vectors whose sums the inputs are. ``input_index`` and ``activation`` pick
    what is shown first.
    """

    _esm = esm("feed_forward_memory_view.js")

    input_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    slot_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)
    readout_labels = traitlets.List(traitlets.Unicode()).tag(sync=True)  # [] without a readout
    activation_name = traitlets.Unicode("relu").tag(sync=True)
    pre_activation = traitlets.List().tag(sync=True)  # (n_inputs, d_ff)
    bias = traitlets.List().tag(sync=True)  # b_2, (d_model,)
    # {"gates": (n_inputs, d_ff), "contributions": (n_inputs, d_ff, d_model), "outputs": (n_inputs, d_model),
    #  "readout": (n_inputs, n_words) or []}, with the FFN's activation and with none
    with_activation = traitlets.Dict().tag(sync=True)
    without_activation = traitlets.Dict().tag(sync=True)
    input_index = traitlets.Int(0).tag(sync=True)  # the input on screen (the reader picks it)
    activation = traitlets.Bool(True).tag(sync=True)  # False: the activation removed (the reader flips it)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, ffn, inputs, *, input_labels, slot_labels=None, readout=None, input_index: int = 0,
                 activation: bool = True, title: str = "", **kwargs):
        super().__init__(**kwargs)
        data = self._data(ffn, inputs, input_labels, slot_labels, readout)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.input_index = input_index
            self.activation = _checks.flag("activation", activation)
            self.title = str(title)

    @staticmethod
    def _data(ffn, inputs, input_labels, slot_labels, readout) -> dict:
        twin = _numpy_twin(ffn, max_d_ff=MAX_SLOTS, max_d_model=MAX_D_MODEL)
        input_labels = _validate.tokens("input_labels", input_labels, max_tokens=MAX_INPUTS)
        x = _inputs(inputs, twin.d_model, max_inputs=MAX_INPUTS)
        if len(input_labels) != len(x):
            raise ValueError(f"input_labels must have one label per row of inputs: {len(input_labels)} labels for "
                             f"inputs of shape {x.shape}")
        if slot_labels is None:
            slot_labels = [f"slot {j}" for j in range(twin.d_ff)]
        slot_labels = _validate.tokens("slot_labels", slot_labels, max_tokens=MAX_SLOTS)
        if len(slot_labels) != twin.d_ff:
            raise ValueError(f"slot_labels must have one label per slot: d_ff = {twin.d_ff}, got {len(slot_labels)}")
        readout_labels, vectors = ([], None) if readout is None else _readout(readout, twin.d_model)
        reading = _reading(twin, x)

        def mode(prefix: str, gates) -> dict:
            outputs = reading[f"{prefix}outputs"]
            return {"gates": to_json_array(gates), "contributions": to_json_array(reading[f"{prefix}contributions"]),
                    "outputs": to_json_array(outputs),
                    "readout": [] if vectors is None else to_json_array(cosine_similarity(outputs, vectors))}

        return {"input_labels": input_labels, "slot_labels": slot_labels, "readout_labels": readout_labels,
                "activation_name": twin.activation, "pre_activation": to_json_array(reading["pre_activation"]),
                "bias": to_json_array(reading["bias"]),
                # without an activation, the gate is the pre-activation itself
                "with_activation": mode("", reading["gates"]),
                "without_activation": mode("linear_", reading["pre_activation"])}

    @traitlets.validate("input_index")
    def _check_input_index(self, proposal):
        return _validate.index("input_index", proposal["value"], len(self.input_labels), what="inputs")

    def shown(self) -> dict[str, np.ndarray]:
        """What is on screen now, as arrays: pre_activation and gates (d_ff,), contributions (d_ff, d_model),
        output (d_model,) and readout (n_words,) (empty without a readout)."""
        mode = self.with_activation if self.activation else self.without_activation
        i = self.input_index
        return {"pre_activation": np.asarray(self.pre_activation[i]), "gates": np.asarray(mode["gates"][i]),
                "contributions": np.asarray(mode["contributions"][i]), "output": np.asarray(mode["outputs"][i]),
                "readout": np.asarray(mode["readout"][i] if mode["readout"] else [])}
