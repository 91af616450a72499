"""Training text generated in code: a small grammar of sentences, repeated random spans, and "it" sentences.

Nothing is downloaded. Every generator takes a ``random.Random`` so a seed fixes the whole corpus.

* ``sentence`` -- simple English sentences ("the old dog chased a red ball .").
* ``coreference_example`` -- the explainer's kind of sentence, "the apple fell on the ground because it was
  ripe", where the adjective after "it" decides which noun "it" means (ripe -> apple, hard -> ground).
* ``language_model_sequence`` -- sentences with a random span of words pasted in twice. The second copy can only
  be predicted by finding the first one, which is what makes a previous-token head and an induction head appear.
* ``masked_example`` -- a sentence with some words hidden behind ``<mask>`` or replaced, for the encoder's
  masked-token training; the word after "because" is always among them, so "it" has to be checked.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NAMES = ["alice", "bob", "carol", "dave", "emma", "frank", "grace", "henry"]
ANIMALS = ["dog", "cat", "fox", "horse", "cow", "goat", "rabbit", "mouse"]
THINGS = ["ball", "book", "box", "cake", "hat", "key", "cup", "lamp", "chair", "kite", "coin", "map"]
ADJECTIVES = ["big", "small", "red", "blue", "old", "new", "happy", "quiet", "green", "little"]
TRANSITIVE = ["saw", "chased", "found", "liked", "took", "watched", "pushed", "followed", "carried", "wanted"]
INTRANSITIVE = ["slept", "ran", "sat", "jumped", "waited", "stood", "played", "rested"]
PREPOSITIONS = ["on", "under", "near", "behind", "beside"]
PLACES = ["table", "bed", "tree", "house", "garden", "hill", "wall", "door"]

# Each family pairs two kinds of noun with verbs that link them; an adjective fits only one kind, so it decides
# which of the two nouns "it" refers to. ``verbs`` put the first kind first ("the apple fell on the ground"),
# ``reverse_verbs`` the second kind first ("the floor caught the apple"), so word order alone cannot answer.
# Nouns map to their plural (None: only the singular is used); a plural antecedent is "they were" instead of
# "it was", which gives the encoder's training a reason to resolve the pronoun (see ``masked_example``).
COREFERENCE_FAMILIES = [
    {
        "first": {"apple": "apples", "pear": "pears", "plum": "plums", "peach": "peaches", "mango": "mangoes",
                  "lemon": "lemons"},
        "second": {"ground": None, "floor": "floors", "road": "roads", "path": "paths", "grass": None,
                   "step": "steps"},
        "verbs": ["fell on", "landed on", "rolled onto", "dropped onto"],
        "reverse_verbs": ["caught", "was under", "was below", "stopped"],
        "first_adjectives": ["ripe", "rotten", "juicy", "sweet", "soft"],
        "second_adjectives": ["hard", "wet", "slippery", "muddy", "dusty"],
    },
    {
        "first": {"dog": "dogs", "cat": "cats", "fox": "foxes", "horse": "horses", "cow": "cows", "goat": "goats"},
        "second": {"street": "streets", "river": "rivers", "bridge": "bridges", "stream": "streams",
                   "canal": "canals", "lane": "lanes"},
        "verbs": ["did not cross", "would not cross", "stopped at", "turned back from"],
        "reverse_verbs": ["stopped", "blocked", "held back", "slowed"],
        "first_adjectives": ["tired", "scared", "lazy", "hungry", "sleepy"],
        "second_adjectives": ["busy", "wide", "deep", "flooded", "noisy"],
    },
    {
        "first": {"truck": "trucks", "bus": "buses", "tractor": "tractors", "van": "vans", "wagon": "wagons",
                  "lorry": "lorries"},
        "second": {"gate": "gates", "tunnel": "tunnels", "arch": "arches", "doorway": "doorways",
                   "passage": "passages", "barrier": "barriers"},
        "verbs": ["could not pass", "got stuck in", "did not fit through", "stopped at"],
        "reverse_verbs": ["stopped", "blocked", "held back", "turned back"],
        "first_adjectives": ["heavy", "loaded", "tall", "broad", "huge"],
        "second_adjectives": ["narrow", "low", "locked", "jammed", "closed"],
    },
    {
        "first": {"boat": "boats", "ship": "ships", "canoe": "canoes", "raft": "rafts", "yacht": "yachts",
                  "ferry": "ferries"},
        "second": {"rock": "rocks", "reef": "reefs", "pier": "piers", "buoy": "buoys", "log": "logs",
                   "iceberg": "icebergs"},
        "verbs": ["hit", "struck", "crashed into", "scraped"],
        "reverse_verbs": ["damaged", "wrecked", "sank", "cracked"],
        "first_adjectives": ["leaky", "fast", "flimsy", "overloaded", "unsteered"],
        "second_adjectives": ["sharp", "jagged", "hidden", "submerged", "pointed"],
    },
    {
        "first": {"vase": "vases", "jar": "jars", "bottle": "bottles", "clock": "clocks", "dictionary": "dictionaries",
                  "bowl": "bowls"},
        "second": {"shelf": None, "ledge": "ledges", "desk": "desks", "counter": "counters", "rack": "racks",
                   "cabinet": "cabinets"},
        "verbs": ["fell off", "slid off", "toppled from", "dropped from"],
        "reverse_verbs": ["dropped", "shed", "lost", "tipped over"],
        "first_adjectives": ["fragile", "bulky", "round", "slippy", "unbalanced"],
        "second_adjectives": ["crooked", "tilted", "loose", "slanted", "wobbly"],
    },
]
PRONOUNS = {"singular": ("it", "was"), "plural": ("they", "were")}
PUNCTUATION = [".", ","]
FUNCTION_WORDS = ["the", "a", "to", "and", "then", "because", "it", "was", "they", "were", "gave"]


def vocabulary() -> list[str]:
    """Every word the generators can produce, in a fixed order (the tokenizer's ids follow it)."""
    words = list(PUNCTUATION + FUNCTION_WORDS + NAMES + ANIMALS + THINGS + ADJECTIVES + TRANSITIVE
                 + INTRANSITIVE + PREPOSITIONS + PLACES)
    for family in COREFERENCE_FAMILIES:
        for key in ("first", "second"):
            words += [form for pair in family[key].items() for form in pair if form]
        words += family["first_adjectives"] + family["second_adjectives"]
        for verb in family["verbs"] + family["reverse_verbs"]:
            words += verb.split()
    return list(dict.fromkeys(words))  # drop repeats, keep first-seen order


# ---------------------------------------------------------------------------------------------- sentences


def _noun_phrase(rng: random.Random) -> list[str]:
    words = [rng.choice(["the", "a"])]
    if rng.random() < 0.4:
        words.append(rng.choice(ADJECTIVES))
    words.append(rng.choice(ANIMALS + THINGS))
    return words


def sentence(rng: random.Random) -> list[str]:
    """One sentence from a small grammar, as a list of words ending in '.'."""
    form = rng.randrange(5)
    if form == 0:
        words = _noun_phrase(rng) + [rng.choice(TRANSITIVE)] + _noun_phrase(rng)
    elif form == 1:
        words = _noun_phrase(rng) + [rng.choice(INTRANSITIVE), rng.choice(PREPOSITIONS), "the", rng.choice(PLACES)]
    elif form == 2:
        giver, taker = rng.sample(NAMES, 2)
        words = [giver, "gave", "the", rng.choice(THINGS), "to", taker]
    elif form == 3:
        words = [rng.choice(NAMES), rng.choice(TRANSITIVE)] + _noun_phrase(rng) + ["and", "then"]
        words += [rng.choice(INTRANSITIVE)]
    else:
        words = coreference_example(rng, plural_rate=0.3, reverse_rate=0.5).words[:-1]
    return words + ["."]


@dataclass(frozen=True)
class CoreferenceExample:
    """A sentence with a pronoun, the positions of its two candidate nouns, and which one it refers to."""

    words: list[str]
    pronoun: int  # position of "it" (or "they"); the verb "was" / "were" follows it
    candidates: tuple[int, int]  # positions of the first and the second noun
    antecedent: int  # position of the noun the pronoun refers to (one of the candidates)
    plural: tuple[bool, bool] = (False, False)  # whether the nouns at ``candidates`` are plural

    @property
    def text(self) -> str:
        return " ".join(self.words[:-1]) + " ."


def is_held_out(family: int, first: str, second: str, adjective: str) -> bool:
    """About one (noun, noun, adjective) combination in five is kept out of training, for measuring on."""
    chosen = COREFERENCE_FAMILIES[family]
    adjectives = chosen["first_adjectives"] + chosen["second_adjectives"]
    code = list(chosen["first"]).index(first) + 2 * list(chosen["second"]).index(second)
    return (code + 3 * adjectives.index(adjective)) % 5 == 0


def coreference_example(rng: random.Random, *, family: int | None = None, refers_to_first: bool | None = None,
                        plural_rate: float = 0.0, reverse_rate: float = 0.0,
                        split: str = "train") -> CoreferenceExample:
    """ "the apple fell on the ground because it was ripe ." with the antecedent chosen by the adjective.

    Each noun is plural with probability ``plural_rate`` (if it has a plural); the pronoun and verb agree with the
    antecedent. ``split="train"`` never returns a held-out combination of words, ``"held_out"`` only those.
    """
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    family = rng.randrange(len(COREFERENCE_FAMILIES)) if family is None else family
    chosen = COREFERENCE_FAMILIES[family]
    if refers_to_first is None:
        refers_to_first = rng.random() < 0.5
    while True:  # redraw until the combination belongs to the requested split
        first, second = rng.choice(list(chosen["first"])), rng.choice(list(chosen["second"]))
        adjective = rng.choice(chosen["first_adjectives"] if refers_to_first else chosen["second_adjectives"])
        if is_held_out(family, first, second, adjective) == (split == "held_out"):
            break
    plural = tuple(bool(chosen[kind][noun]) and rng.random() < plural_rate
                   for noun, kind in ((first, "first"), (second, "second")))
    nouns = [chosen[kind][noun] if is_plural else noun
             for noun, kind, is_plural in ((first, "first", plural[0]), (second, "second", plural[1]))]
    pronoun, verb_to_be = PRONOUNS["plural" if plural[0 if refers_to_first else 1] else "singular"]
    if rng.random() < 1.0 - reverse_rate:  # "the apple fell on the ground ..."
        order, verb = (0, 1), rng.choice(chosen["verbs"]).split()
    else:  # "the ground caught the apple ..."
        order, verb = (1, 0), rng.choice(chosen["reverse_verbs"]).split()
    words = ["the", nouns[order[0]], *verb, "the", nouns[order[1]], "because", pronoun, verb_to_be, adjective, "."]
    positions = {order[0]: 1, order[1]: 3 + len(verb)}  # kind (0 first, 1 second) -> position in the sentence
    return CoreferenceExample(
        words=words,
        pronoun=words.index(pronoun),
        candidates=(1, 3 + len(verb)),
        antecedent=positions[0 if refers_to_first else 1],
        plural=(plural[order[0]], plural[order[1]]),
    )


# ------------------------------------------------------------------------------------ language-model corpus


def random_span(rng: random.Random, words: list[str], length: int) -> list[str]:
    """``length`` words drawn uniformly from ``words``: text with no grammar, so only copying predicts it."""
    return [rng.choice(words) for _ in range(length)]


def language_model_sequence(rng: random.Random, length: int, words: list[str], *, n_spans: int = 2,
                            span_lengths: tuple[int, int] = (4, 20)) -> list[str]:
    """``length`` words: sentences with ``n_spans`` random spans (lengths in ``span_lengths``, inclusive), each
    pasted in 2 or 3 times."""
    pieces: list[list[str]] = []
    filled = 0
    for _ in range(n_spans):
        span = random_span(rng, words, rng.randint(*span_lengths))
        copies = 3 if rng.random() < 0.25 else 2
        pieces += [span] * copies
        filled += copies * len(span)
    rng.shuffle(pieces)  # copies of different spans interleave, so the gap between copies varies
    while filled < length:  # then sentences go in at random places between the spans
        words_of_sentence = sentence(rng)
        pieces.insert(rng.randrange(len(pieces) + 1), words_of_sentence)
        filled += len(words_of_sentence)
    sequence = [word for piece in pieces for word in piece]
    return sequence[:length]


# ------------------------------------------------------------------------------------------ encoder corpus


@dataclass(frozen=True)
class MaskedExample:
    """Input words, some hidden or replaced; ``targets[i]`` is the original word at a chosen position, else None."""

    inputs: list[str]
    targets: list[str | None]
    pronoun: int | None = None  # in an "it" sentence, the position of the pronoun (or of the noun written there) ...
    antecedent: int | None = None  # ... and of the noun it refers to


# A replaced word becomes its partner here if it has one, so a visible "it" or "was" may be wrong.
CONFUSABLE = {"it": "they", "they": "it", "was": "were", "were": "was"}


def masked_example(rng: random.Random, words: list[str], *, mask_token: str = "<mask>", mask_rate: float = 0.15,
                   coreference_rate: float = 0.9, plural_rate: float = 0.5, context_rate: float = 0.3,
                   reverse_rate: float = 0.5, repeat_rate: float = 0.5, pronoun_rate: float = 1.0,
                   pronoun_mask_rate: float = 0.5, pronoun_swap_rate: float = 0.25, verb_mask_rate: float = 1.0,
                   noun_to_pronoun_rate: float = 0.8, noun_mask_rate: float = 0.1) -> MaskedExample:
    """One training example for masked-token prediction: corrupt some words, the model predicts the originals.

    The text is an "it" sentence (probability ``coreference_rate``) or a grammar sentence, sometimes after another
    sentence (``context_rate``) so that positions vary. Each word is chosen with probability ``mask_rate``; a
    chosen word becomes ``mask_token`` (80%), another word (10%: its partner in ``CONFUSABLE`` or a random one of
    ``words``) or stays (10%) -- BERT's recipe.

    In "it" sentences the word after "because" is chosen with probability ``pronoun_rate`` (a raised selection
    rate for one position, as whole-word masking raises it for the pieces of a word), and corrupted by what it is.
    With probability ``repeat_rate`` the sentence names the antecedent again instead of using a pronoun
    ("the apple fell on the ground because apple was ripe"); such a noun is mostly replaced by the pronoun that
    stands for it (``noun_to_pronoun_rate``: "apple" -> "it", "apples" -> "they"), else hidden
    (``noun_mask_rate``) or kept. A real pronoun is hidden (``pronoun_mask_rate``, and then the verb after it too
    with probability ``verb_mask_rate``), swapped to the other number (``pronoun_swap_rate``) or kept.

    So a visible "it" may stand for "apple" or for "ground", and the model, asked for the original word, has to
    find which noun it stands for -- the adjective after it decides. Nothing else points the model at that noun.
    """
    example = None
    if rng.random() < coreference_rate:
        example = coreference_example(rng, plural_rate=plural_rate, reverse_rate=reverse_rate)
    text = list(example.words) if example else sentence(rng)
    repeated = example is not None and rng.random() < repeat_rate
    if repeated:
        text[example.pronoun] = text[example.antecedent]  # "... because apple was ripe"
    prefix = sentence(rng) if rng.random() < context_rate else []
    text = prefix + text
    chosen = {index for index in range(len(text)) if rng.random() < mask_rate}
    slot = None
    if example and rng.random() < pronoun_rate:
        slot = len(prefix) + example.pronoun
        chosen.discard(slot)
    if not chosen and slot is None:
        chosen = {rng.randrange(len(text))}
    inputs = list(text)
    targets: list[str | None] = [word if index in chosen or index == slot else None for index, word in enumerate(text)]
    for index in sorted(chosen):
        draw = rng.random()
        if draw < 0.8:
            inputs[index] = mask_token
        elif draw < 0.9:
            inputs[index] = CONFUSABLE.get(text[index]) or rng.choice(words)
    if slot is not None:
        draw = rng.random()
        if repeated:  # the noun: mostly shown as the pronoun that agrees with it (the verb after it tells which)
            if draw < noun_to_pronoun_rate:
                inputs[slot] = PRONOUNS["singular" if text[slot + 1] == "was" else "plural"][0]
            elif draw < noun_to_pronoun_rate + noun_mask_rate:
                inputs[slot] = mask_token
        elif draw < pronoun_mask_rate:
            inputs[slot] = mask_token
            if rng.random() < verb_mask_rate:  # "<mask> <mask> ripe": the number must come from the antecedent
                inputs[slot + 1], targets[slot + 1] = mask_token, text[slot + 1]
        elif draw < pronoun_mask_rate + pronoun_swap_rate:
            inputs[slot] = CONFUSABLE[text[slot]]
    if example is None:
        return MaskedExample(inputs, targets)
    return MaskedExample(inputs, targets, len(prefix) + example.pronoun, len(prefix) + example.antecedent)
