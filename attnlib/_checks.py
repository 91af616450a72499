"""Input validation shared by ``attnlib.numpy`` and ``attnlib.torch``.

Every public function and constructor calls these so that bad input fails early with a message that names
the argument and shows the shapes or values seen, instead of surfacing later as a broadcasting error deep
inside a matmul or, worse, as a silent NaN. The helpers only use what NumPy arrays and torch tensors have in
common (``.shape``, ``.ndim``, ``.dtype``), so this module imports neither torch nor anything heavy.
"""

from __future__ import annotations

import contextlib
import contextvars
import numbers

import numpy as np

ACTIVATIONS = ("relu", "gelu")


def positive_int(name: str, value) -> int:
    """Return ``value`` as an int, or raise if it is not a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative integer, got {value!r} of type {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value}")
    return int(value)


def positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number, got {value!r} of type {type(value).__name__}")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value}")
    return float(value)


def activation(value) -> str:
    if value not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {value!r}")
    return value


def divisible(d_model: int, n_heads: int) -> None:
    if d_model % n_heads:
        raise ValueError(
            f"d_model must be divisible by n_heads, got d_model={d_model} and n_heads={n_heads} "
            f"({d_model} / {n_heads} = {d_model / n_heads:.3g})"
        )


# Set while a model runs its own layers on values it has already checked (see ``checked_inside``).
_INSIDE_CHECKED_CALL = contextvars.ContextVar("attnlib_inside_checked_call", default=False)


@contextlib.contextmanager
def checked_inside():
    """Skip the NaN/inf scans of nested layers; the caller checks what enters and what leaves.

    A scan reads every element, so for a one-token decoding step it costs as much as the arithmetic itself,
    and a model would pay it in every attention, norm and feed-forward layer. ``TransformerLM`` checks its
    token ids on the way in and its logits on the way out (``finite_result``) instead: a NaN or infinity
    born inside (bad weights, overflow) still raises, once. Shape and dtype checks stay on everywhere.
    """
    token = _INSIDE_CHECKED_CALL.set(True)
    try:
        yield
    finally:
        _INSIDE_CHECKED_CALL.reset(token)


def finite_result(name: str, x, *, producer: str):
    """Raise if the output ``x`` of ``producer`` holds NaN or infinity (a symptom of bad weights or overflow)."""
    if not _all_finite(x):
        raise ValueError(
            f"{producer} produced NaN or infinity in {name} (shape {tuple(x.shape)}, dtype {x.dtype}): "
            "its parameters hold NaN/inf or a value overflowed the dtype"
        )
    return x


def _is_floating(x) -> bool:
    is_float = getattr(x.dtype, "is_floating_point", None)  # torch.dtype has it, numpy dtypes do not
    if is_float is not None:
        return bool(is_float)
    return np.issubdtype(x.dtype, np.floating)


def _all_finite(x) -> bool:
    if hasattr(x, "isfinite"):  # torch tensor: stays on its device
        return bool(x.isfinite().all())
    return bool(np.isfinite(x).all())


def floating_array(name: str, x, *, min_ndim: int = 1, finite: bool = True):
    """Check ``x`` is a floating-point array/tensor with at least ``min_ndim`` dims and (optionally) finite."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
    if not _is_floating(x):
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype} (shape {tuple(x.shape)})")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    if any(size == 0 for size in x.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and not _INSIDE_CHECKED_CALL.get() and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinity (shape {tuple(x.shape)})")
    return x


def scores(name: str, x):
    """Attention scores: floating point and finite, except -inf, which marks a masked entry."""
    floating_array(name, x, finite=False)
    if not _INSIDE_CHECKED_CALL.get() and bool((x != x).any() | (x == float("inf")).any()):  # NaN != NaN
        raise ValueError(f"{name} contains NaN or +inf (shape {tuple(x.shape)}); only -inf (masked) is allowed")
    return x


def last_dim(name: str, x, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(f"{name} must have last dimension {expected}, got shape {tuple(x.shape)}")


def same_dtype(**arrays) -> None:
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError("dtypes must match, got " + ", ".join(f"{n}: {d}" for n, d in dtypes.items()))


def broadcast_shape(name: str, shape, target, *, what: str) -> None:
    """Check ``shape`` broadcasts to ``target`` (NumPy rules), naming ``what`` the target is."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(f"{name} of shape {shape} does not broadcast to {what} of shape {target}")


def qkv(q, k, v):
    """Validate attention inputs shaped (..., n_q, d_k), (..., n_k, d_k), (..., n_k, d_v)."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        floating_array(name, x, min_ndim=2)
    same_dtype(q=q, k=k, v=v)
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last (feature) dimension d_k, got {shapes}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions (dim -2), got {shapes}")
    try:
        np.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
    except ValueError:
        raise ValueError(f"batch dimensions of q, k and v do not broadcast, got {shapes}") from None


def mask(m, target) -> None:
    """A mask must be boolean (True = may attend) and broadcast to the scores' shape ``target``."""
    if not hasattr(m, "shape") or not hasattr(m, "dtype"):
        raise TypeError(f"mask must be a boolean array or tensor, got {type(m).__name__}")
    is_bool = str(m.dtype) in ("bool", "torch.bool")
    if not is_bool:
        raise TypeError(f"mask must be boolean (True = may attend), got dtype {m.dtype}")
    broadcast_shape("mask", m.shape, target, what="the attention scores (..., n_q, n_k)")


def scale(value):
    if value is None:
        return None
    return positive_float("scale", value)


def token_ids(name: str, ids, vocab_size: int) -> None:
    if not hasattr(ids, "shape") or not hasattr(ids, "dtype"):
        raise TypeError(f"{name} must be an integer array or tensor, got {type(ids).__name__}")
    dtype = str(ids.dtype)
    if "int" not in dtype:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.ndim < 1 or ids.shape[-1] == 0:
        raise ValueError(f"{name} must be a non-empty sequence of token ids, got shape {tuple(ids.shape)}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got values from {low} to {high}")
