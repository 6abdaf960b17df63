"""SOURCES -> tokenized documents -> packed fixed-length blocks on disk.

FULL-SENTENCES (RoBERTa's default): documents' tokens in order, `</s>` after each document,
cut into blocks that each start with `<s>` followed by seq_len - 1 stream tokens, crossing
document boundaries; only the last block is padded (or dropped with drop_last).
DOC-SENTENCES: the same per document, never crossing one; each document's last block padded.

Tokenized documents are held in memory (2 bytes/token for vocabularies up to 65,536) before
the by-document validation split and packing; the output is written to a temporary sibling
directory and renamed into place, so an interrupted run never leaves a complete-looking one.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import tqdm

from roberta_jax.data.prepared import FORMAT_VERSION
from roberta_jax.data.sources import SourceStats, iter_documents
from roberta_jax.errors import DataError

MODES = ("full-sentences", "doc-sentences")
_CHUNK_DOCS = 64  # documents per task sent to a worker: amortises pickling, keeps order cheap

_worker_tokenizer = None  # the `tokenizers.Tokenizer` of this (worker) process


def _init_worker(tokenizer_json: str, threads: bool) -> None:
    global _worker_tokenizer
    from tokenizers import Tokenizer

    if not threads:  # processes already use every core; Rayon threads would oversubscribe
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = Tokenizer.from_str(tokenizer_json)


def _encode_chunk(args: tuple[list[str], str]) -> list[np.ndarray]:
    texts, dtype = args
    encodings = _worker_tokenizer.encode_batch(texts, add_special_tokens=False)
    return [np.asarray(e.ids, dtype=dtype) for e in encodings]


def _chunks(docs: Iterator[str], dtype: str) -> Iterator[tuple[list[str], str]]:
    chunk: list[str] = []
    for doc in docs:
        chunk.append(doc)
        if len(chunk) == _CHUNK_DOCS:
            yield chunk, dtype
            chunk = []
    if chunk:
        yield chunk, dtype


def tokenize_documents(docs: Iterator[str], tokenizer_json: str, dtype: str,
                       num_workers: int) -> list[np.ndarray]:
    """Token ids of each document, in order, over `num_workers` processes with a progress bar."""
    out: list[np.ndarray] = []
    bar = tqdm.tqdm(desc="tokenize", unit=" docs", mininterval=1.0)
    if num_workers <= 1:
        _init_worker(tokenizer_json, threads=True)
        results: Iterable[list[np.ndarray]] = map(_encode_chunk, _chunks(docs, dtype))
        for ids in results:
            out.extend(ids)
            bar.update(len(ids))
    else:
        # spawn, not fork: the parent may have started JAX's threads, which fork can deadlock.
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(num_workers, _init_worker, (tokenizer_json, False)) as pool:
            for ids in pool.imap(_encode_chunk, _chunks(docs, dtype), chunksize=1):
                out.extend(ids)
                bar.update(len(ids))
    bar.close()
    return out


def pack(docs: Sequence[np.ndarray], *, seq_len: int, bos: int, eos: int, pad: int,
         mode: str = "full-sentences", drop_last: bool = False) -> tuple[np.ndarray, int]:
    """Pack documents into (blocks, seq_len) arrays; returns (blocks, tokens dropped)."""
    body = seq_len - 1  # every block gives its first slot to <s>
    dtype = docs[0].dtype if docs else np.int32
    eos_arr = np.asarray([eos], dtype)

    def to_rows(stream: np.ndarray, keep_partial: bool) -> tuple[np.ndarray, int]:
        n_full, rem = divmod(len(stream), body)
        if rem and keep_partial:
            stream = np.concatenate([stream, np.full(body - rem, pad, dtype)])
            n_full, rem = n_full + 1, 0
        return stream[: n_full * body].reshape(n_full, body), rem

    if mode == "full-sentences":
        pieces = [x for d in docs for x in (d, eos_arr)]
        stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype)
        rows, dropped = to_rows(stream, keep_partial=not drop_last)
    elif mode == "doc-sentences":
        rows = np.concatenate([to_rows(np.concatenate([d, eos_arr]), True)[0] for d in docs]) \
            if docs else np.zeros((0, body), dtype)
        dropped = 0
    else:
        raise DataError(f"unknown mode {mode!r}; expected one of {MODES}")
    blocks = np.concatenate([np.full((len(rows), 1), bos, dtype), rows], axis=1)
    return blocks, dropped


def _split_stats(blocks: np.ndarray, docs: Sequence[np.ndarray], pad: int) -> dict:
    return {"blocks": int(len(blocks)), "documents": len(docs),
            "tokens": int(sum(len(d) for d in docs)),
            "padding_tokens": int((blocks == pad).sum())}


def _choose_validation(n_docs: int, fraction: float, seed: int) -> np.ndarray:
    if fraction <= 0 or n_docs < 2:
        return np.zeros(0, np.int64)
    # At least one held-out document, at least one left for training.
    n_val = min(max(1, round(fraction * n_docs)), n_docs - 1)
    return np.sort(np.random.default_rng(seed).choice(n_docs, n_val, replace=False))


def prepare(sources: Sequence[str], out_dir: str, *, tokenizer, seq_len: int,
            mode: str = "full-sentences", doc_split: str = "file", text_field: str = "text",
            validation_fraction: float = 0.01, drop_last: bool = False,
            num_workers: int | None = None, seed: int = 0) -> dict:
    """Tokenize and pack SOURCES into `out_dir`; returns (and writes) its metadata dict.

    tokenizer: a tokenizer directory (see `load_tokenizer`).
    """
    from roberta_jax.data.tokenizer import load_tokenizer, special_ids, tokenizer_hash

    if mode not in MODES:
        raise DataError(f"unknown mode {mode!r}; expected one of {MODES}")
    if seq_len < 2:
        raise DataError(f"seq_len {seq_len} is too short: a block holds <s> and >= 1 token")
    if not 0 <= validation_fraction < 1:
        raise DataError(f"validation_fraction {validation_fraction} is not in [0, 1)")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise DataError(f"output {out_dir!r} already exists and is not empty")
    tok = load_tokenizer(tokenizer)
    vocab_size = len(tok)
    dtype = "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "int32"
    bos, eos, pad = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id

    stats = SourceStats()
    docs_iter = iter_documents(sources, stats, doc_split=doc_split, text_field=text_field)
    workers = num_workers if num_workers is not None else (os.cpu_count() or 1)
    docs = tokenize_documents(docs_iter, tok.backend_tokenizer.to_str(), dtype, workers)
    if not docs:
        raise DataError(f"sources {list(sources)} contain no text "
                        f"({stats.empty_documents} empty documents)")

    val_ids = _choose_validation(len(docs), validation_fraction, seed)
    is_val = np.zeros(len(docs), bool)
    is_val[val_ids] = True
    splits = {"train": [d for d, v in zip(docs, is_val) if not v],
              "validation": [d for d, v in zip(docs, is_val) if v]}
    meta: dict = {
        "format_version": FORMAT_VERSION, "created": datetime.datetime.now().isoformat(),
        "sources": list(sources), "tokenizer_dir": os.path.abspath(tokenizer),
        "tokenizer_hash": tokenizer_hash(tok), "vocab_size": vocab_size, "seq_len": seq_len,
        "mode": mode, "doc_split": doc_split, "dtype": dtype, "drop_last": drop_last,
        "bos_id": bos, "eos_id": eos, "pad_id": pad, "mask_id": tok.mask_token_id,
        "special_ids": list(special_ids(tok)), "seed": seed,
        "validation_fraction": validation_fraction,
        "documents": len(docs), "tokens": int(sum(len(d) for d in docs)),
        "empty_documents": stats.empty_documents, "undecodable_bytes": stats.undecodable_bytes,
        "long_documents": int(sum(len(d) + 1 > seq_len - 1 for d in docs)),
        "max_document_tokens": int(max(len(d) for d in docs)),
        "dropped_tokens": 0, "splits": {},
    }
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        for name, split_docs in splits.items():
            blocks, dropped = pack(split_docs, seq_len=seq_len, bos=bos, eos=eos, pad=pad,
                                   mode=mode, drop_last=drop_last)
            meta["dropped_tokens"] += dropped
            meta["splits"][name] = _split_stats(blocks, split_docs, pad)
            np.save(os.path.join(tmp, f"{name}.npy"), blocks.astype(dtype, copy=False))
        np.save(os.path.join(tmp, "validation_documents.npy"), val_ids)
        with open(os.path.join(tmp, "metadata.json"), "w") as f:
            json.dump(meta, f, indent=2)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the result should not be
        if os.path.isdir(out_dir):
            os.rmdir(out_dir)  # empty (checked above); rename cannot replace a directory
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tr, va = meta["splits"]["train"], meta["splits"]["validation"]
    print(f"prepared {meta['documents']} documents, {meta['tokens']} tokens -> "
          f"train {tr['blocks']} blocks ({tr['documents']} docs), validation {va['blocks']} "
          f"blocks ({va['documents']} docs) of {seq_len} {dtype} ids in {out_dir}; "
          f"{stats.undecodable_bytes} undecodable bytes replaced, "
          f"{stats.empty_documents} empty documents skipped, {meta['dropped_tokens']} "
          f"tokens dropped")
    return meta
