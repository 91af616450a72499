"""A minimal module base for the NumPy reference: named parameters and weight transfer from ``attnlib.torch``.

NumPy has no ``nn.Module``; this gives the reference classes just enough of one (``named_parameters``,
``load_state_dict``, ``from_torch``) that a chapter can copy weights from the Torch twin and show that both
compute the same numbers. Parameter names are the Torch ``state_dict`` keys, on purpose.
"""

from __future__ import annotations

import numpy as np


class Module:
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
    def from_torch(cls, module, *, dtype=np.float64):
        """Build the NumPy twin of an ``attnlib.torch`` module: same configuration, same weights."""
        if not hasattr(module, "config") or not hasattr(module, "state_dict"):
            raise TypeError(f"from_torch expects an attnlib.torch module, got {type(module).__name__}")
        twin = cls(**module.config(), dtype=dtype)
        twin.load_state_dict({name: t.detach().cpu().double().numpy() for name, t in module.state_dict().items()})
        return twin


def uniform(rng: np.random.Generator, fan_in: int, shape, dtype) -> np.ndarray:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the range nn.Linear uses, so fresh modules start at similar scale."""
    bound = 1.0 / np.sqrt(fan_in)
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


def make_rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
