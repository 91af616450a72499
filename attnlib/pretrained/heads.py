"""Score every (layer, head) of a model for a behaviour, so a chapter picks heads by measurement.

Each ``*_scores`` function returns a tensor shaped (n_layers, n_heads); ``best_head(scores)`` gives the
(layer, head) with the highest score and ``ranked_heads(scores)`` all of them, best first.

* previous-token: how much attention position i puts on position i - 1.
* induction: on a random span written twice, how much a token in the second copy attends to the token *after*
  its earlier occurrence -- the position whose word comes next, which is how a model copies a sequence it saw.
* coreference: from "it" in "the apple fell on the ground because it was ripe", does the head's largest weight
  land on the noun that "it" refers to (accuracy over sentences), and how much weight goes there on average.
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
