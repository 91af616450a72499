"""Two tiny models trained by this project, shipped as checkpoints, so heatmaps show learned attention.

``load("tiny-lm")`` -- a causal word-level language model (2 layers x 4 heads, context 1024) with a
previous-token head and an induction head; ``load("tiny-encoder")`` -- a bidirectional encoder trained with
masked-token prediction alone, in which a head emerged that sends "it" to the noun it refers to ("the apple
fell on the ground because it was ripe" -> apple; "... hard" -> ground). Both return ``(model, tokenizer)``:
an ``attnlib.torch.TransformerLM`` in eval mode on the CPU and a ``WordTokenizer``.
``attnlib.pretrained.heads`` measures which heads do what; ``info(name)`` gives the numbers recorded at training.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tokenizer import WordTokenizer

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
NAMES = ("tiny-lm", "tiny-encoder")

__all__ = ["load", "info", "NAMES", "WordTokenizer", "checkpoint_paths"]


def checkpoint_paths(name: str, directory: Path | str | None = None) -> tuple[Path, Path]:
    """(weights ``<name>.pt``, description ``<name>.json``) inside ``directory`` (default: the shipped ones)."""
    if name not in NAMES:
        raise ValueError(f"name must be one of {NAMES}, got {name!r}")
    directory = CHECKPOINTS if directory is None else Path(directory)
    return directory / f"{name}.pt", directory / f"{name}.json"


def _missing(path: Path, name: str) -> FileNotFoundError:
    return FileNotFoundError(f"checkpoint file {path} is missing; recreate it with "
                             f"`python -m attnlib.pretrained.train {name}`")


def info(name: str, *, directory: Path | str | None = None) -> dict:
    """The JSON written beside the weights: config, vocabulary, recipe, loss, measurements, thresholds."""
    info_path = checkpoint_paths(name, directory)[1]
    if not info_path.is_file():
        raise _missing(info_path, name)
    try:
        described = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint file {info_path} is corrupted (not valid JSON): {error}") from error
    missing = {"config", "vocabulary"} - set(described if isinstance(described, dict) else {})
    if missing:
        raise ValueError(f"checkpoint file {info_path} is corrupted: it lacks {sorted(missing)}")
    return described


def load(name: str, *, directory: Path | str | None = None):
    """(model, tokenizer) for ``"tiny-lm"`` or ``"tiny-encoder"``; the model is in eval mode on the CPU."""
    import torch  # imported here so that ``import attnlib.pretrained`` stays light

    from ..torch import TransformerLM

    described = info(name, directory=directory)
    weights_path = checkpoint_paths(name, directory)[0]
    if not weights_path.is_file():
        raise _missing(weights_path, name)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types (UnpicklingError, RuntimeError, EOFError, ...)
        raise ValueError(f"checkpoint file {weights_path} could not be read (corrupted?): "
                         f"{type(error).__name__}: {error}") from error
    try:
        tokenizer = WordTokenizer.from_vocabulary(described["vocabulary"])
        model = TransformerLM(**described["config"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint file {checkpoint_paths(name, directory)[1]} is corrupted: {error}") from error
    if len(tokenizer) != model.vocab_size:
        raise ValueError(f"checkpoint file {checkpoint_paths(name, directory)[1]} has a vocabulary of {len(tokenizer)} "
                         f"tokens but a config with vocab_size={model.vocab_size}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise ValueError(f"checkpoint file {weights_path} does not match its config: {error}") from error
    return model.eval(), tokenizer
