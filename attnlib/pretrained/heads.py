"""Score every (layer, head) of a model for a behaviour, so a chapter picks heads by measurement.

Each ``*_scores`` function returns a tensor shaped (n_layers, n_heads); ``best_head(scores)`` gives the
(layer, head) with the highest score and ``ranked_heads(scores)`` all of them, best first.

* previous-token: how much attention position i puts on position i - 1.
* induction: on a random span written twice, how much a token in the second copy attends to the token *after*
  its earlier occurrence -- the position whose word comes next, which is how a model copies a sequence it saw.
* coreference: from "it" in "the apple fell on the ground because it was ripe", does the head's largest weight
  land on the noun that "it" refers to (accuracy over sentences), and how much weight goes there on average.

For a padded batch through an encoder (``model(ids, key_mask=key_mask)``, e.g. all-MiniLM-L6-v2), the measurements
of Clark et al. 2019 ("What Does BERT Look At?") and Kobayashi et al. 2020 ("Attention is Not Only a Weight") take
the stacked weights (n_layers, B, n_heads, N, N) and the key mask (B, N) and average over real queries only:

* ``key_share``: the weight a head puts on a set of keys ([CLS], [SEP], punctuation ...).
* ``attention_entropy``: how spread out a head's rows are (0 = one key; log N = uniform).
* ``neighbour_scores``: the share of queries whose strongest key is the previous (offset -1) or next (+1) token.
* ``word_coreference_scores``: ``coreference_scores`` for a word-piece tokenizer (a word's weight is the sum over
  its pieces).
* ``block_inputs``: what each attention layer reads; ``block.attention.value_norms(x)`` then gives ||f_h(x_j)||, the
  size of what key j adds through head h per unit of weight.
"""

from __future__ import annotations

import random

import torch

from . import data


def attention_weights(model, ids, *, mask=None) -> torch.Tensor:
    """Run ``model`` on ``ids`` (B, N) and stack every layer's weights -> (n_layers, B, n_heads, N, N)."""
    with torch.no_grad():
        model(ids, mask=mask)
    return torch.stack([block.attention.last_weights for block in model.blocks])


def best_head(scores: torch.Tensor) -> tuple[int, int]:
    """(layer, head) of the largest entry of an (n_layers, n_heads) score tensor."""
    layer, head = divmod(int(scores.argmax()), scores.shape[1])
    return layer, head


def ranked_heads(scores: torch.Tensor) -> list[tuple[tuple[int, int], float]]:
    """All heads as ((layer, head), score), best first."""
    order = scores.flatten().argsort(descending=True)
    return [(divmod(int(index), scores.shape[1]), float(scores.flatten()[index])) for index in order]


# ------------------------------------------------------------------------------------------- probe batches


def repeated_span_batch(tokenizer, *, n_sequences: int = 16, span_length: int = 24, seed: int = 0) -> torch.Tensor:
    """(n_sequences, 2 * span_length) ids: a span of random words, then the same span again."""
    rng = random.Random(seed)
    words = [word for word in tokenizer.words() if word not in data.PUNCTUATION]
    rows = []
    for _ in range(n_sequences):
        span = tokenizer.encode(" ".join(data.random_span(rng, words, span_length)))
        rows.append(span + span)
    return torch.tensor(rows)  # (B, 2L)


def coreference_batch(tokenizer, examples):
    """Encode sentences of different lengths, padded: (ids (B, N), key mask (B, 1, 1, N))."""
    encoded = [tokenizer.encode(" ".join(example.words)) for example in examples]
    width = max(len(row) for row in encoded)
    ids = torch.full((len(encoded), width), tokenizer.pad_id)
    for row, tokens in enumerate(encoded):
        ids[row, :len(tokens)] = torch.tensor(tokens)
    mask = (ids != tokenizer.pad_id)[:, None, None, :]  # (B, 1, 1, N): no query may attend to padding
    return ids, mask


def held_out_coreference_examples(n: int = 200, *, seed: int = 1,
                                  reverse_rate: float = 0.0) -> list[data.CoreferenceExample]:
    """Sentences whose (noun, noun, adjective) combination never occurs in the training data, half of them
    referring to each noun. ``reverse_rate=0``: the explainer's order ("the apple fell on the ground ..."); 1: the
    other order ("the floor caught the apple ...")."""
    rng = random.Random(seed)
    return [data.coreference_example(rng, refers_to_first=index % 2 == 0, reverse_rate=reverse_rate, split="held_out")
            for index in range(n)]


# ------------------------------------------------------------------------------------------------- scores


def previous_token_scores(model, ids) -> torch.Tensor:
    """Mean weight from position i to i - 1 (over i >= 1 and the batch) -> (n_layers, n_heads)."""
    weights = attention_weights(model, ids)  # (L, B, H, N, N)
    to_previous = weights.diagonal(offset=-1, dim1=-2, dim2=-1)  # (L, B, H, N - 1): entries [i, i - 1]
    return to_previous.mean(dim=(1, 3))


def induction_scores(model, ids, span_length: int) -> torch.Tensor:
    """On ``ids`` = [span, span], mean weight from position i of the second copy to i - span_length + 1.

    That key holds the word that followed the current word last time: attending to it is the induction step.
    """
    weights = attention_weights(model, ids)  # (L, B, H, N, N)
    queries = torch.arange(span_length, 2 * span_length)
    keys = queries - span_length + 1
    return weights[..., queries, keys].mean(dim=(1, 3))  # (L, H)


def copying_accuracy(model, ids, span_length: int) -> float:
    """Fraction of tokens in the second copy (after its first) that greedy prediction gets right."""
    with torch.no_grad():
        logits = model(ids)  # (B, N, vocab)
    predicted = logits[:, span_length:-1].argmax(dim=-1)  # predictions for positions L+1 .. 2L-1
    return float((predicted == ids[:, span_length + 1:]).float().mean())


def coreference_scores(model, tokenizer, examples) -> dict[str, torch.Tensor]:
    """For each head, from "it": ``accuracy`` (argmax over all positions is the antecedent), ``weight`` (mean
    weight on the antecedent) and ``choice_accuracy`` (more weight on the antecedent than on the other noun)."""
    ids, mask = coreference_batch(tokenizer, examples)
    weights = attention_weights(model, ids, mask=mask).transpose(0, 1)  # (B, L, H, N, N)
    rows = torch.arange(len(examples))
    pronoun = torch.tensor([example.pronoun for example in examples])
    antecedent = torch.tensor([example.antecedent for example in examples])
    other = torch.tensor([sum(example.candidates) - example.antecedent for example in examples])
    from_pronoun = weights[rows, :, :, pronoun]  # (B, L, H, N): each sentence's "it" row
    on_antecedent = from_pronoun[rows, :, :, antecedent]  # (B, L, H)
    on_other = from_pronoun[rows, :, :, other]
    argmax_right = from_pronoun.argmax(dim=-1) == antecedent[:, None, None]  # (B, L, H)
    return {
        "accuracy": argmax_right.float().mean(dim=0),
        "weight": on_antecedent.mean(dim=0),
        "choice_accuracy": (on_antecedent > on_other).float().mean(dim=0),
    }


# ----------------------------------------------------------------------- padded batches through an encoder


def encoder_weights(model, ids, key_mask) -> torch.Tensor:
    """Run an encoder on a padded batch and stack every layer's weights -> (n_layers, B, n_heads, N, N)."""
    with torch.no_grad():
        model(ids, key_mask=key_mask)
    return torch.stack(list(model.last_weights))


def _real_queries(weights: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, N) float: 1 for a real query token, 0 for padding, broadcastable against (L, B, H, N)."""
    if key_mask.shape != weights.shape[1:2] + weights.shape[-1:]:
        raise ValueError(f"key_mask {tuple(key_mask.shape)} does not match weights {tuple(weights.shape)} "
                         "(n_layers, B, n_heads, N, N)")
    return key_mask.to(weights.dtype)[:, None, :]


def _mean_over_queries(values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Average (L, B, H, N) over the batch and the queries marked 1 in ``queries`` (B, 1, N) -> (L, H)."""
    queries = queries.expand(values.shape[1:])
    return (values * queries).sum(dim=(1, 3)) / queries.sum(dim=(0, 2))


def key_share(weights: torch.Tensor, key_mask: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Mean weight that a real query puts on the keys marked True in ``keys`` (B, N) -> (n_layers, n_heads)."""
    queries = _real_queries(weights, key_mask)
    if keys.shape != key_mask.shape:
        raise ValueError(f"keys {tuple(keys.shape)} must have the shape of key_mask {tuple(key_mask.shape)}")
    on_keys = (weights * keys.to(weights.dtype)[None, :, None, None, :]).sum(dim=-1)  # (L, B, H, N)
    return _mean_over_queries(on_keys, queries)


def attention_entropy(weights: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy in nats, -sum_j w_ij log w_ij, of the real queries' rows -> (n_layers, n_heads)."""
    terms = torch.where(weights > 0, -weights * weights.clamp(min=torch.finfo(weights.dtype).tiny).log(), 0.0)
    return _mean_over_queries(terms.sum(dim=-1), _real_queries(weights, key_mask))


def neighbour_scores(weights: torch.Tensor, key_mask: torch.Tensor, offset: int) -> torch.Tensor:
    """Share of real queries i whose largest weight is on key i + offset (offset -1: the previous token, +1: the
    next), over the queries whose neighbour is a real token -> (n_layers, n_heads)."""
    if offset == 0:
        raise ValueError("offset must be non-zero: -1 for the previous token, +1 for the next")
    n = weights.shape[-1]
    positions = torch.arange(n)
    neighbour = positions + offset
    inside = (neighbour >= 0) & (neighbour < n)
    has_neighbour = key_mask & inside & key_mask[:, neighbour.clamp(0, n - 1)]  # (B, N)
    hits = (weights.argmax(dim=-1) == neighbour).to(weights.dtype)  # (L, B, H, N)
    return _mean_over_queries(hits, has_neighbour.to(weights.dtype)[:, None, :])


def block_inputs(model, ids, key_mask) -> list[torch.Tensor]:
    """What each block of an encoder reads, (B, N, d_model) per layer: the embeddings after their LayerNorm, then
    each block's output, computed with the model's own modules one block at a time."""
    n = ids.shape[-1]
    with torch.no_grad():
        x = model.token_embedding[ids] + model.position_embedding[:n] + model.token_type_embedding[0]
        inputs = [model.embedding_norm(x)]
        for block in model.blocks[:-1]:
            inputs.append(block(inputs[-1], key_mask=key_mask))
    return inputs


def word_positions(pieces: list[str]) -> list[list[int]]:
    """The word-piece positions of each word of a WordPiece sentence ([CLS] ... [SEP]; "##" continues a word):
    ``word_positions(["[CLS]", "the", "wo", "##bbly", "shelf", "[SEP]"])`` -> [[1], [2, 3], [4]]."""
    words: list[list[int]] = []
    for position, piece in enumerate(pieces):
        if piece in ("[CLS]", "[SEP]", "[PAD]"):
            continue
        if piece.startswith("##") and words:
            words[-1].append(position)
        else:
            words.append([position])
    return words


def word_coreference_scores(model, tokenizer, examples) -> dict[str, torch.Tensor]:
    """``coreference_scores`` for an encoder with a word-piece ``tokenizer`` (``SentenceTokenizer``): the examples'
    word positions are mapped to pieces, and a word's weight is the sum over its pieces -> dict of (L, H)."""
    sentences = [" ".join(example.words) for example in examples]
    ids, key_mask = tokenizer(sentences)
    weights = encoder_weights(model, ids, key_mask).transpose(0, 1)  # (B, L, H, N, N)
    n = ids.shape[-1]
    accuracy, weight, choice = [], [], []
    for row, (example, pieces) in enumerate(zip(examples, tokenizer.tokens(sentences), strict=True)):
        words = word_positions(pieces)
        if len(words) != len(example.words):
            raise ValueError(f"{sentences[row]!r} splits into {len(words)} words, not {len(example.words)}")
        (pronoun,) = words[example.pronoun]  # "it" is one piece
        other = sum(example.candidates) - example.antecedent
        to_word = torch.zeros(len(words), n, dtype=weights.dtype)  # (words, N): sums a word's pieces
        for index, positions in enumerate(words):
            to_word[index, positions] = 1.0
        from_pronoun = weights[row, :, :, pronoun]  # (L, H, N)
        per_word = from_pronoun @ to_word.T  # (L, H, words)
        on_antecedent, on_other = per_word[..., example.antecedent], per_word[..., other]
        strongest = from_pronoun.argmax(dim=-1)  # (L, H): a piece position
        accuracy.append(torch.isin(strongest, torch.tensor(words[example.antecedent])).to(weights.dtype))
        weight.append(on_antecedent)
        choice.append((on_antecedent > on_other).to(weights.dtype))
    return {"accuracy": torch.stack(accuracy).mean(dim=0), "weight": torch.stack(weight).mean(dim=0),
            "choice_accuracy": torch.stack(choice).mean(dim=0)}
