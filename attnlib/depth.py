"""What a stack of Transformer blocks does to a signal and to its gradient, depth by depth, in each wiring of
Add & Norm.

The blocks are instances of ``attnlib.torch.TransformerBlock``; only the way their sub-layers (attention, then the
feed-forward network) are joined changes:

* ``residual``: each sub-layer's input is added to its output (``h + F(h)``), or not (``F(h)`` alone);
* ``norm``: ``"post"`` normalises after the addition (the original Transformer: ``norm(h + F(h))``), ``"pre"``
  normalises the sub-layer's input (GPT-2 onwards: ``h + F(norm(h))``), ``None`` uses no norm at all.

With the residual, ``"post"`` and ``"pre"`` are exactly ``TransformerBlock`` with ``norm_first`` False and True.
``depth_profile`` measures the size of the activations and of the gradient at every depth; chapter 6 of the book and
``attnlib.widgets.AddNormView`` both draw its numbers. ``fold_norms`` folds a pre-LN block's learned norm scale and
shift into the linear maps that read the norm, which changes nothing the block computes.
"""

from __future__ import annotations

import copy

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


def fold_norms(block):
    """A copy of a pre-LN ``attnlib.torch.TransformerBlock`` (``norm_first=True``) that computes the same function
    with both norms reduced to plain standardisation (gamma = 1, beta = 0).

    In pre-LN a norm's output is read only by linear maps: ``norm1``'s by W_Q, W_K and W_V, ``norm2``'s by the
    feed-forward network's W_1. For each such map, ``(gamma * z + beta) @ W + b = z @ (gamma[:, None] * W) +
    (beta @ W + b)``, so W becomes ``gamma[:, None] * W`` and its bias ``beta @ W + b``. A block built with
    ``bias=False`` has no beta, and only gamma is folded. ``block`` itself is not modified.

    A post-LN block is refused: there a norm's output is also the residual stream passed on to what follows, and no
    linear map inside the block reads that path, so gamma and beta cannot be moved into the block's weights.
    """
    from .torch import TransformerBlock

    if not isinstance(block, TransformerBlock):
        raise TypeError(f"block must be an attnlib.torch.TransformerBlock, got {type(block).__name__}")
    if not block.norm_first:
        raise ValueError("fold_norms needs a pre-LN block (norm_first=True): in post-LN the norm's output is also "
                         "the residual stream, which no linear map of the block reads")
    folded = copy.deepcopy(block)
    readers = ((block.norm1, folded.norm1, [(folded.attention, name) for name in ("q", "k", "v")]),
               (block.norm2, folded.norm2, [(folded.feed_forward, "1")]))
    with torch.no_grad():
        for norm, folded_norm, maps in readers:
            gamma, beta = norm.weight, norm.bias
            for module, name in maps:
                weight = getattr(module, f"w_{name}")
                if beta is not None:
                    bias = getattr(module, f"b_{name}")
                    bias.copy_(beta @ weight + bias)  # uses the weight before it is scaled below
                weight.copy_(gamma[:, None] * weight)
            folded_norm.weight.fill_(1.0)
            if folded_norm.bias is not None:
                folded_norm.bias.zero_()
    return folded
