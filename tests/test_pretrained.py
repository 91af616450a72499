"""The shipped checkpoints: they load, reproduce their recorded logits, decode the same with and without the KV
cache, and still show the attention patterns (and the thresholds) recorded beside them."""

import random
import shutil
import subprocess
import sys

import pytest
import torch

from attnlib import pretrained
from attnlib.pretrained import data, heads
from attnlib.pretrained.tokenizer import WordTokenizer

NAMES = pretrained.NAMES


class _Cached(dict):
    """name -> the value of ``function(name)``, computed the first time a test asks for it."""

    def __init__(self, function):
        super().__init__()
        self.function = function

    def __missing__(self, name):
        self[name] = self.function(name)
        return self[name]


@pytest.fixture(scope="module")
def loaded():
    return _Cached(pretrained.load)


@pytest.fixture(scope="module")
def described():
    return _Cached(pretrained.info)


# ------------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", NAMES)
def test_load_gives_an_eval_cpu_model_and_its_tokenizer(loaded, described, name):
    model, tokenizer = loaded[name]
    assert isinstance(tokenizer, WordTokenizer)
    assert not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert model.config() == described[name]["config"]
    assert model.vocab_size == len(tokenizer) == len(described[name]["vocabulary"])
    assert model.causal == (name != "tiny-encoder")  # the language models generate; the encoder reads both ways


@pytest.mark.parametrize("name", NAMES)
def test_recorded_logits_are_reproduced(loaded, described, name):
    """Tolerance: atol = rtol = 1e-4 (as recorded in the JSON); the logits are stored rounded to 5 decimals."""
    model, _ = loaded[name]
    reference = described[name]["reference"]
    with torch.no_grad():
        logits = model(torch.tensor(reference["ids"]))
    expected = torch.tensor(reference["logits"])
    assert logits.shape == expected.shape
    torch.testing.assert_close(logits, expected, **reference["tolerance"])


def test_the_lm_has_a_context_of_1024_positions_and_generates_past_the_trained_length(loaded):
    model, tokenizer = loaded["tiny-lm"]
    assert model.max_len >= 1024
    prompt = torch.tensor([tokenizer.encode("the dog chased the ball .")])
    ids = model.generate(prompt, 1024 - prompt.shape[-1], use_kv_cache=True)
    assert ids.shape == (1, 1024)
    assert torch.equal(ids[:, :prompt.shape[-1]], prompt)


@pytest.mark.parametrize("prompt", ["the apple fell on the ground because it was",
                                    "alice gave the book to bob . map kite cup lamp map kite"])
def test_greedy_generation_is_the_same_with_and_without_the_kv_cache(loaded, prompt):
    model, tokenizer = loaded["tiny-lm"]
    ids = torch.tensor([tokenizer.encode(prompt)])
    with_cache = model.generate(ids, 150, use_kv_cache=True)  # crosses the 128 trained positions
    without_cache = model.generate(ids, 150, use_kv_cache=False)
    assert torch.equal(with_cache, without_cache)


def test_loading_does_not_import_the_training_code():
    code = ("import sys; from attnlib import pretrained; pretrained.load('tiny-lm'); pretrained.load('tiny-encoder');"
            "assert 'attnlib.pretrained.train' not in sys.modules, sorted(sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


# -------------------------------------------------------------------------------- measured head behaviour


def test_lm_previous_token_and_induction_heads_meet_their_thresholds(loaded, described):
    model, tokenizer = loaded["tiny-lm"]
    measured, thresholds = described["tiny-lm"]["measurements"], described["tiny-lm"]["thresholds"]
    probe = heads.repeated_span_batch(tokenizer, **measured["probe"])
    previous = heads.previous_token_scores(model, probe)
    induction = heads.induction_scores(model, probe, measured["probe"]["span_length"])
    assert previous.shape == induction.shape == (len(model.blocks), model.blocks[0].attention.n_heads)
    assert previous.max() >= thresholds["previous_token"]
    assert induction.max() >= thresholds["induction"]
    assert heads.copying_accuracy(model, probe, measured["probe"]["span_length"]) >= thresholds["copying_accuracy"]
    # The recorded best heads are the ones measured now.
    assert list(heads.best_head(previous)) == measured["previous_token"]["best_head"]
    assert list(heads.best_head(induction)) == measured["induction"]["best_head"]


def test_lm_random_weights_fail_the_thresholds(described, loaded):
    """The thresholds mean something: a model with the same shape but untrained weights stays far below."""
    from attnlib.torch import TransformerLM

    _, tokenizer = loaded["tiny-lm"]
    torch.manual_seed(0)
    untrained = TransformerLM(**described["tiny-lm"]["config"]).eval()
    measured, thresholds = described["tiny-lm"]["measurements"], described["tiny-lm"]["thresholds"]
    probe = heads.repeated_span_batch(tokenizer, **measured["probe"])
    assert heads.induction_scores(untrained, probe, measured["probe"]["span_length"]).max() < thresholds["induction"]
    assert heads.previous_token_scores(untrained, probe).max() < thresholds["previous_token"]


def test_encoder_coreference_head_meets_its_threshold_on_held_out_sentences(loaded, described):
    model, tokenizer = loaded["tiny-encoder"]
    measured, thresholds = described["tiny-encoder"]["measurements"], described["tiny-encoder"]["thresholds"]
    examples = heads.held_out_coreference_examples(**measured["held_out_sentences"])
    scores = heads.coreference_scores(model, tokenizer, examples)
    assert scores["accuracy"].max() >= thresholds["coreference_accuracy"]
    layer, head = heads.best_head(scores["accuracy"])
    assert [layer, head] == measured["coreference"]["best_head"]
    # The same head with the nouns in the other order: it follows the adjective, not the position.
    reversed_examples = heads.held_out_coreference_examples(**measured["held_out_sentences"], reverse_rate=1.0)
    reversed_scores = heads.coreference_scores(model, tokenizer, reversed_examples)
    assert reversed_scores["accuracy"][layer, head] >= thresholds["coreference_accuracy_reversed_order"]


def test_encoder_fills_in_the_pronoun_that_agrees_with_the_antecedent(loaded, described):
    from attnlib.pretrained.train import pronoun_prediction_accuracy

    model, tokenizer = loaded["tiny-encoder"]
    threshold = described["tiny-encoder"]["thresholds"]["pronoun_prediction_accuracy"]
    assert pronoun_prediction_accuracy(model, tokenizer, n=100) >= threshold


def test_the_explainers_sentence_pair(loaded, described):
    """ "ripe" sends "it" to "apple", "hard" to "ground", in the head picked by measurement."""
    model, tokenizer = loaded["tiny-encoder"]
    layer, head = described["tiny-encoder"]["measurements"]["coreference"]["best_head"]
    for adjective, antecedent in (("ripe", "apple"), ("hard", "ground")):
        words = tokenizer.tokenize(f"the apple fell on the ground because it was {adjective} .")
        weights = heads.attention_weights(model, torch.tensor([tokenizer.encode(" ".join(words))]))
        assert words[int(weights[layer, 0, head, words.index("it")].argmax())] == antecedent


def test_held_out_sentences_never_occur_in_training_data():
    rng = random.Random(0)
    seen = set()
    for _ in range(3000):
        example = data.coreference_example(rng)
        seen.add(" ".join(example.words))
    held_out = {" ".join(example.words) for example in heads.held_out_coreference_examples(300)}
    assert held_out and not held_out & seen


def test_coreference_examples_point_at_the_noun_the_adjective_fits():
    rng = random.Random(1)
    for _ in range(200):
        example = data.coreference_example(rng, plural_rate=0.5)
        adjective = example.words[example.pronoun + 2]
        family = next(family for family in data.COREFERENCE_FAMILIES
                      if adjective in family["first_adjectives"] + family["second_adjectives"])
        kind = family["first"] if adjective in family["first_adjectives"] else family["second"]
        antecedent = example.words[example.antecedent]
        assert antecedent in kind or antecedent in kind.values()
        plural = example.plural[example.candidates.index(example.antecedent)]
        assert example.words[example.pronoun:example.pronoun + 2] == (["they", "were"] if plural else ["it", "was"])


def test_masked_examples_corrupt_the_word_after_because_and_ask_for_the_original():
    rng = random.Random(3)
    vocabulary = data.vocabulary()
    words = [word for word in vocabulary if word not in data.PUNCTUATION]
    kinds = {"noun shown as a pronoun": 0, "pronoun swapped": 0, "hidden": 0}
    for _ in range(400):
        example = data.masked_example(rng, words, coreference_rate=1.0, context_rate=0.5)
        slot = example.pronoun
        original, shown = example.targets[slot], example.inputs[slot]
        assert original is not None  # always predicted, whatever is shown there
        antecedent = example.targets[example.antecedent] or example.inputs[example.antecedent]
        assert original in ("it", "they") or original == antecedent  # "because apple was ripe"
        if original not in ("it", "they") and shown in ("it", "they"):
            kinds["noun shown as a pronoun"] += 1
            verb = example.targets[slot + 1] or example.inputs[slot + 1]
            assert shown == ("it" if verb == "was" else "they")  # the pronoun that agrees with the noun
        elif original in ("it", "they") and shown in ("it", "they") and shown != original:
            kinds["pronoun swapped"] += 1
        elif shown == "<mask>":
            kinds["hidden"] += 1
        # Every target is the word the sentence really had; uncorrupted positions are not predicted.
        for given, target in zip(example.inputs, example.targets, strict=True):
            assert target is None or target in vocabulary
            assert target is not None or given != "<mask>"
    assert all(count > 20 for count in kinds.values()), kinds


def test_the_encoder_recipe_has_no_loss_on_attention():
    from attnlib.pretrained import train

    recipe = train.RECIPES["tiny-encoder"]
    assert not {key for key in recipe if "pointing" in key}
    assert recipe["objective"].startswith("masked-token prediction only")
    assert described_recipe()["objective"] == recipe["objective"]


def described_recipe():
    return pretrained.info("tiny-encoder")["recipe"]


# --------------------------------------------------------------------------------------- broken checkpoints


@pytest.fixture
def copied(tmp_path):
    for name in NAMES:
        for path in pretrained.checkpoint_paths(name):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


def test_copies_load(copied):
    model, _ = pretrained.load("tiny-lm", directory=copied)
    assert model.max_len >= 1024


@pytest.mark.parametrize("suffix", [".pt", ".json"])
def test_a_missing_file_is_named(copied, suffix):
    path = copied / f"tiny-lm{suffix}"
    path.unlink()
    with pytest.raises(FileNotFoundError, match=str(path)):
        pretrained.load("tiny-lm", directory=copied)


def test_a_truncated_weights_file_is_named(copied):
    path = copied / "tiny-encoder.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=rf"{path}.*could not be read"):
        pretrained.load("tiny-encoder", directory=copied)


def test_weights_of_another_shape_are_named(copied):
    shutil.copy(copied / "tiny-encoder.pt", copied / "tiny-lm.pt")
    path = copied / "tiny-lm.pt"
    with pytest.raises(ValueError, match=rf"{path}.*does not match"):
        pretrained.load("tiny-lm", directory=copied)


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"config": {"vocab_size": "many"}, "vocabulary": []}'])
def test_a_broken_description_is_named(copied, text):
    path = copied / "tiny-lm.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)):
        pretrained.load("tiny-lm", directory=copied)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="tiny-lm"):
        pretrained.load("gpt-5")


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_and_unknown_words():
    tokenizer = WordTokenizer(data.vocabulary())
    text = "the apple fell on the ground because it was ripe."
    assert tokenizer.tokenize(text) == ["the", "apple", "fell", "on", "the", "ground", "because", "it", "was",
                                        "ripe", "."]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert tokenizer.encode("The zebra") == [tokenizer.token_to_id["the"], tokenizer.unk_id]
    assert tokenizer.vocab[:3] == ["<pad>", "<unk>", "<mask>"]
    assert tokenizer.tokenize("the <mask> fell") == ["the", "<mask>", "fell"]
    assert WordTokenizer.from_vocabulary(tokenizer.vocab).vocab == tokenizer.vocab


def test_tokenizer_rejects_bad_input():
    tokenizer = WordTokenizer(["a", "b"])
    with pytest.raises(TypeError, match="text"):
        tokenizer.encode(3)
    with pytest.raises(ValueError, match="ids"):
        tokenizer.decode([0, 99])
    with pytest.raises(ValueError, match="duplicates"):
        WordTokenizer(["a", "a"])
    with pytest.raises(ValueError, match="vocab must start"):
        WordTokenizer.from_vocabulary(["a", "b"])


def test_training_forward_at_offset_zero_is_the_models_forward(loaded):
    from attnlib.pretrained.train import logits_at_offsets

    model, tokenizer = loaded["tiny-lm"]
    ids = torch.tensor([tokenizer.encode("the dog chased the ball . the cat sat on the bed .")] * 2)
    with torch.no_grad():
        torch.testing.assert_close(logits_at_offsets(model, ids, torch.zeros(2, dtype=torch.long)), model(ids))
