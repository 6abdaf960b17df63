"""Masked-token prediction with a masked-lm model (the `fill-mask` command)."""

from __future__ import annotations

import os

import jax
import numpy as np

from roberta_jax.errors import InputError

Prediction = tuple[str, float]


def fill_mask(model, params, tokenizer, texts: list[str], top_k: int = 5) -> list[list[list[Prediction]]]:
    """For each text, for each <mask> in it (left to right): the top_k (token, probability)
    pairs, most probable first. `tokenizer` is an HF (fast) tokenizer with a mask token."""
    if top_k < 1:
        raise InputError(f"top_k must be >= 1; got {top_k}")
    texts = [texts] if isinstance(texts, str) else list(texts)
    mask = tokenizer.mask_token
    if mask is None:
        raise InputError("the tokenizer has no mask token")
    limit = model.config.max_sequence_length
    encoded = [tokenizer(t)["input_ids"] for t in texts]
    for text, ids in zip(texts, encoded):
        if tokenizer.mask_token_id not in ids:
            raise InputError(f"text has no {mask}: {text!r}")
        if len(ids) > limit:
            raise InputError(f"text is {len(ids)} tokens, longer than the model's limit {limit}: "
                             f"{text[:60]!r}...")
    pad = model.config.pad_token_id
    width = max(len(ids) for ids in encoded)
    ids_BxL = np.full((len(texts), width), pad, np.int32)
    for i, ids in enumerate(encoded):
        ids_BxL[i, : len(ids)] = ids
    logits_BxLxV = model.apply({"params": params}, ids_BxL, attention_mask=ids_BxL != pad)
    probs_BxLxV = np.asarray(jax.nn.softmax(logits_BxLxV.astype(np.float32), axis=-1))
    k = min(top_k, probs_BxLxV.shape[-1])
    out = []
    for i, ids in enumerate(encoded):
        per_mask = []
        for pos in np.flatnonzero(np.asarray(ids) == tokenizer.mask_token_id):
            p = probs_BxLxV[i, pos]
            best = np.argsort(-p, kind="stable")[:k]
            per_mask.append([(tokenizer.decode([int(t)]), float(p[t])) for t in best])
        out.append(per_mask)
    return out


def load_tokenizer_for(model_path: str, tokenizer: str | None = None):
    """The tokenizer in `tokenizer` (a directory), else the one beside the model."""
    path = tokenizer or (model_path if os.path.isdir(model_path) else os.path.dirname(model_path))
    try:
        from roberta_jax.data.tokenizer import load_tokenizer
    except ImportError:  # the data package is optional for inference
        load_tokenizer = None
    if load_tokenizer is not None:
        try:
            return load_tokenizer(path)
        except Exception as e:  # noqa: BLE001 - fall back to AutoTokenizer below, then explain
            first_error = e
    else:
        first_error = None
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any failure means "no usable tokenizer here"
        raise InputError(f"no tokenizer in {path!r} ({first_error or e}); pass --tokenizer DIR") from None


def fill_mask_cli(model_path: str, texts: list[str], tokenizer: str | None = None,
                  top_k: int = 5) -> list[list[list[Prediction]]]:
    """Load a masked-lm model and its tokenizer, and print the predictions for each text."""
    from roberta_jax.convert import from_pretrained

    tok = load_tokenizer_for(model_path, tokenizer)
    model, params = from_pretrained(model_path, task="masked-lm")
    results = fill_mask(model, params, tok, texts, top_k=top_k)
    for text, per_mask in zip(texts, results):
        print(text)
        for m, preds in enumerate(per_mask):
            label = f"  <mask> {m + 1}:" if len(per_mask) > 1 else "  <mask>:"
            print(label + "  " + "   ".join(f"{tok_str!r} {p:.3f}" for tok_str, p in preds))
    return results
