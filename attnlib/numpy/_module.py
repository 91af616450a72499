"""A minimal module base for the NumPy reference: named parameters, weight transfer, and the twin conversions.

NumPy has no ``nn.Module``; this gives the reference classes just enough of one (``named_parameters``,
``load_state_dict``, ``from_twin``, ``from_torch``) that a chapter can copy weights from the Torch twin or from a
PyTorch built-in and show that both compute the same numbers. Parameter names are the Torch ``state_dict`` keys,
on purpose: the state dicts of the two twins are interchangeable.

Seeding follows NumPy's convention: constructors take ``seed`` (an int or a ``np.random.Generator``); the torch
twin follows PyTorch's and draws from ``torch.manual_seed``'s global generator.
"""

from __future__ import annotations

import numpy as np

from .._config import Configured


class Module(Configured):
    """Holds parameters (NumPy arrays) as attributes and sub-modules as attributes or lists."""

    def named_parameters(self, prefix: str = ""):
        for name, value in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(value, np.ndarray):
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(prefix + name + ".")
            elif isinstance(value, list) and value and isinstance(value[0], Module):
                for index, item in enumerate(value):
                    yield from item.named_parameters(f"{prefix}{name}.{index}.")

    def state_dict(self) -> dict[str, np.ndarray]:
        return dict(self.named_parameters())

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the parameters (all share one); inputs must have it too."""
        return next(iter(self.named_parameters()))[1].dtype

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays into this module's parameters; names and shapes must match exactly."""
        own = self.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"state_dict does not match: missing {missing}, unexpected {unexpected}")
        for name, value in state.items():
            value = np.asarray(value)
            if value.shape != own[name].shape:
                raise ValueError(f"parameter {name}: expected shape {own[name].shape}, got {value.shape}")
            owner, attribute = self._resolve(name)
            setattr(owner, attribute, value.astype(own[name].dtype, copy=True))

    def _resolve(self, dotted: str):
        *path, attribute = dotted.split(".")
        owner = self
        for part in path:
            owner = owner[int(part)] if isinstance(owner, list) else getattr(owner, part)
        return owner, attribute

    def num_parameters(self) -> int:
        return sum(p.size for _, p in self.named_parameters())

    @classmethod
    def from_twin(cls, module, *, dtype=None):
        """The NumPy twin of an ``attnlib.torch`` module of the same class: same configuration, same weights.

        ``dtype``: of the new parameters; None keeps the source's (float32 stays float32).
        """
        twin_class = type(module)
        if twin_class.__name__ != cls.__name__ or not twin_class.__module__.startswith("attnlib.torch"):
            raise TypeError(
                f"from_twin expects an attnlib.torch.{cls.__name__}, got {twin_class.__module__}.{twin_class.__name__}"
            )
        state = {name: t.detach().cpu() for name, t in module.state_dict().items()}
        if dtype is None:
            source = str(next(iter(state.values())).dtype).removeprefix("torch.")
            if source == "bfloat16":
                raise TypeError("module holds bfloat16, which NumPy lacks: pass dtype=np.float32 (or np.float64)")
            dtype = source
        twin = cls(**module.config(), dtype=floating_dtype(dtype))
        twin.load_state_dict({name: t.double().numpy() for name, t in state.items()})
        return twin


class FromTorch:
    """Mixin for the classes that have a PyTorch built-in counterpart (MHA, FeedForward, LayerNorm, block)."""

    @classmethod
    def from_torch(cls, module, *, dtype=None):
        """Build from the PyTorch built-in that ``attnlib.torch.<same class>.from_torch`` accepts.

        Everything ``attnlib.torch`` refuses (options it cannot express) is refused here too, with the same message.
        """
        from .. import torch as torch_twins  # lazy: attnlib.numpy does not need torch otherwise

        if type(module).__module__.startswith("attnlib."):
            raise TypeError(
                f"from_torch takes a torch.nn module; to convert an attnlib.torch {type(module).__name__} use "
                f"{cls.__name__}.from_twin"
            )
        return cls.from_twin(getattr(torch_twins, cls.__name__).from_torch(module), dtype=dtype)


def uniform(rng: np.random.Generator, fan_in: int, shape, dtype) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the range nn.Linear uses, so fresh modules start at similar scale."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def make_rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def floating_dtype(dtype) -> np.dtype:
    """The ``dtype`` argument of a constructor, checked: a NumPy floating-point dtype."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be a NumPy floating-point dtype, got {dtype!r}") from None
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a NumPy floating-point dtype, got {dtype}")
    return dtype
