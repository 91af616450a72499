"""Input checks for the figures. Each names the argument and shows what it got, like ``attnlib._checks``.

A figure draws small data, so its checks run before any work: every limit (tokens, columns, numbers in an
array) is checked on the *shape* of an input, read without converting it (``shape_of``), and only then is the
input converted and scanned for NaN and infinity. A 2000 x 2000 array, a list of ten million labels or a sentence
of a million words is refused in microseconds, not after the figure has been computed for it.
"""

from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

from .. import _checks
from . import _models

# Numbers in one array a figure holds: its data is saved into the page, where each costs ~10 characters.
MAX_VALUES = 2**20
MAX_LABEL_CHARS = 100  # one token label, drawn beside a heatmap row or on a button


# --------------------------------------------------------------------------------------------------------------
# Labels and plain values
# --------------------------------------------------------------------------------------------------------------


def tokens(name: str, values, *, max_tokens: int) -> list[str]:
    """A non-empty list of strings, few and short enough to label a figure legibly.

    The count is checked before the strings are read: a sized input by its ``len``, any other iterable by
    reading at most ``max_tokens + 1`` items (so an endless generator is refused too)."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be a list of strings (one per token), got the string {values!r:.60}")
    try:
        count = len(values)
    except TypeError:
        count = None  # a generator, or an array of no dimensions (refused below)
    if count is None or count <= max_tokens:
        try:
            values = list(itertools.islice(iter(values), max_tokens + 1))
        except TypeError:
            raise TypeError(f"{name} must be a list of strings, got {type(values).__name__}") from None
    if (count if count is not None else len(values)) > max_tokens:
        raise ValueError(
            f"{name} has {count if count is not None else f'more than {max_tokens}'} tokens; at most {max_tokens} "
            "can be drawn legibly in this figure (use a shorter sentence or a slice)"
        )
    if not values:
        raise ValueError(f"{name} must not be empty: there is nothing to draw")
    not_strings = [value for value in values if not isinstance(value, str)]
    if not_strings:
        raise TypeError(f"{name} must hold strings, got {not_strings[:3]!r:.200}")
    too_long = [value for value in values if len(value) > MAX_LABEL_CHARS]
    if too_long:
        raise ValueError(f"{name} holds a label of {len(too_long[0])} characters ({too_long[0]!r:.40}...); at most "
                         f"{MAX_LABEL_CHARS} fit in this figure")
    return [str(value) for value in values]


def sentence(value, *, max_tokens: int) -> str:
    """A str with at least one word, and no longer than ``max_tokens`` labels of the longest length allowed."""
    if not isinstance(value, str):
        raise TypeError(f"sentence must be a str, got {type(value).__name__}")
    if len(value) > max_tokens * MAX_LABEL_CHARS:
        raise ValueError(f"sentence has {len(value)} characters; this figure draws at most {max_tokens} tokens "
                         f"(at most {max_tokens * MAX_LABEL_CHARS} characters)")
    if not value.strip():
        raise ValueError(f"sentence must contain at least one word, got {value!r}")
    return value


def index(name: str, value, size: int, *, what: str) -> int:
    """An integer in [0, size), where ``what`` says what is being indexed (e.g. "heads")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if not 0 <= value < size:
        raise ValueError(f"{name} must be in [0, {size}) for {size} {what}, got {value}")
    return int(value)


def seed(value) -> int:
    return _checks.non_negative_int("seed", value)


def at_most(name: str, value, limit: int, *, why: str) -> int:
    """A positive integer no larger than ``limit``; ``why`` says what the limit protects."""
    value = _checks.positive_int(name, value)
    if value > limit:
        raise ValueError(f"{name} = {value} is too large: at most {limit} ({why})")
    return value


# --------------------------------------------------------------------------------------------------------------
# Arrays: the shape first, then the values
# --------------------------------------------------------------------------------------------------------------


def shape_of(value) -> tuple[int, ...]:
    """The shape of an array or tensor, or of nested lists read along their first elements, without converting.

    For regular nested lists this is the shape NumPy would give; for ragged ones the conversion that follows
    fails (or gives another shape, which is checked again)."""
    shape = []
    while isinstance(value, list | tuple):
        shape.append(len(value))
        if not value:
            return tuple(shape)
        value = value[0]
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape.extend(int(size) for size in value.shape)
    return tuple(shape)


def fits(name: str, shape) -> None:
    """Refuse an array of more than ``MAX_VALUES`` numbers (given or about to be computed) by its shape alone."""
    count = math.prod(shape)
    if count > MAX_VALUES:
        raise ValueError(f"{name} of shape {tuple(shape)} holds {count} numbers; a figure holds at most {MAX_VALUES} "
                         "in one array (its data is saved into the page): use a smaller example")


def _real_dtype(dtype) -> bool:
    """Integers or floating point, in NumPy's or torch's spelling (not bool, complex, strings or objects)."""
    return str(dtype).removeprefix("torch.").startswith(("float", "int", "uint", "bfloat"))


def as_numpy(name: str, array, *, check_shape=None) -> np.ndarray:
    """A float64 NumPy copy of an array, a torch tensor or nested lists of real numbers: non-empty and finite.

    Before anything is converted, the shape (read by ``shape_of``) must fit ``MAX_VALUES`` and pass
    ``check_shape(shape)`` (which raises with the figure's own message), and an array's dtype must be real."""
    if not (isinstance(array, list | tuple | numbers.Real) or hasattr(array, "shape") and hasattr(array, "dtype")):
        raise TypeError(f"{name} must be an array, a tensor or nested lists of numbers, got {type(array).__name__}")
    shape = shape_of(array)
    fits(name, shape)
    if check_shape is not None:
        check_shape(shape)
    dtype = getattr(array, "dtype", None)
    if dtype is not None and not _real_dtype(dtype):
        raise TypeError(f"{name} must hold real numbers, got dtype {dtype} (shape {shape})")
    if _models.is_torch(array):
        array = _checks.torch_tensor(name, array).detach().cpu().double().numpy()
    array = _checks.numpy_array(name, array)
    if not _real_dtype(array.dtype):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype} (shape {array.shape})")
    if array.shape != shape:  # nested lists that shape_of could not read in full
        fits(name, array.shape)
        if check_shape is not None:
            check_shape(array.shape)
    return _checks.floating_array(name, array.astype(np.float64))


def attention_weights(name: str, weights: np.ndarray) -> None:
    """Each row (last axis) non-negative and summing to 1 -- or to 0, for a row whose keys are all masked."""
    row_sums = weights.sum(axis=-1)
    bad = ~(np.isclose(row_sums, 1, atol=1e-4) | np.isclose(row_sums, 0))
    if (weights < 0).any():
        raise ValueError(f"{name} must be attention weights (non-negative, each row summing to 1), got a "
                         f"weight of {weights.min():.4g}")
    if bad.any():
        raise ValueError(f"{name} must be attention weights (non-negative, each row summing to 1), got a row "
                         f"summing to {row_sums[bad].flat[0]:.4g}")


def token_ids(name: str, ids, model, *, max_tokens: int) -> np.ndarray:
    """One sequence of token ids for an attnlib ``TransformerLM``: 1-D integers in [0, model.vocab_size), at most
    ``max_tokens`` and ``model.max_len`` of them. Floats are refused, not truncated; the length is checked first."""
    _models.check_language_model(model)
    shape = shape_of(ids)
    if len(shape) != 1:
        raise ValueError(f"{name} must be one sequence of token ids (1-D), got shape {shape}")
    limit = min(max_tokens, model.max_len)
    if shape[0] > limit:
        raise ValueError(f"{name} holds {shape[0]} ids; this figure shows at most {limit} "
                         f"(model.max_len = {model.max_len}, at most {max_tokens} drawn)")
    if shape[0] == 0:
        raise ValueError(f"{name} must hold at least one token id, got none")
    if isinstance(ids, list | tuple) and any(isinstance(i, bool | np.bool_) for i in ids):
        raise TypeError(f"{name} must hold integer token ids, got a bool in {list(ids)!r:.200}")
    if _models.is_torch(ids):
        ids = _checks.torch_tensor(name, ids).detach().cpu().numpy()
    ids = _checks.numpy_array(name, ids)
    _checks.token_ids(name, ids, model.vocab_size)
    return ids.astype(np.int64)
