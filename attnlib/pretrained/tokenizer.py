"""A word-level tokenizer: one token per word or punctuation mark, so heatmap labels read as plain words."""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIAL_TOKENS = (PAD, UNK, MASK)

# A word is a run of letters, digits or apostrophes; every other visible character is a token on its own.
_TOKEN_PATTERN = re.compile(r"<[a-z]+>|[a-z0-9']+|[^\sa-z0-9']")
_NO_SPACE_BEFORE = {".", ",", "!", "?", ";", ":"}


def _id(name: str, value) -> int:
    """One token id as an int: any integral scalar (a Python or NumPy int, a 0-d integer array or tensor); bools,
    floats and strings are refused rather than converted."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and getattr(value, "ndim", None) == 0:  # a NumPy scalar, a 0-d array or tensor
        if "int" not in str(dtype):  # int8 ... uint64, torch.int64; not bool, float or complex
            raise TypeError(f"{name} must be integers, got {value!r} of dtype {dtype}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be integers, got {value!r:.60} of type {type(value).__name__}")
    return int(value)


def _ids(ids) -> list[int]:
    """Token ids as a list of ints: one integral scalar, or one sequence of them (a list, a tuple, or a 1-D
    integer array or tensor)."""
    if isinstance(ids, str | bytes):
        raise TypeError(f"ids must be token ids, got the {type(ids).__name__} {ids!r:.60}; encode() turns text "
                        "into ids")
    ndim = getattr(ids, "ndim", None)
    if ndim == 0 or isinstance(ids, numbers.Number):
        return [_id("ids", ids)]
    if ndim is not None:  # an array or a tensor: its dtype says it all, without reading the values one by one
        if ndim != 1:
            raise ValueError(f"decode takes one sequence of ids (1-D); decode a batch row by row, got shape "
                             f"{tuple(ids.shape)}")
        if "int" not in str(ids.dtype):
            raise TypeError(f"ids must be integers, got an array of dtype {ids.dtype}")
        return [int(i) for i in ids.tolist()]
    try:
        values = list(ids)
    except TypeError:
        raise TypeError(f"ids must be token ids (an int or a sequence of ints), got {type(ids).__name__}") from None
    if any(isinstance(i, list | tuple) or getattr(i, "ndim", 0) > 0 for i in values):
        raise ValueError("decode takes one sequence of ids; decode a batch row by row")
    return [_id("ids", i) for i in values]


class WordTokenizer:
    """Maps lower-cased words to ids. Ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<mask>``; unknown words -> ``<unk>``.

    ``encode`` takes any str (empty or blank text gives no ids); ``decode`` takes one id or a sequence of them
    (Python or NumPy ints, 1-D integer arrays or tensors) and refuses floats, bools and ids outside the vocabulary.
    """

    def __init__(self, words):
        if isinstance(words, str | bytes):
            raise TypeError(f"words must be a list of words, got the string {words!r:.60}")
        try:
            words = list(words)
        except TypeError:
            raise TypeError(f"words must be a list of words, got {type(words).__name__}") from None
        not_strings = [word for word in words if not isinstance(word, str)]
        if not_strings:
            raise TypeError(f"words must be strings, got {not_strings[:3]!r:.200}")
        not_tokens = [word for word in words if not _TOKEN_PATTERN.fullmatch(word)]
        if not_tokens:
            raise ValueError(f"words must be non-empty strings that tokenize() produces (lower case, one word or one "
                             f"punctuation mark each), got {not_tokens[:3]!r:.200}")
        vocab = list(SPECIAL_TOKENS) + [word for word in words if word not in SPECIAL_TOKENS]
        if len(set(vocab)) != len(vocab):
            duplicates = sorted({word for word in vocab if vocab.count(word) > 1})
            raise ValueError(f"words must not repeat, got duplicates {duplicates}")
        self.vocab = vocab
        self.token_to_id = {token: index for index, token in enumerate(vocab)}
        self.pad_id = self.token_to_id[PAD]
        self.unk_id = self.token_to_id[UNK]
        self.mask_id = self.token_to_id[MASK]

    @classmethod
    def from_vocabulary(cls, vocab) -> WordTokenizer:
        """Rebuild from a full ``.vocab`` list (special tokens first), e.g. one stored beside a checkpoint."""
        if isinstance(vocab, str | bytes) or not isinstance(vocab, Iterable):
            raise TypeError(f"vocab must be a list of tokens, got {type(vocab).__name__}")
        vocab = list(vocab)
        if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocab must start with {SPECIAL_TOKENS}, got {vocab[:len(SPECIAL_TOKENS)]}")
        return cls(vocab[len(SPECIAL_TOKENS):])

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer({len(self)} tokens)"

    def words(self) -> list[str]:
        """The vocabulary without the special tokens (what ``WordTokenizer(words)`` was built from)."""
        return self.vocab[len(SPECIAL_TOKENS):]

    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return _TOKEN_PATTERN.findall(text.lower())

    def encode(self, text: str) -> list[int]:
        return [self.token_to_id.get(token, self.unk_id) for token in self.tokenize(text)]

    def decode(self, ids) -> str:
        """Token ids (one id, or a list or 1-D tensor/array of them) -> text with spaces between words, none
        before punctuation."""
        ids = _ids(ids)
        outside = [(position, i) for position, i in enumerate(ids) if not 0 <= i < len(self.vocab)]
        if outside:
            position, i = outside[0]
            raise ValueError(f"ids must be integers in [0, {len(self.vocab)}), got {i} at position {position}")
        pieces = []
        for index in ids:
            token = self.vocab[index]
            if pieces and token not in _NO_SPACE_BEFORE:
                pieces.append(" ")
            pieces.append(token)
        return "".join(pieces)
