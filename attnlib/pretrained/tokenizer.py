"""A word-level tokenizer: one token per word or punctuation mark, so heatmap labels read as plain words."""

from __future__ import annotations

import re

PAD, UNK, MASK = "<pad>", "<unk>", "<mask>"
SPECIAL_TOKENS = (PAD, UNK, MASK)

# A word is a run of letters, digits or apostrophes; every other visible character is a token on its own.
_TOKEN_PATTERN = re.compile(r"<[a-z]+>|[a-z0-9']+|[^\sa-z0-9']")
_NO_SPACE_BEFORE = {".", ",", "!", "?", ";", ":"}


class WordTokenizer:
    """Maps lower-cased words to ids. Ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<mask>``; unknown words -> ``<unk>``."""

    def __init__(self, words):
        words = list(words)
        if not all(isinstance(word, str) and word for word in words):
            raise TypeError("words must be a list of non-empty strings")
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
        """Token ids (a list or a 1-D tensor/array) -> text with spaces between words, none before punctuation."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        if any(isinstance(i, list) for i in ids):
            raise ValueError("decode takes one sequence of ids; decode a batch row by row")
        pieces = []
        for index in ids:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.vocab):
                raise ValueError(f"ids must be integers in [0, {len(self.vocab)}), got {index!r}")
            token = self.vocab[index]
            if pieces and token not in _NO_SPACE_BEFORE:
                pieces.append(" ")
            pieces.append(token)
        return "".join(pieces)
