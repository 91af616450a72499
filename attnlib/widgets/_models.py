"""Running attnlib models (NumPy or Torch twins) for the figures, without caring which backend they are."""

from __future__ import annotations

import contextlib
import re
import zlib

import numpy as np

_WORD = re.compile(r"[\w']+|[^\w\s]")  # a word, or one punctuation mark


def is_torch(model) -> bool:
    return any(cls.__module__.startswith("torch") for cls in type(model).__mro__)


def to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):
        return array.detach().cpu().double().numpy()
    return np.asarray(array, dtype=np.float64)


def check_language_model(model) -> None:
    if not all(hasattr(model, name) for name in ("blocks", "causal", "new_cache", "vocab_size", "max_len")):
        raise TypeError(
            f"model must be an attnlib TransformerLM (attnlib.numpy or attnlib.torch), got {type(model).__name__}"
        )


def layers_and_heads(model) -> tuple[int, int]:
    """(layers, heads per layer) of an attnlib TransformerLM: the first two axes of its attention maps."""
    return len(model.blocks), model.blocks[0].attention.n_heads


def forward(model, ids, *, kv_cache=None) -> np.ndarray:
    """logits for one sequence ``ids`` (1-D), as NumPy, on either backend (no autograd)."""
    if is_torch(model):
        import torch

        with torch.no_grad(), one_torch_thread():
            logits = model(torch.as_tensor(np.asarray(ids), dtype=torch.long)[None], kv_cache=kv_cache)  # (1, n, V)
    else:
        logits = model(np.asarray(ids, dtype=np.int64)[None], kv_cache=kv_cache)  # (1, n, V)
    return to_numpy(logits)[0]


def attention_maps(model, ids) -> dict[bool, np.ndarray]:
    """Every layer's and head's attention weights for ``ids``, with the causal mask (key True) and without
    (key False), on the same input and the same weights. Each value has shape (n_layers, n_heads, n, n)."""
    check_language_model(model)
    maps = {}
    original = model.causal
    try:
        for causal in (False, True):
            model.causal = causal  # the model passes this flag to every block's attention
            forward(model, ids)
            maps[causal] = np.stack([to_numpy(block.attention.last_weights)[0] for block in model.blocks])
    finally:
        model.causal = original
    return maps


def split_words(sentence: str) -> list[str]:
    """Lower-cased words and punctuation marks, for a model that has no tokenizer of its own."""
    return _WORD.findall(sentence.lower())


def hashed_ids(words: list[str], vocab_size: int) -> list[int]:
    """A stable id per word (CRC-32 modulo the vocabulary): the same word gets the same embedding in every
    sentence, without a fixed vocabulary. Different words may share an id; an untrained model cannot tell."""
    return [zlib.crc32(word.encode()) % vocab_size for word in words]


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread, then restore the caller's setting. The figures' tensors are tiny: splitting
    each small matrix product across threads costs far more in synchronisation than it saves (on a busy
    two-core machine, a 12-layer forward and backward pass took ~6x longer with two threads than with one)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
