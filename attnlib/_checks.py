"""Argument checks for the public doors of ``attnlib.numpy`` and ``attnlib.torch``.

The rule is *check once, at the door*: every public function and every module's ``__call__``/``forward`` validates
its own arguments with these helpers, then hands them to a private core (``_attention``, ``module._forward``, ...)
that trusts them and never checks again. A model calls its layers' cores, not their doors, so a decoding step pays
for one check of its token ids, not one per layer.

Shape, dtype, type and device checks are always on. The scans that read every element -- NaN/inf in the inputs,
overflow in the scores and outputs -- follow one switch shared by both namespaces, :func:`attnlib.set_finite_checks`
(on by default). Messages name the argument and show the shapes, dtypes or values seen.

Only what NumPy arrays and torch tensors have in common is used here (``.shape``, ``.ndim``, ``.dtype``), so this
module imports neither torch nor anything heavy.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _settings

ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


# --------------------------------------------------------------------------------------------------------------
# Plain numbers
# --------------------------------------------------------------------------------------------------------------


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
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {value}")
    return float(value)


def flag(name: str, value) -> bool:
    """A True/False switch; 0/1 and NumPy bools are accepted, anything else (e.g. the string "no") is not."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} of type {type(value).__name__}")


def activation(value) -> str:
    if not isinstance(value, str) or value not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {value!r}")
    return value


def choice(name: str, value, options) -> str:
    """One of a few named options (a string), or a clear error listing them."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def kv_heads(n_heads: int, n_kv_heads) -> int:
    """The number of key/value heads: None means n_heads; otherwise a positive divisor of n_heads."""
    if n_kv_heads is None:
        return n_heads
    n_kv_heads = positive_int("n_kv_heads", n_kv_heads)
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads must divide n_heads (each key/value head serves a group of n_heads / n_kv_heads "
                         f"query heads), got n_heads={n_heads} and n_kv_heads={n_kv_heads}")
    return n_kv_heads


def divisible(d_model: int, n_heads: int) -> None:
    if d_model % n_heads:
        raise ValueError(
            f"d_model must be divisible by n_heads, got d_model={d_model} and n_heads={n_heads} "
            f"({d_model} / {n_heads} = {d_model / n_heads:.3g})"
        )


def scale(value):
    """None (use 1/sqrt(d_k)) or a finite positive number."""
    if value is None:
        return None
    return positive_float("scale", value)


# --------------------------------------------------------------------------------------------------------------
# Which namespace an array belongs to
# --------------------------------------------------------------------------------------------------------------


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


def numpy_array(name: str, x) -> np.ndarray:
    """``x`` as a NumPy array for ``attnlib.numpy``; a torch tensor is refused (convert it yourself, explicitly)."""
    if _is_torch(x):
        raise TypeError(
            f"{name} is a torch.Tensor (shape {tuple(x.shape)}, dtype {x.dtype}); attnlib.numpy takes NumPy arrays: "
            f"pass {name}.detach().cpu().numpy(), or use attnlib.torch"
        )
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        array = np.asarray(x)
    except (TypeError, ValueError) as error:  # ragged nested lists and the like
        raise TypeError(f"{name} must be an array, got {type(x).__name__} that NumPy cannot read ({error})") from None
    if array.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got {type(x).__name__} holding Python objects")
    return array


def torch_tensor(name: str, x):
    """``x`` must already be a torch tensor for ``attnlib.torch`` (NumPy arrays are refused, with the fix)."""
    if isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} is a NumPy array (shape {x.shape}, dtype {x.dtype}); attnlib.torch takes torch tensors: "
            f"pass torch.from_numpy({name}), or use attnlib.numpy"
        )
    if not _is_torch(x) or not hasattr(x, "shape"):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape {tuple(x.shape)}): it has no values to compute with")
    return x


# --------------------------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------------------------


def _is_floating(x) -> bool:
    is_float = getattr(x.dtype, "is_floating_point", None)  # torch.dtype has it, numpy dtypes do not
    if is_float is not None:
        return bool(is_float)
    return np.issubdtype(x.dtype, np.floating)


def _all_finite(x) -> bool:
    """Whether every element of x is finite.

    For a tensor one sum settles the usual case: a NaN or an infinity makes the sum NaN or infinite, so a finite sum
    means every element is finite. Only a sum that is not finite (which finite elements can also give, by
    overflowing together) needs the element-wise scan, several kernels where the sum is one: for the small tensors
    of a decoding step the scan's cost is mostly per kernel, not per element.
    """
    if _is_torch(x):
        return math.isfinite(x.detach().sum().item()) or bool(x.isfinite().all())
    return bool(np.isfinite(x).all())


def floating_array(name: str, x, *, min_ndim: int = 1, finite: bool = True):
    """``x`` is a floating-point array/tensor with at least ``min_ndim`` dims, not empty, and (by default) finite."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array or tensor, got {type(x).__name__}")
    if not _is_floating(x):
        raise TypeError(f"{name} must have a floating-point dtype, got {x.dtype} (shape {tuple(x.shape)})")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {tuple(x.shape)}")
    if any(size == 0 for size in x.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and _settings.finite_checks() and not _all_finite(x):
        raise ValueError(f"{name} contains NaN or infinity (shape {tuple(x.shape)}, dtype {x.dtype})")
    return x


def scores(name: str, x):
    """Attention scores: floating point and finite, except -inf, which marks a masked entry."""
    floating_array(name, x, finite=False)
    if _settings.finite_checks() and bool((x != x).any() | (x == float("inf")).any()):  # NaN != NaN
        raise ValueError(f"{name} contains NaN or +inf (shape {tuple(x.shape)}); only -inf (masked) is allowed")
    return x


def cache_pair(as_array, names, first, second) -> tuple:
    """The two new arrays of a cache append (say k and v), converted by ``as_array`` and checked: floating point, at
    least (n, d), one dtype. Whether they extend what the cache holds is :func:`extends_cache`'s question."""
    first, second = as_array(names[0], first), as_array(names[1], second)
    for name, x in zip(names, (first, second), strict=True):
        floating_array(name, x, min_ndim=2)
    same_dtype(**{names[0]: first, names[1]: second})
    return first, second


def extends_cache(names, shapes, held, dtype, device=None, *, held_names=None) -> None:
    """Raise unless two new arrays (say k and v) of ``shapes`` can be appended to the pair a cache ``held``.

    The two must share their batch dimensions and number of positions (all but the last dim); against what is held
    (None: nothing yet), the batch dimensions and each array's last dim must match, and so must dtype and device.
    ``held_names`` name the held pair in messages (e.g. "keys", "values"; default: ``names``).
    """
    (first, second), (first_shape, second_shape) = names, (tuple(shape) for shape in shapes)
    held_first, held_second = held_names or names
    if len(first_shape) < 2 or first_shape[:-1] != second_shape[:-1]:
        raise ValueError(f"{first} and {second} must share their batch dimensions and number of positions, got "
                         f"{first} {first_shape} and {second} {second_shape}")
    if held is None:
        return
    old_first, old_second = held
    cached = f"the cached {held_first} {tuple(old_first.shape)} and {held_second} {tuple(old_second.shape)}"
    if first_shape[:-2] != tuple(old_first.shape[:-2]) or first_shape[-1] != old_first.shape[-1]:
        raise ValueError(f"{first} of shape {first_shape} does not extend {cached}")
    if second_shape[-1] != old_second.shape[-1]:
        raise ValueError(f"{second} of shape {second_shape} does not extend {cached}")
    if dtype != old_first.dtype:
        raise TypeError(f"new {held_first} and {held_second} have dtype {dtype}, the cache holds {old_first.dtype}")
    if device is not None and device != old_first.device:
        raise ValueError(f"new {held_first} and {held_second} are on {device}, the cache is on {old_first.device}")


def last_dim(name: str, x, expected: int) -> None:
    if x.shape[-1] != expected:
        raise ValueError(f"{name} must have last dimension {expected}, got shape {tuple(x.shape)}")


def same_dtype(**arrays) -> None:
    dtypes = {name: a.dtype for name, a in arrays.items()}
    if len(set(dtypes.values())) > 1:
        raise TypeError("dtypes must match, got " + ", ".join(f"{n}: {d}" for n, d in dtypes.items()))


def same_device(**tensors) -> None:
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError("tensors must be on one device, got " + ", ".join(f"{n}: {d}" for n, d in devices.items()))


def module_input(name: str, x, *, width: int, dtype, device=None, min_ndim: int = 1):
    """The input of a module: floating, finite, last dimension ``width``, and the module's own dtype (and device)."""
    floating_array(name, x, min_ndim=min_ndim)
    last_dim(name, x, width)
    if x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the module's parameters are {dtype}: convert one to the other "
            f"(shape {tuple(x.shape)})"
        )
    if device is not None and x.device != device:
        raise ValueError(f"{name} is on {x.device} but the module's parameters are on {device}")
    return x


def broadcast_shape(name: str, shape, target, *, what: str) -> None:
    """Check ``shape`` broadcasts to ``target`` (NumPy rules), naming ``what`` the target is."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
        s in (1, t) for s, t in zip(reversed(shape), reversed(target), strict=False)
    )
    if not ok:
        raise ValueError(f"{name} of shape {shape} does not broadcast to {what} of shape {target}")


def qkv(q, k, v, *, grouped: bool = False):
    """Validate attention inputs shaped (..., n_q, d_k), (..., n_k, d_k), (..., n_k, d_v).

    ``grouped=True`` also accepts grouped-query heads (see :func:`heads_of`) where the batch dimensions do not
    broadcast.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        floating_array(name, x, min_ndim=2)
    same_dtype(q=q, k=k, v=v)
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share their last (feature) dimension d_k, got {shapes}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions (dim -2), got {shapes}")
    if grouped:
        heads_of(q, k, v)
    else:
        try:
            np.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2]))
        except ValueError:
            raise ValueError(f"batch dimensions of q, k and v do not broadcast, got {shapes}") from None
    if _is_torch(q):
        same_device(q=q, k=k, v=v)


def heads_of(q, k, v) -> tuple:
    """The batch shape (..., H) of the attention weights for q (..., H, n_q, d) and k, v (..., H_kv, n_k, d).

    Plain broadcasting when the head axes (dim -3) broadcast; grouped-query attention when H is a multiple of
    H_kv (query head h reads key/value head h // (H // H_kv)). Anything else is refused naming q, k and v.
    """
    shapes = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if not is_grouped(q, k):
        try:
            return tuple(np.broadcast_shapes(tuple(q.shape[:-2]), tuple(k.shape[:-2]), tuple(v.shape[:-2])))
        except ValueError:
            pass
    if q.ndim < 3 or k.ndim < 3 or v.ndim < 3:
        raise ValueError(f"batch dimensions of q, k and v do not broadcast, got {shapes}")
    n_heads, n_kv_heads = q.shape[-3], k.shape[-3]
    if n_heads % n_kv_heads:
        raise ValueError(
            f"batch dimensions of q, k and v do not broadcast, got {shapes}. Read as heads (dimension -3), q has "
            f"{n_heads} heads and k has {n_kv_heads}: grouped-query attention needs the number of query heads to be "
            "a multiple of the number of key/value heads (n_heads % n_kv_heads == 0)"
        )
    if v.shape[-3] != n_kv_heads:
        raise ValueError(f"k and v must have the same number of heads (dimension -3) for grouped-query attention, "
                         f"got {shapes}")
    try:
        batch = np.broadcast_shapes(tuple(q.shape[:-3]), tuple(k.shape[:-3]), tuple(v.shape[:-3]))
    except ValueError:
        raise ValueError(f"batch dimensions of q, k and v (before the head axis) do not broadcast, got {shapes}") \
            from None
    return tuple(batch) + (q.shape[-3],)


def is_grouped(q, k) -> bool:
    """True when q's heads (dim -3) share k's heads in groups: H_q a multiple of H_kv > 1, and H_q != H_kv."""
    if q.ndim < 3 or k.ndim < 3:
        return False
    h, h_kv = q.shape[-3], k.shape[-3]
    return h_kv not in (1, h) and h % h_kv == 0


def window(value, causal: bool):
    """A sliding window: None, or a positive number of most recent keys; it needs ``causal=True``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"window must be a positive integer or None (the number of most recent keys a query sees), "
                        f"got {value!r} of type {type(value).__name__}")
    if value < 1:
        raise ValueError(f"window must be a positive integer, got {value} (a query always sees itself)")
    if not causal:
        raise ValueError(f"window={value} needs causal=True: a sliding window keeps each query's {value} most recent "
                         "keys, itself included, and a bidirectional query has no 'most recent'")
    return int(value)


def bias(b, target, dtype, *, device=None):
    """An additive bias on the scaled scores: floating, finite, of the inputs' dtype, broadcastable to ``target``.

    Keys are hidden with boolean masks, never with -inf in the bias: -inf would make a hidden row's softmax 0/0.
    """
    if not hasattr(b, "shape") or not hasattr(b, "dtype"):
        raise TypeError(f"bias must be a floating-point array or tensor, got {type(b).__name__}")
    if not _is_floating(b):
        raise TypeError(f"bias must have a floating-point dtype, got {b.dtype} (shape {tuple(b.shape)})")
    if b.dtype != dtype:
        raise TypeError(f"bias has dtype {b.dtype} but q, k and v are {dtype} (shape {tuple(b.shape)}): convert it")
    broadcast_shape("bias", b.shape, target, what="the attention scores (..., n_q, n_k)")
    if _settings.finite_checks() and not _all_finite(b):
        raise ValueError(f"bias contains NaN or infinity (shape {tuple(b.shape)}); it must be finite: hide keys with "
                         "a boolean mask (mask=, key_mask=, causal=, window=), not with -inf")
    if device is not None and b.device != device:
        raise ValueError(f"bias is on {b.device} but q is on {device}")
    return b


def even_features(name: str, x) -> int:
    """The feature size d of x (..., d) for rotary embeddings, which turn pairs of features: d must be even."""
    d = x.shape[-1]
    if d % 2:
        raise ValueError(f"{name} must have an even last dimension (rotary embeddings turn pairs of features), "
                         f"got shape {tuple(x.shape)}")
    return d


def positions(name: str, p, n: int | None = None) -> None:
    """Absolute positions: a 1-D integer array of non-negative whole numbers (n of them, one per row of x)."""
    if not hasattr(p, "shape") or not hasattr(p, "dtype"):
        raise TypeError(f"{name} must be an integer array or tensor, got {type(p).__name__}")
    dtype = str(p.dtype)
    if "int" not in dtype:
        raise TypeError(f"{name} must hold integer positions (e.g. arange(n)), got dtype {p.dtype}")
    if p.ndim != 1 or (n is not None and p.shape[0] != n):
        expected = "(n,)" if n is None else f"({n},), one position per row of x,"
        raise ValueError(f"{name} must have shape {expected} got shape {tuple(p.shape)}")
    if p.shape[0] and int(p.min()) < 0:
        raise ValueError(f"{name} must be non-negative, got a minimum of {int(p.min())}")


def causal_fits(causal: bool, n_q: int, n_k: int, shapes: str) -> bool:
    causal = flag("causal", causal)
    if causal and n_k < n_q:
        raise ValueError(f"causal attention needs n_k >= n_q (queries are the last n_q positions), got {shapes}")
    return causal


def _boolean(name: str, m, convention: str) -> None:
    if not hasattr(m, "shape") or not hasattr(m, "dtype"):
        raise TypeError(f"{name} must be a boolean array or tensor, got {type(m).__name__}")
    if str(m.dtype) not in ("bool", "torch.bool"):
        raise TypeError(f"{name} must be boolean ({convention}), got dtype {m.dtype}")


def mask(m, target) -> None:
    """A mask must be boolean (True = may attend) and broadcast to the scores' shape ``target``."""
    _boolean("mask", m, "True = may attend")
    broadcast_shape("mask", m.shape, target, what="the attention scores (..., n_q, n_k)")


def key_mask(m, batch_shape, n_k: int) -> None:
    """A key mask is boolean (..., n_k), True = a real token that may be attended; ... broadcasts to the batch."""
    _boolean(
        "key_mask", m,
        "True = a real token that may be attended, as in mask; note that PyTorch's key_padding_mask is the "
        "opposite, True = ignore: pass ~key_padding_mask",
    )
    if m.ndim < 1 or m.shape[-1] != n_k:
        raise ValueError(f"key_mask must have shape (..., n_k) with n_k = {n_k} keys, got shape {tuple(m.shape)}")
    broadcast_shape("key_mask", m.shape[:-1], batch_shape, what="the batch dimensions")


def token_ids(name: str, ids, vocab_size: int) -> None:
    if not hasattr(ids, "shape") or not hasattr(ids, "dtype"):
        raise TypeError(f"{name} must be an integer array or tensor, got {type(ids).__name__}")
    dtype = str(ids.dtype)
    if "int" not in dtype or dtype in ("uint8", "torch.uint8"):
        # torch reads a uint8 index tensor as a boolean mask, not as ids: refuse it in both namespaces.
        raise TypeError(f"{name} must hold integer token ids (int16/int32/int64), got dtype {ids.dtype}")
    if ids.ndim < 1 or ids.shape[-1] == 0:
        raise ValueError(f"{name} must be a non-empty sequence of token ids, got shape {tuple(ids.shape)}")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got values from {low} to {high}")


# --------------------------------------------------------------------------------------------------------------
# Results: what the cores report back (one policy for attention and flash_attention)
# --------------------------------------------------------------------------------------------------------------


def finite_result(name: str, x, *, producer: str):
    """Raise if the output ``x`` of ``producer`` holds NaN or infinity (a symptom of bad weights or overflow)."""
    if _settings.finite_checks() and not _all_finite(x):
        raise ValueError(
            f"{producer} produced NaN or infinity in {name} (shape {tuple(x.shape)}, dtype {x.dtype}): "
            "its parameters hold NaN/inf or a value overflowed the dtype"
        )
    return x


OVERFLOW_HINT = "q and k are too large for this dtype: scale them down or compute in a wider dtype"


def scores_overflowed(dtype) -> OverflowError:
    """Scores reached +inf (or NaN): the softmax has no finite answer to give."""
    return OverflowError(f"the scores q·kᵀ·scale overflowed {dtype} to +inf or NaN; {OVERFLOW_HINT}")


def scores_underflowed(dtype, n_rows: int) -> OverflowError:
    """Every visible score of a row is -inf although the row is not masked: its weights are undefined."""
    return OverflowError(
        f"{n_rows} query row(s) have every visible score at -inf in {dtype} (overflow of q·kᵀ·scale), though no "
        f"mask hides all their keys; {OVERFLOW_HINT}"
    )


# --------------------------------------------------------------------------------------------------------------
# Sliding windows and grouped key/value heads (flash_attention and its kernel)
# --------------------------------------------------------------------------------------------------------------


def query_groups(q, k, v) -> int:
    """How many query heads share one key/value head: 1, or G > 1 for grouped-query attention.

    The rule of :func:`heads_of` (which refuses anything else): query head h uses key/value head h // G, with
    G = n_heads // n_kv_heads, read along dimension -3 of q (..., n_heads, n_q, d_k) and k, v (..., n_kv_heads, n_k, d).
    """
    heads_of(q, k, v)
    return q.shape[-3] // k.shape[-3] if is_grouped(q, k) else 1
