"""Rotary positions (RoPE) in one plane: a query and a key, each turned by an angle proportional to its position.

RoPE splits a head's d numbers into d/2 pairs and treats each pair as a point in a 2-D plane. At position p the
pair i is rotated by p * theta_i, with theta_i = base^(-2i/d). The score q_m . k_n then depends on the two
positions only through m - n: shift both by the same amount and both arrows turn together, their angle and so
their dot product stay put. Python rotates the vectors with ``attnlib.numpy.positions.apply_rope`` at every
position of a small grid; the browser draws whichever pair of positions the reader picks, with no kernel.
"""

from __future__ import annotations

import numbers

import numpy as np
import traitlets

from .. import _checks
from ..numpy.positions import apply_rope
from . import _validate
from ._base import Figure, esm, to_json_array

MAX_POSITIONS = 64  # one heatmap cell per (query position, key position): 64 x 64 still fits the column
MAX_DIM = 256  # head dimension; only a handful of its planes are drawn, but the head's score uses them all
MAX_PAIRS = 8  # planes the reader can switch between


def _positive_finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} of type {type(value).__name__}")
    value = float(value)
    if not (np.isfinite(value) and value > 1):
        raise ValueError(f"{name} must be a finite number greater than 1 (the angles shrink as base^(-2i/d)), "
                         f"got {value}")
    return value


def plane_indices(d: int, pair: int, *, interleaved: bool) -> tuple[int, int]:
    """The two coordinates of a head vector that rotate together as frequency pair ``pair``.

    Interleaved (the RoFormer paper's layout): coordinates 2i and 2i + 1. Half-split (``interleaved=False``, the
    layout of Llama's and GPT-NeoX's code): coordinates i and i + d/2."""
    return (2 * pair, 2 * pair + 1) if interleaved else (pair, pair + d // 2)


def rope_planes(q, k, *, n_positions: int, base: float, pairs, interleaved: bool) -> dict:
    """Rotate ``q`` and ``k`` (1-D, length d) to every position 0 .. n_positions - 1 with attnlib's ``apply_rope``.

    Returns the rotated pairs ``q_planes``/``k_planes`` (len(pairs), n_positions, 2), each pair's angle per
    position ``frequencies`` (theta_i = base^(-2i/d)), and the whole head's scores q_m . k_n, shaped
    (n_positions, n_positions): query position m along the rows, key position n along the columns."""
    d = q.shape[0]
    positions = np.arange(n_positions)
    rotated_q = apply_rope(np.tile(q, (n_positions, 1)), positions, base=base, interleaved=interleaved)  # (N, d)
    rotated_k = apply_rope(np.tile(k, (n_positions, 1)), positions, base=base, interleaved=interleaved)  # (N, d)
    q_planes, k_planes = [], []
    for pair in pairs:
        first, second = plane_indices(d, pair, interleaved=interleaved)
        q_planes.append(rotated_q[:, [first, second]])  # (N, 2)
        k_planes.append(rotated_k[:, [first, second]])
    return {"q_planes": np.stack(q_planes), "k_planes": np.stack(k_planes),
            "frequencies": [float(base ** (-2 * pair / d)) for pair in pairs],
            "scores": rotated_q @ rotated_k.T}


class RopeView(Figure):
    """One query vector and one key vector under rotary positions, drawn in one of their 2-D planes.

    ``RopeView(q, k)`` with ``q`` and ``k`` 1-D of the same even length d (a head's query and key before RoPE).
    Sliders move the query position m and the key position n over 0 .. ``n_positions`` - 1; "shift both" moves the
    two together. Beside the plane: the score q_m . k_n in that plane and over the whole head, and the head's
    score for every (m, n), whose diagonals each have one colour. ``pairs`` lists the frequency pairs the reader can
    switch between (by default the fastest, one in the middle and the slowest). Changing ``base`` in a live
    kernel rotates again. ``RopeView.random(d, seed)`` draws q and k at random.
    """

    _esm = esm("rope_view.js")
    _input_names = ("base",)

    d = traitlets.Int(2).tag(sync=True)
    n_positions = traitlets.Int(16).tag(sync=True)
    base = traitlets.Float(10000.0).tag(sync=True)
    interleaved = traitlets.Bool(False).tag(sync=True)
    pairs = traitlets.List(traitlets.Int()).tag(sync=True)  # the frequency pairs i on offer
    frequencies = traitlets.List(traitlets.Float()).tag(sync=True)  # theta_i, radians per position, per pair
    q_planes = traitlets.List().tag(sync=True)  # (n_pairs, n_positions, 2): q rotated to each position
    k_planes = traitlets.List().tag(sync=True)  # (n_pairs, n_positions, 2)
    scores = traitlets.List().tag(sync=True)  # (n_positions, n_positions): the whole head's q_m . k_n
    pair = traitlets.Int(0).tag(sync=True)  # index into pairs: the plane on screen
    query_position = traitlets.Int(0).tag(sync=True)
    key_position = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, q, k, *, n_positions: int = 16, base: float = 10000.0, pairs=None, interleaved: bool = False,
                 pair: int = 0, query_position: int | None = None, key_position: int | None = None,
                 title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._ready = False  # setting base below must not recompute before q, k and the pairs are all in place
        q, k = self._vectors(q, k)
        interleaved = _checks.flag("interleaved", interleaved)
        self._q, self._k = q, k
        n_positions = _validate.at_most("n_positions", n_positions, MAX_POSITIONS,
                                        why="one heatmap cell per pair of positions")
        pairs = self._pairs(pairs, q.shape[0])
        data = self._data(q, k, n_positions, base, pairs, interleaved)
        with self.hold_sync():
            for name, value in data.items():
                setattr(self, name, value)
            self.pair = _validate.index("pair", pair, len(pairs), what="planes on offer")
            # By default the query a few positions after the key, as in a sentence being read.
            self.query_position = min(5, n_positions - 1) if query_position is None else query_position
            self.key_position = min(2, n_positions - 1) if key_position is None else key_position
            self.title = str(title)
        self._ready = True

    @staticmethod
    def _vectors(q, k) -> tuple[np.ndarray, np.ndarray]:
        def one_head_vector(name):
            def check_shape(shape):
                if len(shape) != 1:
                    raise ValueError(f"{name} must be 1-D (one head's vector of d numbers), got shape {shape}")
                if shape[0] < 2 or shape[0] % 2:
                    raise ValueError(f"{name} must have an even length d >= 2 (RoPE rotates pairs of numbers), "
                                     f"got d = {shape[0]}")
                if shape[0] > MAX_DIM:
                    raise ValueError(f"{name} has d = {shape[0]}; this figure takes at most {MAX_DIM}")
            return check_shape

        q = _validate.as_numpy("q", q, check_shape=one_head_vector("q"))
        k = _validate.as_numpy("k", k, check_shape=one_head_vector("k"))
        if q.shape != k.shape:
            raise ValueError(f"q and k must have the same length d, got {q.shape[0]} and {k.shape[0]}")
        return q, k

    @staticmethod
    def _pairs(pairs, d: int) -> list[int]:
        if pairs is None:  # fastest, one in the middle, slowest: each distinct
            return sorted({0, d // 4, d // 2 - 1})
        if isinstance(pairs, str | bytes) or not hasattr(pairs, "__len__"):
            raise TypeError(f"pairs must be a list of frequency-pair indices, got {type(pairs).__name__}")
        if not 1 <= len(pairs) <= MAX_PAIRS:
            raise ValueError(f"pairs must hold 1 to {MAX_PAIRS} frequency-pair indices, got {len(pairs)}")
        checked = [_validate.index(f"pairs[{i}]", pair, d // 2, what=f"frequency pairs (d = {d})")
                   for i, pair in enumerate(pairs)]
        if len(set(checked)) != len(checked):
            raise ValueError(f"pairs must not repeat an index, got {checked}")
        return checked

    @staticmethod
    def _data(q, k, n_positions, base, pairs, interleaved) -> dict:
        base = _positive_finite("base", base)
        planes = rope_planes(q, k, n_positions=n_positions, base=base, pairs=pairs, interleaved=interleaved)
        return {"d": int(q.shape[0]), "n_positions": n_positions, "base": base, "interleaved": interleaved,
                "pairs": list(pairs), "frequencies": planes["frequencies"],
                "q_planes": to_json_array(planes["q_planes"]), "k_planes": to_json_array(planes["k_planes"]),
                "scores": to_json_array(planes["scores"])}

    @traitlets.validate("pair")
    def _check_pair(self, proposal):
        return _validate.index("pair", proposal["value"], len(self.pairs), what="planes on offer")

    @traitlets.validate("query_position", "key_position")
    def _check_position(self, proposal):
        return _validate.index(proposal["trait"].name, proposal["value"], self.n_positions, what="positions")

    @classmethod
    def random(cls, d: int = 8, seed: int = 0, **options) -> RopeView:
        """q and k drawn from a standard normal distribution (NumPy generator ``seed``), of length ``d``."""
        d = _validate.at_most("d", d, MAX_DIM, why="the head dimension this figure takes")
        rng = np.random.default_rng(_validate.seed(seed))
        q, k = rng.standard_normal((2, d))  # (2, d)
        return cls(q, k, **options)

    def _recompute(self):
        if not self._ready:
            return None
        return self._data(self._q, self._k, self.n_positions, self.base, self.pairs, self.interleaved)
