"""The base of the torch modules: configuration, dtype/device, and conversion from the NumPy twin.

Seeding follows PyTorch's convention: parameters are drawn from the global generator (``torch.manual_seed``);
the NumPy twin takes a ``seed`` argument instead. Constructors take PyTorch's factory arguments ``dtype`` and
``device``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .._config import Configured


class Module(Configured, nn.Module):
    """``nn.Module`` plus ``config()``, ``dtype``/``device`` of the parameters, and ``from_twin``."""

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the parameters (all share one); inputs must have it too."""
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @classmethod
    def from_twin(cls, module, *, dtype=None, device=None):
        """The torch twin of an ``attnlib.numpy`` module of the same class: same configuration, same weights.

        ``dtype``: of the new parameters; None keeps the source's (float64 stays float64).
        """
        twin_class = type(module)
        if twin_class.__name__ != cls.__name__ or not twin_class.__module__.startswith("attnlib.numpy"):
            raise TypeError(
                f"from_twin expects an attnlib.numpy.{cls.__name__}, got {twin_class.__module__}.{twin_class.__name__}"
            )
        state = {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in module.state_dict().items()}
        dtype = next(iter(state.values())).dtype if dtype is None else floating_dtype(dtype)
        twin = cls(**module.config(), dtype=dtype, device=device)
        twin.load_state_dict(state)
        return twin


def floating_dtype(dtype) -> torch.dtype:
    """The ``dtype`` argument of a constructor, checked: a floating-point ``torch.dtype`` (None: the default)."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def copy_weights(ours: nn.Module, pairs) -> None:
    """Copy (our parameter, their tensor) pairs without recording gradients; shapes must already agree."""
    with torch.no_grad():
        for parameter, tensor in pairs:
            parameter.copy_(tensor)


def refuse(condition: bool, message: str) -> None:
    """``from_torch`` refuses, by name, every option of a PyTorch module that attnlib cannot express."""
    if condition:
        raise ValueError(message)
