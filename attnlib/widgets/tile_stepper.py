"""The FlashAttention tile stepper: walk through ``attnlib.numpy.flash_attention`` one tile at a time.

Python runs the real tiled loop with a ``FlashTrace`` and keeps every step (which query block meets which key
block, the tile of scores, ``m`` and ``l`` before and after, the rescale factor exp(m_old - m_new) and the
accumulator). The browser steps forward, back or plays through them, and at the end compares acc / l with
the full-softmax attention output, which Python also computed.
"""

from __future__ import annotations

import numpy as np
import traitlets

from .. import _checks
from ..numpy import attention
from ..numpy.flash_attention import FlashTrace
from . import _validate
from ._base import Figure, esm, to_json_array

MAX_TOKENS = 32  # query or key positions: beyond this the score grid's cells get too small to read
MAX_DIM = 16  # columns of the accumulator table


TRACE_KEYS = ("n_q", "n_k", "block_q", "block_k", "causal", "skipped", "steps", "output")
STEP_ARRAYS = ("scores", "m_old", "m_new", "l_old", "l_new", "rescale", "acc")


def _sizes(n_q: int, n_k: int, d_v: int, *, d_v_name: str = "d_v") -> None:
    """Refuse a problem too large to draw, before anything is computed for it."""
    for name, size, limit in (("n_q", n_q, MAX_TOKENS), ("n_k", n_k, MAX_TOKENS), (d_v_name, d_v, MAX_DIM)):
        if size > limit:
            raise ValueError(f"{name} = {size} is too large to draw legibly; the tile stepper shows at most "
                             f"{limit} (use a smaller example: the algorithm is the same)")


def _trace_array(name: str, value) -> np.ndarray:
    """An array, or nested lists that may hold None for -inf (as ``FlashTrace.to_dict`` writes them), as floats:
    not larger than a figure holds, and finite except for -inf (a masked score, or a maximum before any key)."""
    _validate.fits(name, _validate.shape_of(value))
    array = np.array(value, dtype=object)
    try:
        array = np.where(array == None, -np.inf, array).astype(np.float64)  # noqa: E711 - elementwise None test
    except (TypeError, ValueError):
        raise TypeError(f"{name} must hold numbers (None for -inf), got {value!r:.100}") from None
    return _checks.scores(name, array)


def _pair(name: str, value) -> list[int]:
    """Two non-negative integers: a (start, end) range or an (i, j) tile."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{name} must be a pair of integers, got {value!r:.60}")
    return [_checks.non_negative_int(name, x) for x in value]


def _step_state(s: int, step) -> dict:
    """Step ``s`` of a trace, a FlashStep or its to_dict() form, as rounded JSON lists, -inf as null."""
    if not isinstance(step, dict):
        step = {name: getattr(step, name, None) for name in ("i", "j", "q_range", "k_range") + STEP_ARRAYS}
    missing = [name for name in ("i", "j", "q_range", "k_range") + STEP_ARRAYS if step.get(name) is None]
    if missing:
        raise ValueError(f"trace steps[{s}] lacks {missing}: make the trace with FlashTrace.record(q, k, v, ...)")
    state = {name: _checks.non_negative_int(f"trace steps[{s}][{name!r}]", step[name]) for name in ("i", "j")}
    for name in ("q_range", "k_range"):
        state[name] = _pair(f"trace steps[{s}][{name!r}]", step[name])
    for name in STEP_ARRAYS:
        state[name] = to_json_array(_trace_array(f"trace steps[{s}][{name!r}]", step[name]))
    return state


class TileStepper(Figure):
    """Step through FlashAttention's tiles for one head: ``TileStepper(trace, reference=None)``.

    ``trace`` is a ``attnlib.numpy.FlashTrace`` made by ``FlashTrace.record(q, k, v, ...)`` on 2-D
    inputs (one head: q (n_q, d_k), k (n_k, d_k), v (n_k, d_v)), or its ``to_dict()``. ``reference`` is the
    full-softmax output (n_q, d_v) to compare with at the end. ``from_qkv`` and ``random`` build both; their
    ``block_q``, ``block_k`` and ``causal`` (and ``seed`` for ``random``) recompute when changed.
    """

    _esm = esm("tile_stepper.js")
    _input_names = ("block_q", "block_k", "causal", "seed")

    n_q = traitlets.Int(0).tag(sync=True)
    n_k = traitlets.Int(0).tag(sync=True)
    block_q = traitlets.Int(1).tag(sync=True)
    block_k = traitlets.Int(1).tag(sync=True)
    causal = traitlets.Bool(False).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    steps = traitlets.List().tag(sync=True)  # one dict per tile visited, in order
    skipped = traitlets.List().tag(sync=True)  # [i, j] tiles causal masking skipped entirely
    output = traitlets.List().tag(sync=True)  # (n_q, d_v) acc / l after the last tile
    reference = traitlets.List().tag(sync=True)  # (n_q, d_v) softmax(q k^T * scale) v, or []
    max_error = traitlets.Float(-1.0).tag(sync=True)  # max |output - reference|, -1 without a reference
    step = traitlets.Int(0).tag(sync=True)  # the step on screen (the reader moves it)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, trace, reference=None, *, step: int = 0, title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._source = None  # (q, k, v, scale) for from_qkv, or the random() sizes
        data = self._data(trace, reference)
        with self.hold_sync(), self.hold_trait_notifications():
            for name, value in data.items():
                setattr(self, name, value)
            self.step, self.title = step, str(title)

    @staticmethod
    def _data(trace, reference) -> dict:
        if isinstance(trace, FlashTrace):
            trace = {"n_q": trace.n_q, "n_k": trace.n_k, "block_q": trace.block_q, "block_k": trace.block_k,
                     "causal": trace.causal, "skipped": trace.skipped, "steps": trace.steps, "output": trace.output}
        elif not isinstance(trace, dict):
            raise TypeError(f"trace must be a FlashTrace or FlashTrace.to_dict(), got {type(trace).__name__}")
        if not trace.get("steps"):
            raise ValueError("trace has no steps: make it with FlashTrace.record(q, k, v, ...)")
        missing = [key for key in TRACE_KEYS if key not in trace]
        if missing:
            raise ValueError(f"trace lacks {missing}: pass a FlashTrace or its to_dict()")
        sizes = {name: _checks.positive_int(f"trace[{name!r}]", trace[name])
                 for name in ("n_q", "n_k", "block_q", "block_k")}
        output_shape = _validate.shape_of(trace["output"])
        if len(output_shape) != 2:
            raise ValueError(
                f"trace must come from one head (q of shape (n_q, d_k)), got an output of shape {output_shape}"
            )
        _sizes(sizes["n_q"], sizes["n_k"], output_shape[1])
        if output_shape[0] != sizes["n_q"]:
            raise ValueError(f"trace['output'] must have one row per query, n_q = {sizes['n_q']}, got shape "
                             f"{output_shape}")
        n_tiles = -(-sizes["n_q"] // sizes["block_q"]) * -(-sizes["n_k"] // sizes["block_k"])
        steps, skipped = trace["steps"], trace["skipped"]
        for name, value in (("steps", steps), ("skipped", skipped)):
            if not isinstance(value, list | tuple):
                raise TypeError(f"trace[{name!r}] must be a list, got {type(value).__name__}")
        if len(steps) + len(skipped) != n_tiles:
            raise ValueError(f"trace must visit or skip each of its {n_tiles} tiles once, got {len(steps)} steps and "
                             f"{len(skipped)} skipped tiles")
        output = _validate.as_numpy("trace['output']", trace["output"])
        data = {
            **sizes, "causal": _checks.flag("trace['causal']", trace["causal"]),
            "steps": [_step_state(s, step) for s, step in enumerate(steps)],
            "skipped": [_pair(f"trace['skipped'][{t}]", tile) for t, tile in enumerate(skipped)],
            "output": to_json_array(output), "reference": [], "max_error": -1.0,
        }
        if reference is not None:
            def same_as_output(shape):
                if shape != output.shape:
                    raise ValueError(f"reference must have the output's shape {output.shape}, got {shape}")

            reference = _validate.as_numpy("reference", reference, check_shape=same_as_output)
            data["reference"] = to_json_array(reference)
            data["max_error"] = float(np.abs(output - reference).max())
        return data

    @traitlets.validate("step")
    def _check_step(self, proposal):
        return _validate.index("step", proposal["value"], len(self.steps), what="steps")

    @traitlets.validate("block_q", "block_k")
    def _check_block(self, proposal):
        return _checks.positive_int(proposal["trait"].name, proposal["value"])

    # --- constructors ---------------------------------------------------------------------------------------

    @classmethod
    def from_qkv(cls, q, k, v, *, block_q: int = 2, block_k: int = 2, causal: bool = False, scale=None,
                 **options) -> TileStepper:
        """Run ``attnlib.numpy.flash_attention`` on one head's q (n_q, d_k), k (n_k, d_k), v (n_k, d_v) and
        ``attnlib.numpy.attention`` for the reference. Later changes to block_q, block_k or causal rerun both."""
        source = ("qkv", (q, k, v, scale))
        stepper = cls(*cls._compute(source, block_q, block_k, causal, 0), **options)
        stepper._source = source
        return stepper

    @classmethod
    def random(cls, n_q: int = 6, n_k: int = 8, d: int = 4, *, seed: int = 0, block_q: int = 2,
               block_k: int = 3, causal: bool = False, **options) -> TileStepper:
        """q, k, v drawn from a standard normal with ``seed``; ``stepper.seed = ...`` draws new ones."""
        source = ("random", (n_q, n_k, d))
        stepper = cls(*cls._compute(source, block_q, block_k, causal, seed), **options)
        stepper.seed = seed  # no source yet, so this does not recompute
        stepper._source = source
        return stepper

    @staticmethod
    def _compute(source, block_q, block_k, causal, seed):
        """The trace and the reference for the current inputs; every size is checked before anything runs."""
        kind, arguments = source
        block_q, block_k = _checks.positive_int("block_q", block_q), _checks.positive_int("block_k", block_k)
        causal, seed = _checks.flag("causal", causal), _validate.seed(seed)
        if kind == "random":
            n_q, n_k, d = (_checks.positive_int(name, x) for name, x in zip(("n_q", "n_k", "d"), arguments,
                                                                               strict=True))
            _sizes(n_q, n_k, d, d_v_name="d")
            rng = np.random.default_rng(seed)
            q, k, v = rng.standard_normal((n_q, d)), rng.standard_normal((n_k, d)), rng.standard_normal((n_k, d))
            scale = None
        else:
            q, k, v, scale = arguments
            shapes = {name: _validate.shape_of(x) for name, x in (("q", q), ("k", k), ("v", v))}
            if len(shapes["q"]) != 2:
                raise ValueError(f"q must be one head's queries, shape (n_q, d_k), got shape {shapes['q']}")
            for name, what in (("k", "keys, shape (n_k, d_k)"), ("v", "values, shape (n_k, d_v)")):
                if len(shapes[name]) != 2:
                    raise ValueError(f"{name} must be one head's {what}, got shape {shapes[name]}")
            _sizes(shapes["q"][0], shapes["k"][0], shapes["v"][1])
            q, k, v = (_validate.as_numpy(name, x) for name, x in (("q", q), ("k", k), ("v", v)))
            scale = _checks.scale(scale)
        trace = FlashTrace.record(q, k, v, causal=causal, scale=scale, block_q=block_q, block_k=block_k)
        reference, _ = attention(q, k, v, causal=causal, scale=scale)
        return trace, reference

    def _recompute(self):
        if self._source is None:
            return None
        data = self._data(*self._compute(self._source, self.block_q, self.block_k, self.causal, self.seed))
        data["step"] = 0  # the old step number means nothing for the new tiling
        return data
