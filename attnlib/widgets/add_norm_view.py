"""Add & Norm through a stack of blocks: with and without the residual, post-LN and pre-LN.

Python runs one stack of attnlib.torch ``TransformerBlock``s four ways on the same input and weights -- residual
on or off, LayerNorm after (post-LN) or before (pre-LN) each sub-layer -- and measures, at every depth, the size
of the activations (their RMS) and of the gradient that flows back to them from a loss on the output (its dot
product with a fixed random direction): ``attnlib.depth.depth_profile``, the same measurement chapter 6 reports.
Without the residual the message is passed along like a whisper in a telephone game; the browser flips between
the four wirings and draws both profiles on log scales.
"""

from __future__ import annotations

import numbers

import numpy as np
import traitlets

from .. import _checks
from . import _models, _validate
from ._base import Figure, esm

MAX_LAYERS = 64  # points per curve; beyond this the depth axis gets too crowded to read
WIRINGS = [(residual, norm_first) for residual in (True, False) for norm_first in (False, True)]


def _check_profiles(profiles) -> list[dict]:
    """Plain data: for each of the four wirings, activation_scale and gradient_norm per depth (all the same
    length, positive). Accepts a list of dicts with keys residual, norm_first, ... or a dict keyed by
    (residual, norm_first)."""
    if isinstance(profiles, dict):
        profiles = [{"residual": key[0], "norm_first": key[1], **value} for key, value in profiles.items()]
    if not isinstance(profiles, list | tuple):
        raise TypeError(f"profiles must be a list of dicts or a dict keyed by (residual, norm_first), got "
                        f"{type(profiles).__name__}")
    found = {}
    for profile in profiles:
        key = (bool(profile["residual"]), bool(profile["norm_first"]))
        curves = {}
        for name in ("activation_scale", "gradient_norm"):
            values = np.asarray(profile[name], dtype=np.float64)
            if values.ndim != 1 or len(values) < 2 or not np.all(np.isfinite(values)) or (values < 0).any():
                raise ValueError(f"profiles {key}: {name} must be a list of at least 2 finite non-negative numbers "
                                 f"(one per depth), got {profile[name]!r}")
            if len(values) > MAX_LAYERS + 1:
                raise ValueError(f"profiles {key}: {len(values) - 1} layers; at most {MAX_LAYERS} can be drawn")
            curves[name] = [float(f"{v:.6g}") for v in values]  # six significant digits, over many decades
        found[key] = {"residual": key[0], "norm_first": key[1], **curves}
    missing = [key for key in WIRINGS if key not in found]
    if missing:
        raise ValueError(f"profiles must cover all four (residual, norm_first) wirings; missing {missing}")
    lengths = {len(p[name]) for p in found.values() for name in ("activation_scale", "gradient_norm")}
    if len(lengths) != 1:
        raise ValueError(f"profiles must all have the same number of depths, got lengths {sorted(lengths)}")
    return [found[key] for key in WIRINGS]


class AddNormView(Figure):
    """Per-layer activation scale and gradient norm through a stack of blocks, for the four wirings.

    ``AddNormView(profiles)`` takes plain data (see ``_check_profiles``); ``from_blocks(blocks, x)`` measures
    a list of ``attnlib.torch.TransformerBlock`` on input ``x``; ``random(n_layers, ...)`` builds the blocks
    from ``seed``, and its ``n_layers`` and ``seed`` recompute when changed. ``residual`` and ``norm_first``
    pick the wiring shown first (the reader flips them in the figure).
    """

    _esm = esm("add_norm_view.js")
    _input_names = ("n_layers", "seed")

    profiles = traitlets.List().tag(sync=True)  # four dicts: residual, norm_first, activation_scale, gradient_norm
    residual = traitlets.Bool(True).tag(sync=True)
    norm_first = traitlets.Bool(False).tag(sync=True)
    n_layers = traitlets.Int(1).tag(sync=True)
    seed = traitlets.Int(0).tag(sync=True)
    title = traitlets.Unicode("").tag(sync=True)

    def __init__(self, profiles, *, residual: bool = True, norm_first: bool = False, title: str = "", **kwargs):
        super().__init__(**kwargs)
        self._source = None  # the random() sizes
        profiles = _check_profiles(profiles)
        with self.hold_sync():
            self.profiles = profiles
            self.n_layers = len(profiles[0]["gradient_norm"]) - 1
            self.residual, self.norm_first, self.title = bool(residual), bool(norm_first), str(title)

    @classmethod
    def from_blocks(cls, blocks, x, *, seed: int = 0, **options) -> AddNormView:
        """Measure a stack of ``attnlib.torch.TransformerBlock`` (applied in order, ignoring each block's own
        ``norm_first``) on ``x`` of shape (n, d_model) or (batch, n, d_model); ``seed`` draws the loss's probe."""
        return cls(cls._measure(blocks, x, seed), **options)

    @staticmethod
    def _measure(blocks, x, seed) -> list[dict]:
        from ..depth import depth_profile  # imports torch, which a figure made from plain data does not need

        blocks = list(blocks)
        if len(blocks) > MAX_LAYERS:
            raise ValueError(f"blocks has {len(blocks)} layers; at most {MAX_LAYERS} can be drawn legibly")
        with _models.one_torch_thread():
            return [{"residual": residual, "norm_first": norm_first,
                     **depth_profile(blocks, x, residual=residual, norm="pre" if norm_first else "post", seed=seed)}
                    for residual, norm_first in WIRINGS]

    @classmethod
    def random(cls, n_layers: int = 12, *, d_model: int = 32, n_heads: int = 4, n_tokens: int = 16, seed: int = 0,
               **options) -> AddNormView:
        """A stack of freshly initialised blocks (torch's default initialisation, seeded) on a random input."""
        sizes = {"d_model": d_model, "n_heads": n_heads, "n_tokens": n_tokens}
        view = cls(cls._random_profiles(n_layers, seed, **sizes), **options)
        view.seed = seed  # no source yet, so this does not recompute
        view._source = sizes
        return view

    @classmethod
    def _random_profiles(cls, n_layers, seed, *, d_model, n_heads, n_tokens) -> list[dict]:
        import torch

        from ..torch import TransformerBlock

        if isinstance(n_layers, bool) or not isinstance(n_layers, numbers.Integral) or not 1 <= n_layers <= MAX_LAYERS:
            raise ValueError(f"n_layers must be an integer from 1 to {MAX_LAYERS}, got {n_layers!r}")
        n_tokens = _checks.positive_int("n_tokens", n_tokens)
        with torch.random.fork_rng(devices=[]):  # seed the initialisation without touching the caller's RNG
            torch.manual_seed(_validate.seed(seed))
            blocks = [TransformerBlock(d_model, n_heads, 4 * d_model) for _ in range(n_layers)]
            x = torch.randn(n_tokens, d_model)  # (n_tokens, d_model)
        return cls._measure(blocks, x, seed)

    def _recompute(self):
        if self._source is None:
            return None
        return {"profiles": _check_profiles(self._random_profiles(self.n_layers, self.seed, **self._source))}
