"""The one switch of attnlib: whether the public doors scan values for NaN, infinity and overflow.

Both namespaces read it, so ``attnlib.numpy`` and ``attnlib.torch`` follow the same rule. It lives in a module
with no imports so that ``import attnlib`` stays light.
"""

from __future__ import annotations

import contextlib

_FINITE_CHECKS = True


def finite_checks() -> bool:
    """Whether value scans are on (they are unless :func:`set_finite_checks` turned them off)."""
    return _FINITE_CHECKS


def set_finite_checks(enabled: bool) -> bool:
    """Turn the scans of every element on or off for all of attnlib; return the previous setting.

    On (the default), each public function and module call checks that its floating-point inputs hold no NaN or
    infinity, and the attention cores raise ``OverflowError`` when the scores overflow instead of returning NaN.
    A scan reads every element once (and on a GPU waits for the result), so a benchmark or a production loop that
    has validated its data may switch it off. Shape, dtype, type and device checks stay on either way.
    """
    global _FINITE_CHECKS
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be True or False, got {enabled!r} of type {type(enabled).__name__}")
    previous, _FINITE_CHECKS = _FINITE_CHECKS, enabled
    return previous


@contextlib.contextmanager
def finite_checks_set_to(enabled: bool):
    """``with attnlib.finite_checks_set_to(False): ...`` -- the switch for one block of code, restored after."""
    previous = set_finite_checks(enabled)
    try:
        yield
    finally:
        set_finite_checks(previous)
