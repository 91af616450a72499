"""What a stack of Transformer blocks does to a signal and to its gradient, depth by depth, in each wiring of
Add & Norm.

The blocks are instances of ``attnlib.torch.TransformerBlock``; only the way their sub-layers (attention, then the
feed-forward network) are joined changes:

* ``residual``: each sub-layer's input is added to its output (``h + F(h)``), or not (``F(h)`` alone);
* ``norm``: ``"post"`` normalises after the addition (the original Transformer: ``norm(h + F(h))``), ``"pre"``
  normalises the sub-layer's input (GPT-2 onwards: ``h + F(norm(h))``), ``None`` uses no norm at all.

With the residual, ``"post"`` and ``"pre"`` are exactly ``TransformerBlock`` with ``norm_first`` False and True.
``depth_profile`` measures the size of the activations and of the gradient at every depth; chapter 6 of the book and
``attnlib.widgets.AddNormView`` both draw its numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks

NORMS = ("post", "pre", None)


def _check_wiring(residual, norm) -> None:
    if not isinstance(residual, bool):
        raise TypeError(f"residual must be True or False, got {residual!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def apply_block(block, h, *, residual: bool = True, norm: str | None = "post"):
    """Apply the two sub-layers of ``block`` (an ``attnlib.torch.TransformerBlock``) to ``h``, wired as asked.

    Per sub-layer ``F`` with its norm ``N``: ``N(h + F(h))`` for ``norm="post"``, ``h + F(N(h))`` for ``"pre"``,
    ``h + F(h)`` for ``None``; without ``residual`` the ``h +`` is dropped. The block's own ``norm_first`` is ignored.
    """
    _check_wiring(residual, norm)
    for sublayer, layer_norm in ((block.attention, block.norm1), (block.feed_forward, block.norm2)):
        change = sublayer(layer_norm(h)) if norm == "pre" else sublayer(h)
        h = h + change if residual else change
        if norm == "post":
            h = layer_norm(h)
    return h


def depth_profile(blocks, x, *, residual: bool = True, norm: str | None = "post", seed: int = 0,
                  other=None) -> dict[str, list[float]]:
    """Measure a stack of ``attnlib.torch.TransformerBlock`` instances, applied in order by ``apply_block``, on ``x``.

    ``x`` has shape (n, d_model) or (batch, n, d_model). Returns one value per depth, from 0 (the input ``x``) to
    ``len(blocks)`` (the output):

    * ``activation_scale``: the root mean square of the activations;
    * ``gradient_norm``: the norm of the gradient that reaches them from the loss ``sum(output * direction)``,
      where ``direction`` is a fixed random tensor of ``x``'s shape, drawn from ``seed``. At the output it is the
      norm of ``direction`` itself;
    * ``similarity`` (only when ``other``, a second input of ``x``'s shape, is given): the cosine similarity of
      ``x``'s and ``other``'s activations, averaged over tokens. Unrelated inputs that come out alike have lost
      the message.
    """
    blocks = list(blocks)
    if not blocks or not all(isinstance(b, torch.nn.Module) and hasattr(b, "attention") and hasattr(b, "norm1")
                             and hasattr(b, "feed_forward") for b in blocks):
        raise TypeError("blocks must be a non-empty list of attnlib.torch.TransformerBlock")
    _check_wiring(residual, norm)
    x = torch.as_tensor(x, dtype=torch.float32) if not isinstance(x, torch.Tensor) else x
    _checks.floating_array("x", x, min_ndim=2)
    _checks.last_dim("x", x, blocks[0].attention.d_model)
    if other is not None and (not isinstance(other, torch.Tensor) or other.shape != x.shape):
        raise ValueError(f"other must be a tensor of x's shape {tuple(x.shape)}, got "
                         f"{tuple(other.shape) if isinstance(other, torch.Tensor) else type(other).__name__}")
    generator = torch.Generator().manual_seed(_checks.non_negative_int("seed", seed))
    direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)

    h = x.detach().clone().requires_grad_(True)
    states, others = [h], [other]
    for block in blocks:
        h = apply_block(block, h, residual=residual, norm=norm)
        h.retain_grad()  # keep the gradient at every depth, not only at the leaf
        states.append(h)
        if other is not None:
            with torch.no_grad():
                others.append(apply_block(block, others[-1], residual=residual, norm=norm))
    (h * direction).sum().backward()
    profile = {"activation_scale": [float(s.detach().pow(2).mean().sqrt()) for s in states],
               "gradient_norm": [float(s.grad.norm()) for s in states]}
    if other is not None:
        profile["similarity"] = [float(F.cosine_similarity(s.detach(), o, dim=-1).mean())
                                 for s, o in zip(states, others, strict=True)]
    return profile
