"""Reading a prepared directory: metadata, memory-mapped blocks, and train-time checks.

Layout: `metadata.json`, `train.npy` and `validation.npy` ((blocks, seq_len) uint16 or int32),
`validation_documents.npy` (indices, in source order, of the documents held out).
"""

from __future__ import annotations

import json
import os

import numpy as np

from roberta_jax.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "validation")
# RoBERTa's position ids start at pad_id + 1 = 2, so max_position_embeddings 514 fits 512 tokens.
POSITION_OFFSET = 2


def read_metadata(prepared_dir: str) -> dict:
    """The `metadata.json` of a prepared directory."""
    path = os.path.join(prepared_dir, "metadata.json")
    if not os.path.exists(path):
        raise DataError(f"{prepared_dir!r} is not a prepared data directory (no metadata.json); "
                        f"run `roberta-jax prepare` first")
    with open(path) as f:
        meta = json.load(f)
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{prepared_dir!r} has format_version {meta.get('format_version')}, "
                        f"this code reads {FORMAT_VERSION}")
    return meta


def load_prepared(prepared_dir: str, split: str = "train") -> np.ndarray:
    """Blocks of a split as a read-only memory-mapped (blocks, seq_len) array, stored order."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    meta = read_metadata(prepared_dir)
    blocks = np.load(os.path.join(prepared_dir, f"{split}.npy"), mmap_mode="r")
    if blocks.ndim != 2 or blocks.shape[1] != meta["seq_len"]:
        raise DataError(f"{prepared_dir}/{split}.npy has shape {blocks.shape}, "
                        f"expected (N, {meta['seq_len']})")
    return blocks


def check_tokenizer(prepared_dir: str, tokenizer_dir: str) -> None:
    """Raise DataError unless the tokenizer is the one the data was prepared with."""
    from roberta_jax.data.tokenizer import tokenizer_hash

    meta = read_metadata(prepared_dir)
    got = tokenizer_hash(tokenizer_dir)
    if got != meta["tokenizer_hash"]:
        raise DataError(f"tokenizer {tokenizer_dir!r} (hash {got[:12]}) is not the one "
                        f"{prepared_dir!r} was prepared with ({meta.get('tokenizer_dir')!r}, "
                        f"hash {meta['tokenizer_hash'][:12]})")


def check_max_positions(prepared_dir_or_seq_len: str | int, max_positions: int, *,
                        vocab_size: int | None = None) -> None:
    """Raise DataError if blocks are longer than the model's positions (or ids exceed its vocab).

    max_positions is the model's `max_position_embeddings`; RoBERTa reserves its first two
    positions (pad_id + 1), so seq_len must be <= max_positions - 2.
    """
    if isinstance(prepared_dir_or_seq_len, int):
        seq_len, meta = prepared_dir_or_seq_len, None
    else:
        meta = read_metadata(prepared_dir_or_seq_len)
        seq_len = meta["seq_len"]
    if seq_len > max_positions - POSITION_OFFSET:
        raise DataError(f"seq_len {seq_len} exceeds the model's max_position_embeddings "
                        f"{max_positions} - {POSITION_OFFSET} = {max_positions - POSITION_OFFSET}")
    if meta is not None and vocab_size is not None and meta["vocab_size"] > vocab_size:
        raise DataError(f"prepared data has vocab_size {meta['vocab_size']} but the model only "
                        f"{vocab_size} embeddings")
