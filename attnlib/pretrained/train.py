"""Train the shipped models from scratch: ``python -m attnlib.pretrained.train tiny-lm`` (or ``tiny-encoder``,
``tiny-lm-rope``).

Seeded and deterministic on CPU with 2 threads. Writes ``checkpoints/<name>.pt`` (the state_dict) and
``checkpoints/<name>.json`` (config, vocabulary, recipe with its seeds, final loss, head measurements and their
thresholds, reference logits), then regenerates ``checkpoints/README.md`` from the JSON files.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import random
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from attnlib import finite_checks_set_to
from attnlib.torch import TransformerLM

from . import CHECKPOINTS, data, heads
from .tokenizer import WordTokenizer

# Everything that defines a training run. ``model`` holds TransformerLM's constructor arguments (without
# vocab_size, which is the tokenizer's). ``thresholds`` are fixed before training; a run that misses one fails.
RECIPES = {
    "tiny-lm": {
        "model": {"d_model": 64, "n_heads": 4, "d_ff": 256, "n_layers": 2, "max_len": 1024, "causal": True},
        "data_seed": 1234, "init_seed": 0, "steps": 1500, "batch_size": 32, "sequence_length": 128,
        "learning_rate": 3e-3, "warmup_steps": 50, "embedding_std": 1.0,
        # Curriculum: the first steps see only repeated random spans, which is what makes the induction head
        # form quickly; afterwards 30% of rows are such spans and the rest sentences with spans pasted in twice.
        "repeat_only_steps": 400, "repeat_only_fraction": 0.3, "span_lengths": [4, 20],
        # After the first phase, this share of rows is placed at a random offset in [0, max_len - 128].
        "shifted_fraction": 0.25,
        "thresholds": {"previous_token": 0.35, "induction": 0.5, "copying_accuracy": 0.8},
    },
    "tiny-lm-rope": {
        # tiny-lm as Llama-style models are built: rotary positions instead of a learned table, and grouped-query
        # attention (4 query heads share 2 key/value heads). RoPE scores depend only on distances, so there is no
        # offset to train (shifted_fraction 0); max_len is the training length, a declared limit that the length
        # measurement raises with extend_context. 800 steps, not tiny-lm's 1500, so that the run fits in 3 minutes
        # on 2 cores; the induction head has formed by then (its thresholds below hold).
        "model": {"d_model": 64, "n_heads": 4, "n_kv_heads": 2, "positional": "rope", "d_ff": 256, "n_layers": 2,
                  "max_len": 128, "causal": True},
        "data_seed": 1234, "init_seed": 0, "steps": 800, "batch_size": 32, "sequence_length": 128,
        "learning_rate": 3e-3, "warmup_steps": 50, "embedding_std": 1.0,
        "repeat_only_steps": 400, "repeat_only_fraction": 0.3, "span_lengths": [4, 20], "shifted_fraction": 0.0,
        "thresholds": {"previous_token": 0.35, "induction": 0.5, "copying_accuracy": 0.8},
    },
    "tiny-encoder": {
        # Two heads per layer: with four, the head that looks up the antecedent formed later (not within these
        # steps in the runs tried), as the work spread over more heads.
        "model": {"d_model": 64, "n_heads": 2, "d_ff": 256, "n_layers": 2, "max_len": 32, "causal": False},
        "data_seed": 4321, "init_seed": 0, "steps": 3000, "batch_size": 64,
        "learning_rate": 3e-3, "warmup_steps": 50, "embedding_std": 1.0,
        # The arguments of ``data.masked_example``: which sentences, and how each word is corrupted.
        "corruption": {"mask_rate": 0.15, "coreference_rate": 0.9, "plural_rate": 0.5, "context_rate": 0.3,
                       "reverse_rate": 0.5, "repeat_rate": 0.5, "pronoun_rate": 1.0, "pronoun_mask_rate": 0.5,
                       "pronoun_swap_rate": 0.25, "verb_mask_rate": 1.0, "noun_to_pronoun_rate": 0.8,
                       "noun_mask_rate": 0.1},
        # Nothing acts on the attention weights: the head that sends "it" to its antecedent is found afterwards,
        # by measurement on held-out sentences.
        "objective": "masked-token prediction only (cross-entropy of the original word at each corrupted "
                     "position); the word after \"because\" in \"it\" sentences is always corrupted, and is "
                     "sometimes the antecedent noun shown as \"it\" / \"they\"",
        "thresholds": {"coreference_accuracy": 0.8, "coreference_accuracy_reversed_order": 0.8,
                       "pronoun_prediction_accuracy": 0.8},
    },
}
PROBE = {"n_sequences": 32, "span_length": 24, "seed": 99}  # the induction / previous-token probe batch
N_HELD_OUT = 300  # held-out "it" sentences for the coreference measurement
REFERENCE_TEXTS = {
    "tiny-lm": ["the apple fell on the ground because it was ripe . the dog chased a red ball .",
                "alice gave the book to bob . kite lamp cup map kite lamp cup map kite lamp ."],
    "tiny-encoder": ["the apple fell on the ground because it was ripe .",
                     "the apple fell on the ground because it was hard ."],
}
REFERENCE_TEXTS["tiny-lm-rope"] = REFERENCE_TEXTS["tiny-lm"]  # the same words through the rotary twin
REFERENCE_TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def learning_rate(step: int, recipe: dict) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    peak, warmup, total = recipe["learning_rate"], recipe["warmup_steps"], recipe["steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def new_model(vocab_size: int, recipe: dict) -> TransformerLM:
    torch.manual_seed(recipe["init_seed"])
    model = TransformerLM(vocab_size, **recipe["model"])
    with torch.no_grad():
        # Unit-scale embeddings, as nn.Embedding starts. With the class's default of 0.02 the first layer's output
        # swamps the token identity in the residual stream, and the induction head takes many times longer to form.
        model.token_embedding.normal_(0.0, recipe["embedding_std"])
        if model.positional == "learned":
            model.position_embedding.normal_(0.0, recipe["embedding_std"])
    return model


def optimise(model, optimizer, loss, step: int, recipe: dict) -> None:
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(step, recipe)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()


# ------------------------------------------------------------------------------------------------ tiny-lm


def logits_at_offsets(model: TransformerLM, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The model's forward pass with row b of ``ids`` placed at positions offsets[b] .. offsets[b] + n - 1.

    Rows at random offsets give every one of the max_len position embeddings some training, so generation
    past the training length keeps working. With all offsets 0 this is exactly ``model(ids)``. A model without a
    learned table has no offsets to train: it only ever sees distances (RoPE, ALiBi), so it runs as it is.
    """
    if model.positional != "learned":
        if bool(offsets.any()):
            raise ValueError(f"positional={model.positional!r} has no position table to place rows at offsets in")
        return model(ids)
    positions = offsets[:, None] + torch.arange(ids.shape[-1])  # (B, n)
    x = model.token_embedding[ids] + model.position_embedding[positions]  # (B, n, d_model)
    for block in model.blocks:
        x = block(x, causal=model.causal)
    return model.norm(x) @ model.head  # (B, n, vocab)


def language_model_batch(rng: random.Random, tokenizer: WordTokenizer, recipe: dict, step: int) -> torch.Tensor:
    """(B, sequence_length + 1) ids: inputs are [:, :-1], targets [:, 1:]."""
    words = [word for word in tokenizer.words() if word not in data.PUNCTUATION]
    length = recipe["sequence_length"] + 1
    rows = []
    for _ in range(recipe["batch_size"]):
        if step < recipe["repeat_only_steps"] or rng.random() < recipe["repeat_only_fraction"]:
            span = data.random_span(rng, words, rng.randint(*recipe["span_lengths"]))
            sequence = (span * (length // len(span) + 1))[:length]  # the span again and again
        else:
            sequence = data.language_model_sequence(rng, length, words, span_lengths=recipe["span_lengths"])
        rows.append(tokenizer.encode(" ".join(sequence)))
    return torch.tensor(rows)


def report(step: int, loss: float, recipe: dict, log_every: int, monitor, model, tokenizer) -> None:
    """Print the loss every ``log_every`` steps and at the last one, with the monitor's note if there is one."""
    if step % log_every == 0 or step == recipe["steps"] - 1:
        note = "" if monitor is None else "  " + monitor(model, tokenizer)
        print(f"step {step:5d}  loss {loss:.3f}{note}", flush=True)


def train_language_model(recipe: dict, *, log_every: int = 100, monitor=None):
    tokenizer = WordTokenizer(data.vocabulary())
    model = new_model(len(tokenizer), recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=0.0, betas=(0.9, 0.98))
    rng = random.Random(recipe["data_seed"])
    window = recipe["sequence_length"]
    losses = []
    with finite_checks_set_to(False):  # the scans cost a third of a step; the loss itself is checked instead
        for step in range(recipe["steps"]):
            _language_model_step(model, optimizer, tokenizer, recipe, rng, window, step, losses)
            report(step, losses[-1], recipe, log_every, monitor, model, tokenizer)
    model.eval()
    return model, tokenizer, losses


def _language_model_step(model, optimizer, tokenizer, recipe, rng, window, step, losses) -> None:
    """One optimiser step of the language model on a fresh batch; its loss is appended to ``losses``."""
    batch = language_model_batch(rng, tokenizer, recipe, step)
    shifted = step >= recipe["repeat_only_steps"]
    offsets = torch.tensor([
        rng.randrange(model.max_len - window + 1) if shifted and rng.random() < recipe["shifted_fraction"] else 0
        for _ in range(len(batch))
    ])
    logits = logits_at_offsets(model, batch[:, :-1], offsets)  # (B, n, vocab)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"the training loss is {loss.item()} at step {step}: the run has diverged")
    optimise(model, optimizer, loss, step, recipe)
    losses.append(loss.item())


def measure_language_model(model, tokenizer) -> dict:
    probe = heads.repeated_span_batch(tokenizer, **PROBE)
    previous = heads.previous_token_scores(model, probe)
    induction = heads.induction_scores(model, probe, PROBE["span_length"])
    return {
        "probe": dict(PROBE),
        "previous_token": _best(previous),
        "induction": _best(induction),
        "copying_accuracy": round(heads.copying_accuracy(model, probe, PROBE["span_length"]), 4),
    }


LENGTH_PROBE = {"n_sequences": 16, "span_length": 24, "seed": 7, "lengths": [128, 256, 512, 2048]}


def long_copy_batch(tokenizer, length: int, *, n_sequences: int, span_length: int, seed: int) -> torch.Tensor:
    """(n_sequences, length) ids: a random span of words repeated until the row is ``length`` long.

    After the first copy every word is predictable by the induction step over a distance of span_length, as in
    training; what grows with ``length`` is where it happens (positions never trained) and how many keys compete.
    """
    rng = random.Random(seed)
    words = [word for word in tokenizer.words() if word not in data.PUNCTUATION]
    rows = []
    for _ in range(n_sequences):
        span = data.random_span(rng, words, span_length)
        rows.append(tokenizer.encode(" ".join((span * (length // span_length + 1))[:length])))
    return torch.tensor(rows)  # (B, length)


def copying_at_length(model, tokenizer, length: int) -> float | str:
    """Greedy accuracy on every word after the first copy in ``long_copy_batch`` rows (one row at a time, to keep
    memory small), or why the model cannot run at that length."""
    if length > model.max_len:
        if model.positional == "learned":
            return (f"cannot run: {length} positions, but the learned position table has max_len={model.max_len} "
                    "rows")
        model = copy.deepcopy(model)
        model.extend_context(length)  # RoPE: nothing in the weights is tied to a position
    ids = long_copy_batch(tokenizer, length, **{k: LENGTH_PROBE[k] for k in ("n_sequences", "span_length", "seed")})
    span = LENGTH_PROBE["span_length"]
    correct = 0
    with torch.no_grad():
        for row in ids:
            predicted = model(row[None])[0, span:-1].argmax(dim=-1)  # predictions for positions span + 1 .. end
            correct += int((predicted == row[span + 1:]).sum())
    return round(correct / (len(ids) * (length - span - 1)), 4)


def kv_cache_bytes(model, tokenizer, length: int = 128) -> int:
    """Bytes the model's KV cache holds after ``length`` tokens of one sequence (float32 weights)."""
    ids = long_copy_batch(tokenizer, length, n_sequences=1, span_length=LENGTH_PROBE["span_length"], seed=0)
    cache = model.new_cache()
    with torch.no_grad():
        model(ids, kv_cache=cache)
    return cache.nbytes


def measure_lengths(models: dict, tokenizer) -> dict:
    """For each model: its training length, copying accuracy at each probe length, KV-cache bytes for 128 tokens."""
    return {
        "probe": dict(LENGTH_PROBE),
        "note": "greedy accuracy on every word after the first copy of a random 24-word span repeated to the given "
                "total length; training sequences were 128 tokens for both models",
        "models": {
            name: {"training_length": RECIPES[name]["sequence_length"], "max_len": model.max_len,
                   "copying_accuracy": {str(length): copying_at_length(model, tokenizer, length)
                                        for length in LENGTH_PROBE["lengths"]},
                   "kv_cache_bytes_128_tokens": kv_cache_bytes(model, tokenizer)}
            for name, model in models.items()
        },
    }


# ------------------------------------------------------------------------------------------- tiny-encoder


def masked_batch(rng: random.Random, tokenizer: WordTokenizer, recipe: dict):
    """ids (B, N), key mask (B, 1, 1, N) and targets (B, N), with -100 where nothing is predicted."""
    words = [word for word in tokenizer.words() if word not in data.PUNCTUATION]
    mask_token = tokenizer.vocab[tokenizer.mask_id]
    examples = [data.masked_example(rng, words, mask_token=mask_token, **recipe["corruption"])
                for _ in range(recipe["batch_size"])]
    width = max(len(example.inputs) for example in examples)
    ids = torch.full((len(examples), width), tokenizer.pad_id)
    targets = torch.full((len(examples), width), -100)  # cross_entropy's ignore_index
    for row, example in enumerate(examples):
        ids[row, :len(example.inputs)] = torch.tensor(tokenizer.encode(" ".join(example.inputs)))
        for column, word in enumerate(example.targets):
            if word is not None:
                targets[row, column] = tokenizer.token_to_id[word]
    return ids, (ids != tokenizer.pad_id)[:, None, None, :], targets


def train_encoder(recipe: dict, *, log_every: int = 100, monitor=None):
    """Masked-token prediction and nothing else: the loss is the cross-entropy of the corrupted positions."""
    tokenizer = WordTokenizer(data.vocabulary())
    model = new_model(len(tokenizer), recipe)
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe["learning_rate"], weight_decay=0.0, betas=(0.9, 0.98))
    rng = random.Random(recipe["data_seed"])
    losses = []
    for step in range(recipe["steps"]):
        ids, mask, targets = masked_batch(rng, tokenizer, recipe)
        logits = model(ids, mask=mask)  # (B, N, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        losses.append(loss.item())
        optimise(model, optimizer, loss, step, recipe)
        report(step, losses[-1], recipe, log_every, monitor, model, tokenizer)
    model.eval()
    return model, tokenizer, losses


def measure_encoder(model, tokenizer) -> dict:
    examples = heads.held_out_coreference_examples(N_HELD_OUT)
    scores = heads.coreference_scores(model, tokenizer, examples)
    layer, head = heads.best_head(scores["accuracy"])
    reversed_examples = heads.held_out_coreference_examples(N_HELD_OUT, reverse_rate=1.0)
    reversed_scores = heads.coreference_scores(model, tokenizer, reversed_examples)
    return {
        "held_out_sentences": {"n": N_HELD_OUT, "seed": 1},
        "coreference": {
            "best_head": [layer, head],
            "accuracy": round(float(scores["accuracy"][layer, head]), 4),
            "choice_accuracy": round(float(scores["choice_accuracy"][layer, head]), 4),
            "weight": round(float(scores["weight"][layer, head]), 4),
            "accuracy_per_head": _rounded(scores["accuracy"]),
            "accuracy_reversed_order": round(float(reversed_scores["accuracy"][layer, head]), 4),
        },
        "pronoun_prediction_accuracy": round(pronoun_prediction_accuracy(model, tokenizer), 4),
    }


def pronoun_prediction_accuracy(model, tokenizer, n: int = N_HELD_OUT) -> float:
    """On held-out sentences whose nouns differ in number, how often "<mask> <mask>" after "because" is filled
    with the right "it was" / "they were" -- which needs the antecedent, found from the adjective."""
    rng = random.Random(2)
    correct = 0
    for index in range(n):
        options = {"refers_to_first": index % 2 == 0, "plural_rate": 0.5, "reverse_rate": 0.5, "split": "held_out"}
        example = data.coreference_example(rng, **options)
        while example.plural[0] == example.plural[1]:
            example = data.coreference_example(rng, **options)
        ids = torch.tensor([tokenizer.encode(" ".join(example.words))])
        hidden = [example.pronoun, example.pronoun + 1]
        ids[0, hidden] = tokenizer.mask_id
        with torch.no_grad():
            predicted = model(ids)[0, hidden].argmax(dim=-1).tolist()
        correct += int([tokenizer.vocab[i] for i in predicted] == [example.words[i] for i in hidden])
    return correct / n


# -------------------------------------------------------------------------------------- saving and README


def _rounded(scores: torch.Tensor) -> list[list[float]]:
    return [[round(float(value), 4) for value in row] for row in scores]


def _best(scores: torch.Tensor) -> dict:
    layer, head = heads.best_head(scores)
    return {"best_head": [layer, head], "score": round(float(scores[layer, head]), 4), "per_head": _rounded(scores)}


def reference_logits(model, tokenizer, texts) -> dict:
    """Logits on a fixed batch, recorded so a test can check the saved weights reproduce them."""
    rows = [tokenizer.encode(text) for text in texts]
    width = min(len(row) for row in rows)
    ids = torch.tensor([row[:width] for row in rows])
    with torch.no_grad():
        logits = model(ids)
    return {"ids": ids.tolist(), "logits": [[[round(float(v), 5) for v in position] for position in row]
                                             for row in logits], "tolerance": dict(REFERENCE_TOLERANCE)}


def check_thresholds(name: str, measurements: dict, thresholds: dict) -> dict:
    """Compare each measurement with its threshold; raise if any misses."""
    measured = {
        "previous_token": lambda: measurements["previous_token"]["score"],
        "induction": lambda: measurements["induction"]["score"],
        "copying_accuracy": lambda: measurements["copying_accuracy"],
        "coreference_accuracy": lambda: measurements["coreference"]["accuracy"],
        "coreference_accuracy_reversed_order": lambda: measurements["coreference"]["accuracy_reversed_order"],
        "pronoun_prediction_accuracy": lambda: measurements["pronoun_prediction_accuracy"],
    }
    missed = {key: (measured[key](), limit) for key, limit in thresholds.items() if measured[key]() < limit}
    if missed:
        raise RuntimeError(f"{name} missed its thresholds (measured, required): {missed}")
    return dict(thresholds)


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    load = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": datetime.date.today().isoformat(), "load_average_at_end": load}


def save(name: str, model, tokenizer, recipe: dict, losses: list[float], seconds: float, measurements: dict,
         directory: Path = CHECKPOINTS) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    # Not checkpoint_paths: it accepts only the shipped names, and a recipe is trained before it ships.
    weights_path, info_path = directory / f"{name}.pt", directory / f"{name}.json"
    torch.save(model.state_dict(), weights_path)
    info = {
        "name": name,
        "model_class": "attnlib.torch.TransformerLM",
        "config": model.config(),
        "vocabulary": tokenizer.vocab,
        "recipe": {key: value for key, value in recipe.items() if key != "thresholds"},
        "training": {"final_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
                     "final_loss_note": "mean cross-entropy of the predicted tokens (nats per token) over the "
                                        "last 50 steps",
                     "seconds": round(seconds, 1), "machine": machine()},
        "measurements": measurements,
        "thresholds": check_thresholds(name, measurements, recipe["thresholds"]),
        "reference": reference_logits(model, tokenizer, REFERENCE_TEXTS[name]),
    }
    info_path.write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {weights_path} ({weights_path.stat().st_size / 1e6:.2f} MB) and {info_path}")


def write_readme(directory: Path = CHECKPOINTS) -> None:
    """checkpoints/README.md, every number read from the JSON files that training wrote."""
    lines = ["# Checkpoints", "",
             "Written by `python -m attnlib.pretrained.train <name>`; load with `attnlib.pretrained.load(name)`.",
             "Each `<name>.pt` is a `state_dict` saved with `torch.save` (read with `weights_only=True`); each",
             "`<name>.json` holds the config, vocabulary, training recipe (data seed included), final loss, head",
             "measurements, the thresholds the tests hold them to, and logits recorded on a fixed batch.",
             "This file is regenerated from the JSON files after each training run.", ""]
    for name in RECIPES:
        info_path = directory / f"{name}.json"
        if not info_path.exists():
            continue
        info = json.loads(info_path.read_text())
        config, training, measured = info["config"], info["training"], info["measurements"]
        lines += [f"## {name}", "",
                  f"- config: {json.dumps(config)}",
                  f"- data seed {info['recipe']['data_seed']}, init seed {info['recipe']['init_seed']}, "
                  f"{info['recipe']['steps']} steps, final loss {training['final_loss']} "
                  f"({training['final_loss_note']})",
                  f"- trained in {training['seconds']} s on {training['machine']['cpu']} with "
                  f"{training['machine']['threads']} threads, torch {training['machine']['torch']}"]
        if "lengths" in measured:
            for other, result in measured["lengths"]["models"].items():
                lines += [f"- {other}: copying accuracy by sequence length {json.dumps(result['copying_accuracy'])}"
                          f"; KV cache for 128 tokens {result['kv_cache_bytes_128_tokens']} bytes"]
        if "induction" in measured:
            lines += [f"- previous-token head {measured['previous_token']['best_head']} "
                      f"score {measured['previous_token']['score']}",
                      f"- induction head {measured['induction']['best_head']} score {measured['induction']['score']}"
                      f", copying accuracy on the second copy of a random span {measured['copying_accuracy']}"]
        if "coreference" in measured:
            coreference = measured["coreference"]
            lines += [f"- objective: {info['recipe']['objective']}",
                      f"- coreference head {coreference['best_head']}: the argmax of its attention from \"it\" is "
                      f"the antecedent with accuracy {coreference['accuracy']} on "
                      f"{measured['held_out_sentences']['n']} held-out sentences (mean weight {coreference['weight']})"
                      f"; {coreference['accuracy_reversed_order']} with the nouns in the other order "
                      f"(\"the floor caught the apple because it was ripe\")",
                      f"- fills `<mask> <mask>` with the right \"it was\" / \"they were\" when the nouns differ in "
                      f"number: accuracy {measured['pronoun_prediction_accuracy']}"]
        lines += [f"- thresholds: {json.dumps(info['thresholds'])}", ""]
    (directory / "README.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    parser.add_argument("--output", type=Path, default=CHECKPOINTS, help="folder for the checkpoint files")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (recorded in the JSON; default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    recipe = RECIPES[args.name]
    print(f"training {args.name}: {json.dumps(recipe)}")
    start = time.perf_counter()
    train = train_language_model if recipe["model"]["causal"] else train_encoder
    model, tokenizer, losses = train(recipe)
    seconds = time.perf_counter() - start
    measure = measure_language_model if recipe["model"]["causal"] else measure_encoder
    measurements = measure(model, tokenizer)
    if args.name == "tiny-lm-rope":  # compared with the shipped tiny-lm, which has a learned position table
        from . import load

        measurements["lengths"] = measure_lengths({"tiny-lm": load("tiny-lm")[0], args.name: model}, tokenizer)
    print(f"trained in {seconds:.0f} s; measurements: {json.dumps(measurements)[:600]}")
    save(args.name, model, tokenizer, recipe, losses, seconds, measurements, args.output)
    write_readme(args.output)


if __name__ == "__main__":
    main()
